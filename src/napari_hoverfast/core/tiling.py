"""Tile geometry: overlapping network inputs and the half-open areas each tile owns.

A region is cut into cells of ``tile - overlap`` pixels; each cell's tile extends ``overlap / 2``
pixels of context on every side. A nucleus belongs to the tile whose cell holds its centroid, with
half-open intervals ``[start, stop)``, so a centroid on a seam has exactly one owner (upstream
HoverFast keeps it in both and duplicates it). All boxes here are in working-resolution pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``[x, x+w) × [y, y+h)`` in pixels."""

    x: int
    y: int
    w: int
    h: int

    def __post_init__(self) -> None:
        if self.w <= 0 or self.h <= 0:
            raise ValueError(f"Empty region: width {self.w} and height {self.h} must be positive")

    def contains(self, px: float, py: float) -> bool:
        """Half-open containment: the left/top edges belong to the box, the right/bottom do not."""
        return self.x <= px < self.x + self.w and self.y <= py < self.y + self.h

    def intersects(self, other: Box) -> bool:
        return not (
            other.x >= self.x + self.w or other.x + other.w <= self.x or other.y >= self.y + self.h or other.y + other.h <= self.y
        )

    def scaled(self, factor: float) -> Box:
        """The box in a frame ``factor`` times finer (outward rounding keeps every pixel)."""
        x0, y0 = math.floor(self.x * factor), math.floor(self.y * factor)
        x1, y1 = math.ceil((self.x + self.w) * factor), math.ceil((self.y + self.h) * factor)
        return Box(x0, y0, x1 - x0, y1 - y0)

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2


@dataclass(frozen=True)
class TileSpec:
    """One network input and the cell whose nuclei it keeps."""

    index: int
    input: Box
    owned: Box
    region: int = 0


@dataclass(frozen=True)
class TilingOptions:
    """Upstream defaults: 1024² tiles, 128 px overlap (64 px of context per side)."""

    tile: int = 1024
    overlap: int = 128

    def __post_init__(self) -> None:
        if self.tile < 64:
            raise ValueError(f"Tile size {self.tile} is too small (at least 64 px)")
        if not 0 <= self.overlap < self.tile // 2:
            raise ValueError(f"Overlap {self.overlap} must be between 0 and half the tile size ({self.tile // 2})")

    @property
    def step(self) -> int:
        return self.tile - self.overlap


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _axis(start: int, length: int, options: TilingOptions, multiple: int) -> tuple[int, list[tuple[int, int]]]:
    """Input size along one axis and the (cell start, cell length) list."""
    margin = options.overlap // 2
    if length <= options.tile:  # one cell: a tile of up to tile + overlap beats four mostly-context tiles
        return _round_up(length + 2 * margin, multiple), [(start, length)]
    step = options.step
    cells = []
    pos = start
    while pos < start + length:
        cells.append((pos, min(step, start + length - pos)))
        pos += step
    return _round_up(options.tile, multiple), cells


def plan_tiles(
    region: Box, options: TilingOptions | None = None, *, multiple: int = 4, first_index: int = 0, region_index: int = 0
) -> list[TileSpec]:
    """Tiles covering ``region``; all share one input size (so they batch), a multiple of ``multiple``.

    A region no wider than a tile is one cell (its input is the region plus the context margins);
    small regions thus get one small tile instead of a mostly empty 1024² one.
    """
    options = options or TilingOptions()
    margin = options.overlap // 2
    width, xs = _axis(region.x, region.w, options, multiple)
    height, ys = _axis(region.y, region.h, options, multiple)
    tiles = []
    for cy, ch in ys:
        for cx, cw in xs:
            tiles.append(
                TileSpec(
                    index=first_index + len(tiles),
                    input=Box(cx - margin, cy - margin, width, height),
                    owned=Box(cx, cy, cw, ch),
                    region=region_index,
                )
            )
    return tiles


def order_by_distance(tiles: Sequence[TileSpec], point: tuple[float, float]) -> list[TileSpec]:
    """Tiles sorted by the distance of their cell centre to ``point``: what the user looks at comes first."""
    px, py = point
    return sorted(tiles, key=lambda t: (t.owned.centre[0] - px) ** 2 + (t.owned.centre[1] - py) ** 2)
