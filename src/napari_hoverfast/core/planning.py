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
from .tiling import Box, TileSpec, computed_pixels, order_by_distance, plan_tiles
from .tissue import TissueMask, tiles_on_tissue

#: The largest cell whose work is within this share of the least is taken: larger tiles batch
#: better and have fewer seams, so a near tie goes to the larger.
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


def least_work_tiling(
    slide: Any, regions: Sequence[Box] | None, geometry: Geometry, options: RunOptions, tissue: TissueMask | None, *,
    multiple: int = 8,
) -> RunOptions:
    """``options`` with the largest cell size, from its tile down to half of it, whose tiles on
    ``tissue`` compute within ``SMALLER_TILE_GAIN`` of the least.

    Measured on a 6144² slide of 2048² tissue islands on glass (float32, 2 cores): 2048 px cells
    computed 9 tiles of 2208² (43.9 Mpx, 328 s), the chosen 1472 px 16 tiles of 1392² (31.0 Mpx, 227 s).
    Without tissue the largest cells are already least work (equal cells, fewest margins).
    """
    if tissue is None:
        return options
    largest = options.tiling.tile
    smallest = min(largest, max(SMALLEST_FITTED_TILE, largest // 2))  # a tile below 512 px stays as it is
    sizes = range(largest, smallest - 1, -TILE_STEP)
    candidates = [replace(options, tiling=replace(options.tiling, tile=tile)) for tile in sizes]
    work = [computed_pixels(plan_run(slide, regions, geometry, c, tissue=tissue, multiple=multiple)) for c in candidates]
    least = min(work)
    return next(c for c, w in zip(candidates, work, strict=True) if w * (1 - SMALLER_TILE_GAIN) <= least)
