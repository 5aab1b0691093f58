"""Where the tissue is: a low-resolution mask, and the level-0 tiles that touch it.

HoverFast segments only tiles with tissue on them. The mask comes from the slide itself (a view at
about 8 µm per pixel, thresholded on colour saturation and optical density, then cleaned of dust and
holes) or from a mask image the user supplies at any scale, like HoverFast's binary mask folder.
Glass is unsaturated and nearly transparent; stained tissue is neither.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

    from .slide import Slide

__all__ = [
    "TissueError",
    "TissueMask",
    "TissueOptions",
    "mask_from_image",
    "tissue_mask",
    "tiles_on_tissue",
    "tissue_tile_grid",
]

Box = tuple[int, int, int, int]

#: Downsample used for slides without a pixel size (≈ 8 µm/px at 40×).
_DEFAULT_DOWNSAMPLE = 32
_BLOCK = 4096  # level pixels per side read at once while building the overview


class TissueError(ValueError):
    """A mask that does not fit its slide, or tissue detection that cannot run; the message says why."""


@dataclass(frozen=True)
class TissueOptions:
    """How tissue is told from glass on the low-resolution view."""

    mpp: float = 8.0
    """µm per mask pixel (8 µm ≈ a 1.25× view); slides without a pixel size use downsample 32."""
    saturation: float | None = None
    """HSV saturation above which a pixel is stained; ``None``: Otsu's threshold, kept in [0.04, 0.1]."""
    min_density: float = 0.05
    """Optical density (darkest channel) below which a pixel is glass, whatever its colour."""
    min_object_um2: float = 10_000.0
    """Tissue pieces up to this area (µm²) are dust or debris and dropped (100 × 100 µm)."""
    max_hole_um2: float = 10_000.0
    """Glass inside tissue up to this area (µm²) is filled in."""

    def __post_init__(self) -> None:
        if not self.mpp > 0:
            raise TissueError(f"mpp must be positive, got {self.mpp!r}")
        if self.saturation is not None and not 0 <= self.saturation < 1:
            raise TissueError(f"saturation must be in [0, 1), got {self.saturation!r}")
        if self.min_object_um2 < 0 or self.max_hole_um2 < 0:
            raise TissueError("min_object_um2 and max_hole_um2 must not be negative")


@dataclass(frozen=True)
class TissueMask:
    """A boolean mask over the slide; mask pixel (r, c) covers level-0 pixels
    ``[c·downsample, (c+1)·downsample) × [r·downsample, (r+1)·downsample)``."""

    mask: npt.NDArray[np.bool_]
    downsample: float
    dimensions: tuple[int, int]
    """(width, height) of the slide's level 0."""
    _integral: npt.NDArray[np.int64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask)
        if mask.ndim != 2 or mask.size == 0:
            raise TissueError(f"a tissue mask is a non-empty 2-D array, got shape {mask.shape}")
        if not self.downsample > 0:
            raise TissueError(f"downsample must be positive, got {self.downsample!r}")
        mask = mask.astype(bool, copy=False)
        mask.flags.writeable = False
        integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
        np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=integral[1:, 1:])
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "dimensions", (int(self.dimensions[0]), int(self.dimensions[1])))
        object.__setattr__(self, "_integral", integral)

    @property
    def fraction(self) -> float:
        """Share of the slide covered by tissue."""
        return float(self.mask.mean())

    def box_fraction(self, x: int, y: int, w: int, h: int) -> float:
        """Share of the mask pixels touched by the level-0 box (x, y, w, h) that are tissue."""
        rows, cols = self.mask.shape
        d = self.downsample
        r0, r1 = max(math.floor(y / d), 0), min(math.ceil((y + h) / d), rows)
        c0, c1 = max(math.floor(x / d), 0), min(math.ceil((x + w) / d), cols)
        if r1 <= r0 or c1 <= c0:
            return 0.0
        s = self._integral
        count = s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0]
        return float(count) / ((r1 - r0) * (c1 - c0))


