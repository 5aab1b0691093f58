"""The README's picture: rendered by ``scripts/screenshot.py`` in a real viewer, and not blank."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from skimage import io

from napari_hoverfast.core.default_model import has_default_model

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "images" / "widget.png"


def _load_script():
    spec = importlib.util.spec_from_file_location("screenshot", ROOT / "scripts" / "screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_not_blank(path: Path) -> np.ndarray:
    picture = io.imread(path)[..., :3]
    assert picture.shape[0] >= 400 and picture.shape[1] >= 600, picture.shape
    assert picture.std() > 20, "flat picture"
    colours = np.unique(picture.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 2000, f"only {len(colours)} colours: nothing rendered"
    return picture


def test_committed_screenshot_is_not_blank():
    assert COMMITTED.is_file(), "docs/images/widget.png is missing: run scripts/screenshot.py under Xvfb"
    assert "docs/images/widget.png" in (ROOT / "README.md").read_text()
    assert_not_blank(COMMITTED)


@pytest.mark.gui
def test_screenshot_renders_nuclei_over_the_tile(make_napari_viewer, shared_dir, tmp_path):
    viewer = make_napari_viewer(show=True)
    model = None if has_default_model() else shared_dir / "reference" / "ckpt_A.pth"
    count = _load_script().render(viewer, tmp_path / "widget.png", model)
    assert count > 0
    picture = assert_not_blank(tmp_path / "widget.png")
    # the window, not the canvas alone: the docked widget sits beside the (square) tile view
    assert picture.shape[1] > picture.shape[0]
