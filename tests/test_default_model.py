"""The embedded default model: shipped, small, hash-checked, the default everywhere, and plausible on
a TCGA tile it never saw (not glioblastoma, not one of MoNuSeg's training images)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_hoverfast.core import default_model
from napari_hoverfast.core.default_model import default_model_path, has_default_model, load_model
from napari_hoverfast.core.model import CheckpointError
from napari_hoverfast.core.nuclei import AREA_UM2
from napari_hoverfast.core.pipeline import RunOptions, run_to_end, segment_slide
from napari_hoverfast.core.slide import Slide
from napari_hoverfast.core.tiling import Box

pytestmark = pytest.mark.skipif(not has_default_model(), reason="no embedded default model in this checkout")


def test_shipped_small_in_upstream_format() -> None:
    path = default_model_path()
    assert path.stat().st_size <= 5 * 1024 * 1024
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert {"model_dict", "depth", "wf", "n_classes", "in_channels"} <= set(ckpt)
    model = load_model(None, device="cpu")
    assert not model.net.training


def test_a_damaged_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / default_model.FILENAME
    shutil.copyfile(default_model_path(), copy)
    with copy.open("r+b") as handle:
        handle.seek(-100, 2)
        handle.write(b"\x00" * 8)
    monkeypatch.setattr(default_model, "default_model_path", lambda: copy)
    with pytest.raises(CheckpointError, match="damaged"):
        load_model(None, device="cpu")


def test_finds_hundreds_of_nuclei_on_the_tcga_tile(shared_dir: Path) -> None:
    model = load_model(None, device="cpu")
    with Slide(shared_dir / "data" / "tcga_tile.png", mpp=0.25) as slide:
        result = run_to_end(segment_slide(slide, model, [Box(0, 0, *slide.dimensions)], RunOptions(workers=0)))
    count = len(result.nuclei)
    # a dense field of ~256 µm × 256 µm: hundreds of nuclei, not tens, not thousands
    assert 200 <= count <= 1500, count
    areas = result.nuclei.measurements()[AREA_UM2]
    assert 15 < float(areas.mean()) < 80


def test_demo_uses_the_default_model_and_prints_the_count(tmp_path: Path) -> None:
    out = tmp_path / "demo.geojson"
    proc = subprocess.run([sys.executable, "-m", "napari_hoverfast.cli", "demo", "-o", str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert "nuclei" in summary and out.is_file()