def tissue_mask(slide: Slide, options: TissueOptions | None = None) -> TissueMask:
    """Detect tissue on a low-resolution view of ``slide`` (read from its smallest sufficient level)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    opts = options or TissueOptions()
    mpp = slide.mpp
    d = max(1, round(opts.mpp / mpp)) if mpp else _DEFAULT_DOWNSAMPLE
    rgb = _overview(slide, d).astype(np.float32)

    brightest = rgb.max(axis=-1)
    saturation = (brightest - rgb.min(axis=-1)) / np.maximum(brightest, 1.0)
    density = -np.log10((rgb + 1.0) / 256.0).max(axis=-1)
    if opts.saturation is not None:
        s_min = opts.saturation
    else:
        s_min = float(np.clip(threshold_otsu(saturation), 0.04, 0.1)) if np.ptp(saturation) > 0 else 0.1
    tissue = (saturation > s_min) & (density > opts.min_density)

    tissue = ndi.binary_closing(tissue, structure=np.ones((3, 3), bool), border_value=0)
    px_um2 = (d * mpp) ** 2 if mpp else None
    max_hole = opts.max_hole_um2 / px_um2 if px_um2 else 16
    min_object = opts.min_object_um2 / px_um2 if px_um2 else 16
    tissue = ~_drop_small(~tissue, max_hole)
    tissue = _drop_small(tissue, min_object)
    return TissueMask(tissue, float(d), slide.dimensions)


def mask_from_image(
    source: str | os.PathLike[str] | npt.ArrayLike, slide_dimensions: tuple[int, int]
) -> TissueMask:
    """A user's mask (path or array, any scale, same aspect as the slide): non-zero pixels are tissue."""
    arr: np.ndarray[Any, Any] = (
        _load_mask(Path(source)) if isinstance(source, (str, os.PathLike)) else np.asarray(source)
    )
    if arr.ndim == 3:
        arr = np.any(arr[..., :3] if arr.shape[-1] in (3, 4) else arr, axis=-1)
    if arr.ndim != 2 or arr.size == 0:
        raise TissueError(f"a mask image is a 2-D picture, got an array of shape {arr.shape}")
    width, height = (int(v) for v in slide_dimensions)
    rows, cols = arr.shape
    dx, dy = width / cols, height / rows
    d = (dx + dy) / 2
    # the mask may be rounded to whole pixels on each side, but its shape must be the slide's
    if abs(cols * d - width) > 1.5 * d or abs(rows * d - height) > 1.5 * d:
        raise TissueError(
            f"the mask ({cols} × {rows} px) does not have the slide's shape ({width} × {height} px): "
            f"its scale would be {dx:.4g} across but {dy:.4g} down"
        )
    return TissueMask(arr != 0, d, (width, height))


def tiles_on_tissue(
    mask: TissueMask, boxes: Iterable[Sequence[int]], *, min_fraction: float = 0.0
) -> list[bool]:
    """For each level-0 box (x, y, w, h): does it touch tissue (more than ``min_fraction`` of it)?"""
    out = []
    for box in boxes:
        x, y, w, h = (int(v) for v in box)
        frac = mask.box_fraction(x, y, w, h)
        out.append(frac > min_fraction)
    return out


def tissue_tile_grid(
    mask: TissueMask, tile: int, step: int | None = None, *, min_fraction: float = 0.0
) -> list[Box]:
    """Level-0 boxes (x, y, w, h) of a ``tile``-sized grid every ``step`` px that touch tissue.

    Boxes start on the grid and are clipped to the slide, so the last column and row may be narrower.
    """
    step = tile if step is None else step
    if tile < 1 or step < 1:
        raise TissueError(f"tile and step must be positive, got tile={tile}, step={step}")
    width, height = mask.dimensions
    boxes = [
        (x, y, min(tile, width - x), min(tile, height - y))
        for y in range(0, height, step)
        for x in range(0, width, step)
    ]
    keep = tiles_on_tissue(mask, boxes, min_fraction=min_fraction)
    return [box for box, k in zip(boxes, keep, strict=True) if k]


# --- helpers -------------------------------------------------------------------------------------------


def _overview(slide: Slide, d: int) -> npt.NDArray[np.uint8]:
    """The slide at downsample ``d``: mask pixel (r, c) averages level-0 pixels of its d × d square."""
    width, height = slide.dimensions
    rows, cols = -(-height // d), -(-width // d)
    level = slide.best_level(d)
    per_block = max(1, int(_BLOCK * slide.level_downsamples[level] // d))  # output px per block side
    out = np.empty((rows, cols, 3), np.uint8)
    for r in range(0, rows, per_block):
        for c in range(0, cols, per_block):
            nr, nc = min(per_block, rows - r), min(per_block, cols - c)
            out[r : r + nr, c : c + nc] = slide.read_region(
                c * d, r * d, nc * d, nr * d, downsample=d, pad=True
            )
    return out


def _drop_small(mask: npt.NDArray[np.bool_], max_px: float) -> npt.NDArray[np.bool_]:
    """``mask`` without its 8-connected pieces of at most ``max_px`` pixels."""
    from scipy import ndimage as ndi

    if max_px < 1 or not mask.any():
        return mask
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes > max_px
    keep[0] = False
    return keep[labels]


def _load_mask(path: Path) -> npt.NDArray[np.generic]:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise TissueError(f"{path}: no such mask file")
    try:
        with Image.open(path) as im:
            if im.mode in ("RGBA", "LA", "PA", "P"):
                return np.asarray(im.convert("RGB" if im.mode == "RGBA" else "L"))
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise TissueError(f"{path.name} is not a mask image Pillow can read ({exc})") from None
