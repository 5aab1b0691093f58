"""Sample data: the bundled tile, and the small slide generated once into the cache folder."""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_hoverfast import _sample_data
from napari_hoverfast._sample_data import (
    SLIDE_FILE,
    TILE_PATH,
    sample_slide,
    sample_slide_path,
    sample_tile,
)
from napari_hoverfast.core.slide import Slide
from napari_hoverfast.core.tissue import tiles_on_tissue, tissue_mask


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_HOVERFAST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_sample_tile():
    [(data, kwargs, kind)] = sample_tile()
    assert kind == "image" and data.shape == (1024, 1024, 3) and data.dtype == np.uint8
    assert kwargs["name"] == "H&E tile (40×)"
    assert kwargs["scale"] == (0.25, 0.25) and kwargs["units"] == ("µm", "µm")
    assert kwargs["metadata"]["path"] == str(TILE_PATH) and kwargs["metadata"]["mpp"] == 0.25
    assert kwargs["rgb"] is True


def test_sample_slide_is_generated_once_into_the_cache(cache):
    [(data, kwargs, kind)] = sample_slide()
    path = cache / SLIDE_FILE
    assert path.is_file()
    assert kind == "image" and kwargs["multiscale"] is True and kwargs["name"] == "Small H&E slide"
    assert [a.shape for a in data] == [(2048, 3072, 3), (1024, 1536, 3), (512, 768, 3)]
    assert kwargs["scale"] == (0.25, 0.25) and kwargs["metadata"]["path"] == str(path)
    assert sorted(os.listdir(cache)) == [SLIDE_FILE]  # no temporary file left behind
    stamp = path.stat().st_mtime_ns
    assert sample_slide_path() == path
    assert path.stat().st_mtime_ns == stamp  # not rewritten


def test_sample_slide_is_a_real_pyramidal_slide_with_tissue_on_glass(cache):
    with Slide(sample_slide_path()) as slide:
        assert slide.mpp == 0.25 and slide.level_count == 3 and slide.vendor == "ome"
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        mask = tissue_mask(slide)
        corners = [(0, 0, 256, 256), (2816, 0, 256, 256), (0, 1792, 256, 256), (2816, 1792, 256, 256)]
        assert tiles_on_tissue(mask, [*corners, (1300, 900, 256, 256)]) == [False] * 4 + [True]
        assert 0.3 < mask.fraction < 0.7


def test_a_damaged_cached_slide_is_rebuilt(cache):
    path = sample_slide_path()
    path.write_bytes(path.read_bytes()[:5000])
    assert sample_slide_path() == path
    with Slide(path) as slide:
        assert slide.level_count == 3


def test_a_failed_write_leaves_nothing_behind(cache, monkeypatch):
    def fail(path, image, *, mpp):
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(_sample_data, "_write_pyramid", fail)
    with pytest.raises(OSError, match="disk full"):
        sample_slide_path()
    assert os.listdir(cache) == []


@pytest.mark.gui
def test_open_sample_in_a_viewer(make_napari_viewer, cache):
    viewer = make_napari_viewer()
    [tile] = viewer.open_sample("napari-hoverfast", "tcga_tile")
    assert tile.name == "H&E tile (40×)" and tuple(tile.scale) == (0.25, 0.25)
    [slide] = viewer.open_sample("napari-hoverfast", "small_slide")
    assert slide.multiscale and len(slide.data) == 3 and tuple(slide.scale) == (0.25, 0.25)
    assert slide.metadata["mpp"] == 0.25
