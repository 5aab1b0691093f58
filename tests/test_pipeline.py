"""The run generator on real files: progress, batches, cancel, errors mid-run, overlapping regions."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile

from napari_hoverfast.core.default_model import load_model
from napari_hoverfast.core.model import load_checkpoint
from napari_hoverfast.core.pipeline import (
    NucleusBatch,
    Progress,
    RunError,
    RunOptions,
    run_to_end,
    segment_slide,
    working_geometry,
)
from napari_hoverfast.core.slide import Slide
from napari_hoverfast.core.tiling import Box, TilingOptions

SMALL = RunOptions(tiling=TilingOptions(tile=224), workers=0)


@pytest.fixture(scope="module")
def model(shared_dir: Path):
    return load_checkpoint(shared_dir / "reference" / "ckpt_A.pth", device="cpu")


@pytest.fixture()
def tile_slide(shared_dir: Path):
    with Slide(shared_dir / "data" / "tcga_tile.png", mpp=0.25) as slide:
        yield slide


def _drain(run):
    events = []
    while True:
        try:
            events.append(next(run))
        except StopIteration as stop:
            return events, stop.value


def test_progress_and_batches_add_up(tile_slide, model) -> None:
    events, result = _drain(segment_slide(tile_slide, model, [Box(0, 0, 600, 500)], SMALL))
    progress = [e for e in events if isinstance(e, Progress)]
    batches = [e for e in events if isinstance(e, NucleusBatch)]
    assert result.complete
    assert progress[0].tiles_done == 0 and progress[-1].tiles_done == progress[-1].tiles_total == len(result.tiles)
    assert [p.tiles_done for p in progress] == sorted(p.tiles_done for p in progress)
    assert sum(len(b.nuclei) for b in batches) == len(result.nuclei)
    assert len(set(result.nuclei.ids.tolist())) == len(result.nuclei)
    assert sorted(result.tiles_done) == list(range(len(result.tiles)))
    assert progress[-1].eta == 0
    # every nucleus lies inside the slide and has its centroid in the region
    assert (result.nuclei.centroid_x < 600 + 1).all() and (result.nuclei.centroid_y < 500 + 1).all()
    assert set(result.timings) == {"read", "forward", "postprocess", "cache_read"}
    assert result.parameters["model_sha256"] == model.sha256


def test_cancel_stops_within_a_batch_and_keeps_nuclei(tile_slide, model) -> None:
    cancel = threading.Event()
    run = segment_slide(tile_slide, model, [Box(0, 0, 1024, 1024)], SMALL, cancel=cancel)
    seen = 0
    events = []
    while True:
        try:
            event = next(run)
        except StopIteration as stop:
            result = stop.value
            break
        events.append(event)
        if isinstance(event, Progress) and event.tiles_done >= 2:
            cancel.set()
        if isinstance(event, NucleusBatch):
            seen += len(event.nuclei)
    assert result.cancelled and not result.complete
    assert 2 <= len(result.tiles_done) <= 4 < len(result.tiles)
    assert len(result.nuclei) == seen


def test_closing_the_generator_does_not_hang(tile_slide, model) -> None:
    run = segment_slide(tile_slide, model, [Box(0, 0, 1024, 1024)], RunOptions(tiling=TilingOptions(tile=256, overlap=64), workers=1))
    next(run)
    next(run)
    run.close()


def test_overlapping_regions_do_not_duplicate(tile_slide) -> None:
    """A trained model: random weights draw blobs wider than any tile's context."""
    trained = load_model(None, device="cpu")
    one = run_to_end(segment_slide(tile_slide, trained, [Box(0, 0, 700, 700)], SMALL))
    two = run_to_end(segment_slide(tile_slide, trained, [Box(0, 0, 500, 700), Box(300, 0, 400, 700)], SMALL))
    centres = np.stack([two.nuclei.centroid_x, two.nuclei.centroid_y], axis=1)
    assert len(np.unique(np.round(centres, 3), axis=0)) == len(centres)
    tree = shapely.STRtree(list(two.nuclei.polygons))
    pairs = tree.query(list(two.nuclei.polygons), predicate="intersects")
    pairs = pairs[:, pairs[0] < pairs[1]]
    for i, j in pairs.T:
        a, b = two.nuclei.polygons[i], two.nuclei.polygons[j]
        assert a.intersection(b).area / a.union(b).area <= 0.5
    assert abs(len(two.nuclei) - len(one.nuclei)) <= max(2, 0.1 * len(one.nuclei))


def test_error_mid_run_keeps_partial_results(tmp_path: Path, shared_dir: Path, model) -> None:
    """A slide whose later tiles are corrupt: the run ends with an error and keeps earlier nuclei."""
    from skimage import io

    rgb = io.imread(shared_dir / "data" / "tcga_tile.png")[..., :3]
    path = tmp_path / "damaged.tif"
    tifffile.imwrite(path, rgb, tile=(256, 256), compression="jpeg", photometric="rgb",
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    data = bytearray(path.read_bytes())
    for offset, count in list(zip(offsets, counts, strict=True))[8:]:  # the lower half of the image
        data[offset : offset + count] = b"\x00" * count
    path.write_bytes(bytes(data))
    with Slide(path) as slide:
        events, result = _drain(segment_slide(slide, model, [Box(0, 0, 1024, 1024)], SMALL))
    assert result.error is not None and not result.complete
    assert 0 < len(result.tiles_done) < len(result.tiles)
    assert len(result.nuclei) == sum(len(e.nuclei) for e in events if isinstance(e, NucleusBatch))


def test_region_outside_the_slide_is_refused(tile_slide, model) -> None:
    with pytest.raises(RunError, match="outside"):
        next(segment_slide(tile_slide, model, [Box(5000, 5000, 100, 100)], SMALL))


def test_whole_slide_without_mpp_is_refused(shared_dir: Path, model) -> None:
    with Slide(shared_dir / "data" / "tcga_tile.png") as slide, pytest.raises(RunError, match="no resolution"):
        next(segment_slide(slide, model, None, SMALL))


def test_working_resolution_is_a_power_of_two() -> None:
    assert working_geometry(0.25).scale == 1
    assert working_geometry(0.499).scale == 2
    assert working_geometry(0.1213).scale == 0.5


def test_twenty_x_slide_segments_in_level0_coordinates(shared_dir: Path, model) -> None:
    """The real 20× Aperio scan: upsampled ×2 to work, polygons come back in level-0 pixels."""
    with Slide(shared_dir / "data" / "CMU-1-Small-Region.svs") as slide:
        assert slide.mpp == pytest.approx(0.499)
        result = run_to_end(segment_slide(slide, model, [Box(1000, 1200, 200, 160)], SMALL))
    assert result.scale == 2 and result.complete
    if len(result.nuclei):
        assert result.nuclei.centroid_x.min() >= 999 and result.nuclei.centroid_x.max() < 1201
        # ownership is by pixel centroid; a simplified outline's centroid may differ by < 1 px
        assert result.nuclei.centroid_y.min() >= 1199 and result.nuclei.centroid_y.max() < 1361
