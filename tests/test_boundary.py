"""The core runs headless: importing it pulls in no Qt, napari or magicgui."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "src" / "napari_hoverfast" / "core"
#: Every module of the core, found on disk (a new one is checked without editing this test).
CORE_MODULES = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")


def test_core_imports_no_gui_toolkit() -> None:
    code = (
        "import sys\n"
        + "".join(f"import napari_hoverfast.core.{m}\n" for m in CORE_MODULES)
        + "import napari_hoverfast.cli, napari_hoverfast.cli_segment\n"
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'qtpy', 'napari', 'magicgui', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'vispy'})\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "", f"core imported GUI modules: {out.stdout}"
