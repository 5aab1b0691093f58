"""Tile geometry: overlapping network inputs and the half-open areas each tile owns.

A region is cut into cells of ``tile - overlap`` pixels; each cell's tile extends ``overlap / 2``
pixels of context on every side. Of that margin, the outer ``valid_border`` pixels are where the
network's zero padding distorts its output: post-processing never sees them (see
:func:`post_window`). The rest is context, so that a nucleus on a cell's edge is seen whole. A
nucleus belongs to the tile whose cell holds its centroid, with half-open intervals
``[start, stop)``, so a centroid on a seam has exactly one owner (upstream HoverFast keeps it in
both and duplicates it). All boxes here are in working-resolution pixels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .limits import DEFAULT_TILE, check_tile_size


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


#: Context beyond a cell, inside the valid area, for nuclei on its edge (8 µm at 40×: a large nucleus's radius).
NUCLEUS_CONTEXT = 32
#: The default model's padding reach (``ModelConfig().padding_reach``), for plans made without a model.
DEFAULT_VALID_BORDER = 48


@dataclass(frozen=True)
class TilingOptions:
    """Tile size, overlap and the border of each tile's output that post-processing skips.

    ``tile`` is the largest cell a tile keeps nuclei from, 2048 px by default (upstream: 1024); its
    input adds ``overlap / 2`` px of context on each side. The maps are min-max normalised per tile,
    so a region done in one tile gives upstream's nuclei for that ROI (99.7 % matched on a 2048²
    mosaic, 87.5 % when done as 3×3 tiles of 1024), and computes 1.16 pixels per pixel kept
    (upstream's 1024² tiles with 128 px overlap: 1.30; ours at 1024: 1.34).

    ``overlap`` and ``valid_border`` left ``None`` follow the model: ``valid_border`` is its
    :attr:`~napari_hoverfast.core.model.ModelConfig.padding_reach` and ``overlap`` leaves
    :data:`NUCLEUS_CONTEXT` px of valid context on each side (160 px for the default model).
    :meth:`resolved` fills them in.
    """

    tile: int = DEFAULT_TILE
    overlap: int | None = None
    valid_border: int | None = None

    def __post_init__(self) -> None:
        check_tile_size(self.tile)
        if self.overlap is not None and not 0 <= self.overlap < self.tile:
            raise ValueError(f"Overlap {self.overlap} must be zero or more and less than the tile size ({self.tile})")
        if self.valid_border is not None and self.valid_border < 0:
            raise ValueError(f"valid_border must be zero or more, got {self.valid_border}")
        if self.overlap is not None and self.valid_border is not None and self.valid_border > self.overlap // 2:
            raise ValueError(f"valid_border {self.valid_border} exceeds the context of an overlap of {self.overlap} px")

    def resolved(self, padding_reach: int = DEFAULT_VALID_BORDER) -> TilingOptions:
        """These options with ``overlap`` and ``valid_border`` set (from the model's ``padding_reach``).

        With an overlap too small for the reach (given, or capped by a small tile), the border
        shrinks so that at least half the margin stays context: the caller chose speed over
        exactness at the tiles' edges.
        """
        if self.overlap is not None and self.valid_border is not None:
            return self
        border = padding_reach if self.valid_border is None else self.valid_border
        overlap = self.overlap if self.overlap is not None else min(2 * (border + NUCLEUS_CONTEXT), self.tile - 1)
        margin = overlap // 2
        if self.valid_border is None:
            border = min(border, margin - min(NUCLEUS_CONTEXT, margin // 2))
        return TilingOptions(tile=self.tile, overlap=overlap, valid_border=min(border, margin))

    @property
    def overlap_px(self) -> int:
        return self.overlap if self.overlap is not None else self.resolved().overlap_px


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


#: A region up to this much longer than a tile stays one tile: cut in two, its halves' margins would
#: compute 1.34 pixels per pixel kept (2049 px in 2 × 1025-px cells with 80-px margins).
ONE_TILE_SLACK = 1.125


def cells_along(length: int, tile: int) -> int:
    """How many cells of at most ``tile`` px (``ONE_TILE_SLACK`` more for a single one) cover ``length``."""
    n = -(-length // tile)
    return 1 if n == 2 and length <= ONE_TILE_SLACK * tile else n


#: Upstream HoverFast reflects 84 px (half its 168-px stride) around an ROI before its one forward
#: pass, so the ROI's first pixel sits 84 px into the network's input. A network with d levels pools
#: 2^(d-1) pixels into one, and its maps change with the pooling grid's phase: a 4-px shift moves the
#: maps of a depth-4 model by up to 0.13 in the middle of a tile and changes 9 % of its nuclei
#: (docs/FIDELITY.md). Every tile therefore puts its region's pixels on the pooling grid exactly
#: where upstream's pass puts the ROI's: the same nuclei from the same weights at any depth, and two
#: tiles of a region see their overlap on the same grid.
UPSTREAM_ROI_LEAD = 84


def lead_for(margin: int, multiple: int) -> int:
    """The left (top) context of a tile: at least ``margin``, on upstream's pooling phase."""
    return margin + (UPSTREAM_ROI_LEAD - margin) % multiple


def _axis(start: int, length: int, options: TilingOptions, multiple: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Input size, left (top) context and the (cell start, cell length) list along one axis.

    Cells are as equal as the pooling grid allows (their starts a multiple of ``multiple`` from the
    region's), so no thin last cell pays a whole tile's margins: a 4096-px side is two 2048-px cells
    (1.16 pixels computed per pixel kept), not three (2.25).
    """
    margin = options.overlap_px // 2
    lead = lead_for(margin, multiple)
    n = cells_along(length, options.tile)
    inner = [start + (length * k) // n // multiple * multiple for k in range(1, n)]
    bounds = [start, *inner, start + length]
    cells = [(a, b - a) for a, b in itertools.pairwise(bounds)]
    return _round_up(lead + max(c for _, c in cells) + margin, multiple), lead, cells


def computed_pixels(tiles: Sequence[TileSpec]) -> int:
    """The network's work for ``tiles``: input pixels, margins included."""
    return sum(t.input.w * t.input.h for t in tiles)


def computed_per_owned(tiles: Sequence[TileSpec]) -> float:
    """Pixels the network computes per pixel whose nuclei are kept: the tiling's waste (1.0 is none)."""
    return computed_pixels(tiles) / sum(t.owned.w * t.owned.h for t in tiles)


def plan_tiles(
    region: Box, options: TilingOptions | None = None, *, multiple: int = 4, first_index: int = 0, region_index: int = 0
) -> list[TileSpec]:
    """Tiles covering ``region``; all share one input size (so they batch), a multiple of ``multiple``.

    Each cell is at most ``options.tile`` px a side and its input adds the context margins; small
    regions thus get one small tile instead of a mostly empty large one.
    """
    options = (options or TilingOptions()).resolved()
    width, left, xs = _axis(region.x, region.w, options, multiple)
    height, top, ys = _axis(region.y, region.h, options, multiple)
    tiles = []
    for cy, ch in ys:
        for cx, cw in xs:
            tiles.append(
                TileSpec(
                    index=first_index + len(tiles),
                    input=Box(cx - left, cy - top, width, height),
                    owned=Box(cx, cy, cw, ch),
                    region=region_index,
                )
            )
    return tiles


#: How far past its cell a tile keeps a nucleus (working px), toward cells of the same region: a seam
#: nucleus shaped differently by two tiles can have its centroid in the other's cell in both, and
#: would be lost; such nuclei wait and are kept where no neighbour holds them (``seams.py``).
SEAM_BAND = 16


def keep_boxes(tiles: Sequence[TileSpec], band: int = SEAM_BAND) -> dict[int, Box]:
    """Per tile, the box its nuclei's centroids must fall in: its cell, widened by ``band`` inside its region."""
    extent: dict[int, tuple[int, int, int, int]] = {}
    for t in tiles:
        o = t.owned
        x0, y0, x1, y1 = extent.get(t.region, (o.x, o.y, o.x + o.w, o.y + o.h))
        extent[t.region] = (min(x0, o.x), min(y0, o.y), max(x1, o.x + o.w), max(y1, o.y + o.h))
    out = {}
    for t in tiles:
        o = t.owned
        x0, y0, x1, y1 = extent[t.region]
        a, b = max(o.x - band, x0), max(o.y - band, y0)
        c, d = min(o.x + o.w + band, x1), min(o.y + o.h + band, y1)
        out[t.index] = Box(a, b, c - a, d - b)
    return out


def post_window(spec: TileSpec, options: TilingOptions, bounds: Box) -> Box:
    """The part of a tile's output that post-processing uses: valid context only.

    That is the input without its ``valid_border`` (where zero padding distorts the maps) and
    without what lies outside ``bounds`` (the slide in working pixels: reflected pixels there are
    no tissue). Maps are normalised over this window only, as upstream normalises over the ROI.
    """
    b = options.resolved().valid_border or 0
    i = spec.input
    x0, y0 = max(i.x + b, bounds.x), max(i.y + b, bounds.y)
    x1, y1 = min(i.x + i.w - b, bounds.x + bounds.w), min(i.y + i.h - b, bounds.y + bounds.h)
    return Box(x0, y0, max(x1 - x0, 1), max(y1 - y0, 1))


def order_by_distance(tiles: Sequence[TileSpec], point: tuple[float, float]) -> list[TileSpec]:
    """Tiles sorted by the distance of their cell centre to ``point``: what the user looks at comes first."""
    px, py = point
    return sorted(tiles, key=lambda t: (t.owned.centre[0] - px) ** 2 + (t.owned.centre[1] - py) ** 2)
