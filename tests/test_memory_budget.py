"""Tiles shrink to the CPU memory budget at the precision in use, and a run records what it used."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from napari_hoverfast.core.model import load_checkpoint
from napari_hoverfast.core.pipeline import RunError, RunOptions, fit_tiles_to_memory, segment_slide
from napari_hoverfast.core.slide import Slide
from napari_hoverfast.core.speed import CPU_FORWARD_BYTES_PER_PIXEL, tile_for_memory
from napari_hoverfast.core.tiling import Box, TilingOptions, plan_tiles


@pytest.fixture(scope="module")
def model(shared_dir: Path):
    return load_checkpoint(shared_dir / "reference" / "ckpt_A.pth", device="cpu")


def test_the_default_budget_keeps_2048_px_tiles_at_float32_and_bf16() -> None:
    default = RunOptions().memory_gb
    assert tile_for_memory(2048, 160, "fp32", default) == tile_for_memory(2048, 160, "bf16", default) == 2048
    assert CPU_FORWARD_BYTES_PER_PIXEL["fp32"] * (2048 + 160) ** 2 <= default * 1e9


def test_a_smaller_budget_shrinks_tiles_to_the_largest_that_fits() -> None:
    fp32 = tile_for_memory(2048, 160, "fp32", 2.0)
    assert fp32 % 64 == 0 and fp32 < 2048
    assert CPU_FORWARD_BYTES_PER_PIXEL["fp32"] * (fp32 + 160) ** 2 <= 2.0e9
    assert CPU_FORWARD_BYTES_PER_PIXEL["fp32"] * (fp32 + 160 + 64) ** 2 > 2.0e9  # the largest that fits
    assert tile_for_memory(2048, 160, "bf16", 2.0) > fp32  # bf16 needs less memory per pixel
    assert tile_for_memory(2048, 160, "fp32", None) == 2048  # no budget: the tile as given
    assert tile_for_memory(512, 160, "fp32", 2.0) == 512  # never larger than asked
    assert tile_for_memory(2048, 160, "fp32", 2.0, batch_size=2) < fp32  # the batch shares the budget


@pytest.mark.parametrize("side", [2048, 3000, 4096, 8192])
def test_default_tiles_waste_little_at_float32(side: int) -> None:
    """Issue 14 item 1: at most 1.3 pixels computed per pixel kept for regions of 2048² and more."""
    tile = tile_for_memory(2048, 160, "fp32", RunOptions().memory_gb)
    tiles = plan_tiles(Box(0, 0, side, side), TilingOptions(tile=tile))
    computed = sum(t.input.w * t.input.h for t in tiles)
    assert computed / side**2 <= 1.3


def test_a_budget_too_small_is_refused_with_what_would_do() -> None:
    with pytest.raises(ValueError, match=r"too small .* give at least \d"):
        tile_for_memory(2048, 160, "fp32", 0.5, batch_size=4)  # the least budget allowed, shared by 4 tiles
    with pytest.raises(RunError, match="memory budget must be from"):
        RunOptions(memory_gb=0.1)


def test_the_run_uses_and_records_the_fitted_tile(shared_dir: Path, model) -> None:
    options = RunOptions(precision="fp32", memory_gb=0.5, workers=0)
    fitted = fit_tiles_to_memory(options, model)
    assert fitted.tiling.tile == tile_for_memory(2048, fitted.tiling.overlap_px, "fp32", 0.5) < 1024
    assert fit_tiles_to_memory(RunOptions(precision="fp32", memory_gb=None), model).tiling.tile == 2048
    cancel = threading.Event()
    cancel.set()  # plan only: the run stops before its first forward pass
    with Slide(shared_dir / "data" / "tcga_tile.png", mpp=0.25) as slide:
        run = segment_slide(slide, model, [Box(0, 0, 1024, 1024)], options, cancel=cancel)
        while True:
            try:
                next(run)
            except StopIteration as stop:
                result = stop.value
                break
    assert len(result.tiles) == 4  # 1024² in 2 × 2 cells of the fitted size, not one 2048 tile
    assert max(t.input.w for t in result.tiles) ** 2 * CPU_FORWARD_BYTES_PER_PIXEL["fp32"] <= 0.5e9
    assert result.parameters["tiling"]["tile"] == fitted.tiling.tile and result.parameters["memory_gb"] == 0.5
