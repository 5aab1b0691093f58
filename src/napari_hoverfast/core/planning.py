"""Which tiles a run computes: the regions (or the whole slide) cut into tiles, glass left out.

On tissue the cell size matters beyond the tiling's own waste: a tile touching tissue is computed
whole, so smaller cells leave more glass out, and larger ones pay fewer margins. ``least_work_tiling``
weighs the two for the slide at hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, replace
from typing import Any

from .run_types import Geometry, RunError, RunOptions
from .speed import SMALLEST_FITTED_TILE, TILE_STEP
from .tiling import Box, TileSpec, order_by_distance, plan_tiles
from .tissue import TissueMask, tiles_on_tissue

#: A smaller cell is taken only if it computes at least this much less: larger tiles batch better
#: and have fewer seams, so a near tie goes to the larger.
SMALLER_TILE_GAIN = 0.05


def _check_region(region: Box, dimensions: tuple[int, int], name: str) -> Box:
    width, height = dimensions
    x0, y0 = max(region.x, 0), max(region.y, 0)
    x1, y1 = min(region.x + region.w, width), min(region.y + region.h, height)
    if x1 <= x0 or y1 <= y0:
        raise RunError(
            f"Region x={region.x}, y={region.y}, w={region.w}, h={region.h} lies outside {name} ({width}×{height} px)"
        )
    return Box(x0, y0, x1 - x0, y1 - y0)


def plan_run(
    slide: Any,
    regions: Sequence[Box] | None,
    geometry: Geometry,
    options: RunOptions,
    *,
    tissue: TissueMask | None = None,
    priority: tuple[float, float] | None = None,
    multiple: int = 8,
) -> list[TileSpec]:
    """Tiles in working pixels for the given level-0 regions, or for the tissue of the whole slide."""
    multiple = max(8, multiple)
    if regions:
        tiles: list[TileSpec] = []
        for number, region in enumerate(regions):
            clipped = _check_region(region, slide.dimensions, slide.name)
            tiles += plan_tiles(
                clipped.scaled(geometry.scale), options.tiling, multiple=multiple, first_index=len(tiles), region_index=number
            )
    else:
        width, height = slide.dimensions
        whole = Box(0, 0, width, height).scaled(geometry.scale)
        tiles = plan_tiles(whole, options.tiling, multiple=multiple)
    if tissue is not None:  # regions too: the widget's view and rectangles skip glass
        boxes = [astuple(t.owned.scaled(1.0 / geometry.scale)) for t in tiles]
        tiles = [t for t, keep in zip(tiles, tiles_on_tissue(tissue, boxes), strict=True) if keep]
        tiles = [TileSpec(i, t.input, t.owned, t.region) for i, t in enumerate(tiles)]
    if priority is not None:
        tiles = order_by_distance(tiles, (priority[0] * geometry.scale, priority[1] * geometry.scale))
    return tiles

def computed_pixels(tiles: Sequence[TileSpec]) -> int:
    """The network's work for ``tiles``: input pixels, margins included."""
    return sum(t.input.w * t.input.h for t in tiles)


def least_work_tiling(
    slide: Any, regions: Sequence[Box] | None, geometry: Geometry, options: RunOptions, tissue: TissueMask | None, *,
    multiple: int = 8,
) -> RunOptions:
    """``options`` with the cell size, from its tile down to half of it, whose tiles on ``tissue`` compute least.

    Measured on a 6144² slide of 2048² tissue islands on glass (float32, 2 cores): 2048 px cells
    computed 9 tiles of 2208² (43.9 Mpx, 323 s), 1280 px cells 16 tiles of 1440² (33.2 Mpx, 238 s).
    Without tissue the largest cells are already least work (equal cells, fewest margins).
    """
    if tissue is None:
        return options
    largest = options.tiling.tile
    best, best_work = options, None
    for tile in range(largest, max(SMALLEST_FITTED_TILE, largest // 2) - 1, -TILE_STEP):
        candidate = replace(options, tiling=replace(options.tiling, tile=tile))
        work = computed_pixels(plan_run(slide, regions, geometry, candidate, tissue=tissue, multiple=multiple))
        if best_work is None or work < (1 - SMALLER_TILE_GAIN) * best_work:
            best, best_work = candidate, work
    return best
