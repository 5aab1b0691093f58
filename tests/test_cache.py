"""The tile cache between predict and post-process: hits, misses, distrust, resume and re-threshold.

Runs the embedded model on the real TCGA tile cut into 3×3 small tiles (cheap, and seams matter).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import shapely

from napari_hoverfast.core.cache import CacheError, TileCache, TileMaps, slide_fingerprint
from napari_hoverfast.core.default_model import has_default_model, load_model
from napari_hoverfast.core.model import load_checkpoint
from napari_hoverfast.core.pipeline import Progress, RunOptions, segment_slide
from napari_hoverfast.core.slide import Slide
from napari_hoverfast.core.speed import native_bf16
from napari_hoverfast.core.tiling import Box, TilingOptions

pytestmark = pytest.mark.skipif(not has_default_model(), reason="needs the embedded default model")

REGION = Box(0, 0, 600, 560)
SMALL = RunOptions(tiling=TilingOptions(tile=224), workers=0)


@pytest.fixture(scope="module")
def model():
    return load_model(None, device="cpu")


@pytest.fixture()
def tile(shared_dir: Path) -> Path:
    return shared_dir / "data" / "tcga_tile.png"


def _run(tile: Path, model, options=SMALL, cache=None, *, mpp=0.25, cancel_after=None, cache_only=False):
    cancel = threading.Event()
    with Slide(tile, mpp=mpp) as slide:
        run = segment_slide(slide, model, [REGION], options, cache=cache, cancel=cancel, cache_only=cache_only)
        while True:
            try:
                event = next(run)
            except StopIteration as stop:
                return stop.value
            if cancel_after is not None and isinstance(event, Progress) and event.tiles_done >= cancel_after:
                cancel.set()


def _same(a, b) -> bool:
    """The same polygons (in any order: a run that recomputes some tiles finishes them later)."""
    def ordered(result):
        n = result.nuclei
        return np.asarray(n.polygons)[np.lexsort((n.centroid_y, n.centroid_x))]

    pa, pb = ordered(a), ordered(b)
    return len(pa) == len(pb) and bool(shapely.equals_exact(pa, pb, tolerance=0).all())


def test_a_second_run_takes_every_tile_from_the_cache(tile, model, tmp_path) -> None:
    cache = TileCache(tmp_path / "cache")
    first = _run(tile, model, cache=cache)
    assert first.complete and first.tiles_cached == 0 and len(first.tiles) == 9
    assert len(list((tmp_path / "cache").glob("??/*.npz"))) == 9
    second = _run(tile, model, cache=cache)
    assert second.tiles_cached == 9 and second.timings["forward"] == 0
    assert _same(first, second)
    assert _same(first, _run(tile, model))  # and both equal a run without any cache


@pytest.mark.parametrize("change", ["model", "stain", "mpp", "tile size", "precision"])
def test_anything_the_maps_depend_on_misses(tile, model, tmp_path, shared_dir, change) -> None:
    cache = TileCache(tmp_path / "cache")
    first = _run(tile, model, cache=cache)
    other_model = load_checkpoint(shared_dir / "reference" / "ckpt_A.pth", device="cpu") if change == "model" else model
    options = {
        "stain": RunOptions(tiling=TilingOptions(tile=224), workers=0, stain="ihc_dab"),
        "tile size": RunOptions(tiling=TilingOptions(tile=320), workers=0),
        "precision": RunOptions(tiling=TilingOptions(tile=224), workers=0, precision="fp32" if native_bf16() else "bf16"),
    }.get(change, SMALL)
    # cache_only: the changed run looks every tile up and predicts none (a hit would be post-processed)
    again = _run(tile, other_model, options, cache, mpp=0.26 if change == "mpp" else 0.25, cache_only=True)
    assert again.tiles_cached == 0 and not again.tiles_done
    assert _run(tile, model, SMALL, cache, cache_only=True).tiles_cached == len(first.tiles)  # the unchanged run hits


def test_a_corrupt_entry_is_computed_again_with_a_warning(tile, model, tmp_path, caplog) -> None:
    cache = TileCache(tmp_path / "cache")
    first = _run(tile, model, cache=cache)
    entries = sorted((tmp_path / "cache").glob("??/*.npz"))
    entries[0].write_bytes(entries[0].read_bytes()[:1000])  # truncated
    entries[1].write_bytes(b"not a zip at all")
    with caplog.at_level(logging.WARNING, logger="napari_hoverfast.core.cache"):
        second = _run(tile, model, cache=cache)
    assert second.tiles_cached == 7
    assert sum("not trusted" in r.getMessage() for r in caplog.records) == 2
    assert _same(first, second)
    assert _run(tile, model, cache=cache).tiles_cached == 9  # the recomputed tiles were stored again


def test_an_entry_of_another_shape_is_not_trusted(tmp_path) -> None:
    cache = TileCache(tmp_path / "cache")
    maps = TileMaps.from_float(np.full((8, 8), 0.7, np.float32), np.zeros((2, 8, 8), np.float32))
    assert cache.put("k" * 64, maps)
    assert cache.get("k" * 64, (8, 8)) is not None
    assert cache.get("k" * 64, (9, 8)) is None and "k" * 64 not in cache


def test_quantised_probability_keeps_the_threshold() -> None:
    prob = np.array([[0.4980, 0.4999, 0.5, 0.5001, 1.0, 0.0]], np.float32)
    back, _ = TileMaps.from_float(prob, np.zeros((2, 1, 6), np.float32)).as_float()
    assert ((back >= 0.5) == (prob >= 0.5)).all()


def test_an_unusable_cache_folder_is_a_clear_error(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(CacheError, match="Cannot use cache folder .*a-file"):
        TileCache(blocker / "cache")


def test_size_cap_evicts_the_least_recently_used(tmp_path) -> None:
    maps = TileMaps.from_float(np.random.default_rng(0).random((64, 64), dtype=np.float32), np.zeros((2, 64, 64), np.float32))
    cache = TileCache(tmp_path / "cache")
    cache.put("a" * 64, maps)
    one = cache.size_bytes()
    capped = TileCache(tmp_path / "cache", max_bytes=int(2.5 * one))
    import os
    import time

    time.sleep(0.01)
    capped.put("b" * 64, maps)
    time.sleep(0.01)
    os.utime(capped._path("a" * 64))  # "a" used most recently: "b" goes first
    time.sleep(0.01)
    capped.put("c" * 64, maps)
    assert "b" * 64 not in capped and all(k * 64 in capped for k in "ac")
    assert capped.clear() > 0 and capped.size_bytes() == 0


def test_resume_after_cancel_equals_an_uninterrupted_run(tile, model, tmp_path) -> None:
    cache = TileCache(tmp_path / "cache")
    part = _run(tile, model, cache=cache, cancel_after=4)
    assert part.cancelled and 4 <= len(part.tiles_done) < 9
    resumed = _run(tile, model, cache=cache)
    assert resumed.complete and resumed.tiles_cached == len(part.tiles_done)
    assert _same(resumed, _run(tile, model))


def test_rethreshold_equals_a_fresh_run_with_the_new_options(tile, model, tmp_path) -> None:
    cache = TileCache(tmp_path / "cache")
    _run(tile, model, cache=cache)
    new = RunOptions(tiling=TilingOptions(tile=224), workers=0, min_area_um2=8.0, max_area_um2=60.0,
                     marker_threshold=0.35, mask_threshold=0.45, simplify=3.0)
    again = _run(tile, model, new, cache)
    assert again.tiles_cached == 9 and again.timings["forward"] == 0
    fresh = _run(tile, model, new)
    assert _same(again, fresh) and len(fresh.nuclei) > 50
    assert (fresh.nuclei.area_um2 < 60.0 + 1e-6).all()


def test_fingerprint_follows_the_pixels_not_the_name(tmp_path, tile) -> None:
    copy = tmp_path / "renamed.png"
    copy.write_bytes(tile.read_bytes())
    assert slide_fingerprint(copy, (1024, 1024)) == slide_fingerprint(tile, (1024, 1024))
    data = bytearray(copy.read_bytes())
    data[-20] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert slide_fingerprint(copy, (1024, 1024)) != slide_fingerprint(tile, (1024, 1024))
