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


def assert_not_blank(path: Path, min_colours: int = 2000) -> np.ndarray:
    picture = io.imread(path)[..., :3]
    assert picture.shape[0] >= 400 and picture.shape[1] >= 600, picture.shape
    assert picture.std() > 20, "flat picture"
    colours = np.unique(picture.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > min_colours, f"only {len(colours)} colours: nothing rendered"
    return picture


def test_committed_screenshot_is_not_blank():
    assert COMMITTED.is_file(), "docs/images/widget.png is missing: run scripts/screenshot.py under Xvfb"
    assert "docs/images/widget.png" in (ROOT / "README.md").read_text()
    assert_not_blank(COMMITTED)


def test_the_user_guide_shows_every_committed_picture():
    """docs/USER_GUIDE.md shows each picture ``scripts/screenshot.py --guide`` renders, all committed."""
    guide = (ROOT / "docs" / "USER_GUIDE.md").read_text()
    for name in _load_script().GUIDE:
        path = ROOT / "docs" / "images" / f"guide_{name}.png"
        assert path.is_file(), f"{path.name} is missing: run scripts/screenshot.py --guide under Xvfb"
        assert f"images/guide_{name}.png" in guide
        picture = io.imread(path)[..., :3]
        assert picture.std() > 10 and len(np.unique(picture.reshape(-1, 3)[::7], axis=0)) > 50, path.name
    assert "docs/USER_GUIDE.md" in (ROOT / "README.md").read_text()


@pytest.mark.gui
def test_screenshot_renders_nuclei_over_the_tile(make_napari_viewer, shared_dir, tmp_path):
    viewer = make_napari_viewer(show=True)
    model = None if has_default_model() else shared_dir / "reference" / "ckpt_A.pth"
    count = _load_script().render(viewer, tmp_path / "widget.png", model)
    assert count > 0
    picture = assert_not_blank(tmp_path / "widget.png")
    # the window, not the canvas alone: the docked widget sits beside the (square) tile view
    assert picture.shape[1] > picture.shape[0]


def _near(picture: np.ndarray, colour: np.ndarray, tolerance: float = 40.0) -> int:
    """How many pixels of ``picture`` are within ``tolerance`` (RGB, 0–255) of ``colour``."""
    return int((np.abs(picture[..., :3].astype(float) - colour[:3]).sum(axis=-1) < tolerance).sum())


@pytest.mark.gui
def test_guide_pictures_show_the_region_the_outlines_the_legend_and_the_overview(make_napari_viewer, shared_dir, tmp_path):
    """The user guide's pictures, rendered as the committed ones are (smaller here: the sample slide,
    256-px tiles, the outline limit lowered so the overview shows), and what each must show."""
    from napari_hoverfast._colours import ramp
    from napari_hoverfast._display import OVERVIEW
    from napari_hoverfast._sample_data import sample_slide
    from napari_hoverfast._scope import REGION_EDGE

    viewer = make_napari_viewer(show=True)
    model = None if has_default_model() else shared_dir / "reference" / "ckpt_A.pth"
    slide = Path(sample_slide()[0][1]["metadata"]["path"])
    pictures = _load_script().guide(viewer, tmp_path, slide, model, 256, region_um=120, whole=False, max_outlines=20)
    assert set(pictures) >= {"pixel_size", "draw_region", "run_zoomed", "legend", "overview"}
    for name in ("draw_region", "run_zoomed", "overview"):
        assert_not_blank(pictures[name], min_colours=500)  # a test viewer's window is small
    region = io.imread(pictures["draw_region"])
    assert _near(region, np.asarray(REGION_EDGE) * 255) > 500, "the drawn region's edge is not visible"

    [nuclei] = [ly for ly in viewer.layers if ly.metadata.get("hoverfast")]
    assert nuclei.metadata["nuclei_total"] > 20
    zoomed = io.imread(pictures["run_zoomed"])
    palette = ramp(16)[:, :3] * 255
    assert sum(_near(zoomed, c, 30) for c in palette) > 1000, "no outline colours in the zoomed-in picture"

    legend = io.imread(pictures["legend"])
    assert legend.shape[0] > 400
    assert sum(_near(legend, c, 20) > 20 for c in palette) >= 12, "the legend's colour bar is missing"

    overview = io.imread(pictures["overview"])
    assert nuclei.metadata["display"] == OVERVIEW
    [sheet] = [ly for ly in viewer.layers if ly.metadata.get("hoverfast_overview")]
    assert sheet.visible and np.count_nonzero(sheet.data) > 20
    assert overview.shape[1] > overview.shape[0]
    hint = io.imread(pictures["pixel_size"])
    assert hint.shape[0] > 60 and hint.std() > 10
