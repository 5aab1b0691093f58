"""Resampling a window of level pixels to the requested output grid, pixel centres exact.

:meth:`Slide.read_region <napari_hoverfast.core.slide.Slide.read_region>` reads a window of the
finest level that is fine enough, and this module takes it to the output size: a crop or a block
mean when whole source pixels fall on each output pixel (the common, exact case), area averaging
when shrinking by other factors and bilinear interpolation when enlarging. Kept apart from the slide
because it is pure NumPy/SciPy on arrays: it knows nothing of files or levels.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

#: Tolerance on pixel coordinates: sizes and origins closer than this to a whole number are whole.
EPS = 1e-6


class Axis:
    """How one output axis samples its source: output pixel ``i`` is centred at ``origin + i·step``.

    Source coordinates are pixel indices (pixel ``j`` covers ``[j - 0.5, j + 0.5]``). Whole, aligned
    source pixels per output pixel (``step`` = 1, 2, ...) are a crop or a block mean; other steps
    above 1 average the exact area each output pixel covers; steps below 1 interpolate linearly.
    """

    def __init__(self, origin: float, step: float, n: int) -> None:
        self.origin, self.step, self.n = origin, step, n
        k = round(step)
        start = origin - (k - 1) / 2
        aligned = k >= 1 and abs(step - k) < EPS and abs(start - round(start)) < EPS
        self.block = k if aligned else 0
        self.start = round(start)

    def window(self) -> tuple[int, int]:
        """The source pixels this axis reads, ``[start, stop)``; may stick out of the level."""
        first, last = self.origin, self.origin + (self.n - 1) * self.step
        if self.block:
            return self.start, self.start + self.n * self.block
        if self.step > 1:
            half = self.step / 2
            return math.floor(first - half + 0.5 + EPS), math.ceil(last + half + 0.5 - EPS)
        return math.floor(first), math.floor(last) + 2

    def weights(self, w0: int, size: int) -> Any:
        """Sparse ``n × size`` matrix taking the window (starting at source pixel ``w0``) to the output."""
        from scipy import sparse

        centres = self.origin + self.step * np.arange(self.n)
        if self.step > 1:  # area: overlap of [a, a + step) with each pixel [j, j + 1), edge coordinates
            lo = centres - self.step / 2 + 0.5
            hi = lo + self.step
            cols = np.floor(lo).astype(np.int64)[:, None] + np.arange(math.ceil(self.step) + 1)
            vals = np.clip(np.minimum(hi[:, None], cols + 1) - np.maximum(lo[:, None], cols), 0, None)
            vals /= self.step
        else:  # linear interpolation between the two nearest pixel centres
            j0 = np.floor(centres)
            frac = centres - j0
            cols = j0.astype(np.int64)[:, None] + np.arange(2)
            vals = np.stack([1 - frac, frac], axis=1)
        cols = np.clip(cols - w0, 0, size - 1)
        rows = np.repeat(np.arange(self.n), cols.shape[1])
        return sparse.csr_matrix(
            (vals.ravel().astype(np.float32), (rows, cols.ravel())), shape=(self.n, size)
        )


def resample(
    win: npt.NDArray[np.uint8], ay: Axis, ax: Axis, wy0: int, wx0: int
) -> npt.NDArray[np.uint8]:
    """The output of two axes from the window read at (``wy0``, ``wx0``)."""
    if ay.block and ax.block:
        ky, kx = ay.block, ax.block
        if ky == kx == 1:
            return np.ascontiguousarray(win)
        blocks = win.reshape(ay.n, ky, ax.n, kx, 3).sum(axis=(1, 3), dtype=np.uint32)
        area = ky * kx
        return ((blocks + area // 2) // area).astype(np.uint8)

    hs, ws = win.shape[:2]
    src = win.reshape(hs, ws * 3).astype(np.float32)
    if ay.block == 1:
        rows = src[ay.start - wy0 : ay.start - wy0 + ay.n]
    else:
        rows = np.asarray(ay.weights(wy0, hs) @ src)  # (ny, ws·3)
    cols = rows.reshape(ay.n, ws, 3).transpose(1, 0, 2).reshape(ws, ay.n * 3)
    if ax.block == 1:
        out = cols[ax.start - wx0 : ax.start - wx0 + ax.n]
    else:
        out = np.asarray(ax.weights(wx0, ws) @ cols)  # (nx, ny·3)
    out = out.reshape(ax.n, ay.n, 3).transpose(1, 0, 2)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
