"""The watershed marker threshold follows the model unless the user gives one.

HoverFast's own weights keep upstream's 0.4 (the same nuclei as upstream); a checkpoint that records
the threshold chosen for it on validation images (``scripts/embed_model.py --marker-threshold``) gets
that one; ``RunOptions.marker_threshold`` / ``--marker-threshold`` always win.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_hoverfast.core.model import UPSTREAM_MARKER_THRESHOLD, CheckpointError, load_checkpoint
from napari_hoverfast.core.pipeline import RunOptions, run_to_end, segment_slide
from napari_hoverfast.core.slide import Slide
from napari_hoverfast.core.tiling import Box


def _with_marker(shared_dir: Path, tmp_path: Path, value: object) -> Path:
    ckpt = torch.load(shared_dir / "reference" / "ckpt_A.pth", map_location="cpu", weights_only=True)
    ckpt["marker_threshold"] = value
    path = tmp_path / "marked.pth"
    torch.save(ckpt, path)
    return path


def _used(shared_dir: Path, model, options: RunOptions) -> float:
    with Slide(shared_dir / "data" / "tcga_tile.png", mpp=0.25) as slide:
        result = run_to_end(segment_slide(slide, model, [Box(0, 0, 128, 128)], options))
    return result.parameters["marker_threshold"]


def test_upstream_weights_keep_upstreams_threshold(shared_dir: Path) -> None:
    model = load_checkpoint(shared_dir / "reference" / "ckpt_A.pth", device="cpu")
    assert model.marker_threshold == UPSTREAM_MARKER_THRESHOLD == 0.4
    assert _used(shared_dir, model, RunOptions(workers=0)) == 0.4


def test_a_recorded_threshold_is_used_unless_the_user_gives_one(shared_dir: Path, tmp_path: Path) -> None:
    model = load_checkpoint(_with_marker(shared_dir, tmp_path, 0.55), device="cpu")
    assert model.marker_threshold == 0.55
    assert _used(shared_dir, model, RunOptions(workers=0)) == 0.55
    assert _used(shared_dir, model, RunOptions(workers=0, marker_threshold=0.3)) == 0.3


@pytest.mark.parametrize("value", [1.5, 0.0, "high", float("nan")])
def test_a_bad_recorded_threshold_is_refused(shared_dir: Path, tmp_path: Path, value: object) -> None:
    with pytest.raises(CheckpointError, match="marker_threshold entry must be a number between 0 and 1"):
        load_checkpoint(_with_marker(shared_dir, tmp_path, value), device="cpu")


def test_the_embedded_model_records_its_threshold() -> None:
    from napari_hoverfast.core.default_model import load_default_model

    # chosen on the validation images only (docs/MODEL_CARD.md, benchmarks/tune_postprocess.py)
    assert load_default_model("cpu").marker_threshold == 0.5
