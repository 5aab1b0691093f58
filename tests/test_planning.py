"""On tissue a run picks the cell size that computes least, and still covers every tissue pixel."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from napari_hoverfast.core.planning import least_work_tiling, plan_run
from napari_hoverfast.core.run_types import RunOptions, working_geometry
from napari_hoverfast.core.tiling import Box, TilingOptions, computed_pixels
from napari_hoverfast.core.tissue import TissueMask

SIZE = 6144


def islands() -> TissueMask:
    """bench_wholeslide's layout: 2048² islands of tissue, 512 px of glass between, from 256 px (16 px per mask pixel)."""
    mask = np.zeros((SIZE // 16, SIZE // 16), bool)
    for y in (256, 2816):
        for x in (256, 2816):
            mask[y // 16 : (y + 2048) // 16, x // 16 : (x + 2048) // 16] = True
    return TissueMask(mask, 16, (SIZE, SIZE))


def test_islands_get_smaller_cells_that_leave_the_glass_out() -> None:
    slide, geometry, tissue = SimpleNamespace(dimensions=(SIZE, SIZE), name="islands"), working_geometry(0.25), islands()
    options = RunOptions(tiling=TilingOptions().resolved(48))
    chosen = least_work_tiling(slide, None, geometry, options, tissue)
    largest = plan_run(slide, None, geometry, options, tissue=tissue)
    tiles = plan_run(slide, None, geometry, chosen, tissue=tissue)
    assert chosen.tiling.tile < 2048 and chosen.tiling.overlap == options.tiling.overlap
    assert computed_pixels(tiles) < 0.8 * computed_pixels(largest)  # 31.0 against 43.9 Mpx
    owned = np.zeros_like(tissue.mask)
    for t in tiles:
        owned[t.owned.y // 16 : (t.owned.y + t.owned.h) // 16, t.owned.x // 16 : (t.owned.x + t.owned.w) // 16] = True
    assert not (tissue.mask & ~owned).any()  # every tissue pixel is in a tile's own cell


def test_without_tissue_or_on_solid_tissue_the_largest_cells_stay() -> None:
    slide, geometry = SimpleNamespace(dimensions=(SIZE, SIZE), name="solid"), working_geometry(0.25)
    options = RunOptions(tiling=TilingOptions().resolved(48))
    assert least_work_tiling(slide, [Box(0, 0, 4096, 4096)], geometry, options, None) == options
    solid = TissueMask(np.ones((SIZE // 16, SIZE // 16), bool), 16, (SIZE, SIZE))
    assert least_work_tiling(slide, None, geometry, options, solid).tiling.tile == 2048
    small = RunOptions(tiling=TilingOptions(tile=256).resolved(48))  # the dock's tests use 256 px tiles
    assert least_work_tiling(slide, None, geometry, small, islands()) == small
