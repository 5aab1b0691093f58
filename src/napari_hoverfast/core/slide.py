"""Whole-slide images: open once, read regions at a requested resolution, show lazily.

:class:`Slide` reads every TIFF-based format through tiffslide (Aperio SVS, Hamamatsu NDPI, Philips,
Leica SCN, generic and OME tiled pyramids, single-level TIFF) and plain pictures (PNG, JPEG, ...)
through Pillow into memory. Coordinates are level-0 pixels, x right and y down; a pixel size (mpp,
µm per pixel) comes from the vendor's metadata, the OME pixel size or the TIFF resolution tags and is
``None`` when the file has none: it is never guessed.

Reads are safe from several threads at once: tiffslide keeps one zarr store per thread and tifffile
serialises the file reads, so tiles decode in parallel. The file formats (and the rules that keep a
hostile file bounded) live in ``slide_formats.py``, the resampling in ``resample.py``.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import threading
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from .resample import EPS, Axis, resample
from .slide_formats import SlideError, open_file
from .slide_metadata import PLAUSIBLE_MPP

if TYPE_CHECKING:
    import dask.array as da
    import numpy.typing as npt

__all__ = ["WORK_MPP", "Slide", "SlideError", "check_mpp", "working_factor"]

log = logging.getLogger(__name__)

#: µm per pixel of HoverFast's 40× working resolution (the reference its models are trained at).
WORK_MPP = 0.2425

_MULTI_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.tf2", ".ome.tf8", ".ome.btf")


def working_factor(mpp: float) -> float:
    """The power of two that brings a slide of ``mpp`` to the 40× working resolution.

    ``work_mpp = mpp / factor``: a 20× scan (0.5 µm/px) has factor 2 and is upsampled ×2, an 80× scan
    (0.125 µm/px) has factor 0.5 and is downsampled ×2, a 40× scan has factor 1.
    """
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise SlideError(f"mpp must be a positive number of µm per pixel, got {mpp!r}")
    return float(2.0 ** round(math.log2(mpp / WORK_MPP)))


def check_mpp(mpp: Any) -> float | None:
    """A pixel size the user gave, as a float, or a :class:`SlideError` saying why it cannot be one.

    The same plausible range applies as to file metadata: ``--mpp 100`` would plan thousands of tiles
    for a small region, ``--mpp 0.0001`` allocate hundreds of GiB. numpy scalars are accepted,
    booleans are not.
    """
    if mpp is None:
        return None
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float, np.integer, np.floating)):
        raise SlideError(f"mpp must be a number of µm per pixel, got {mpp!r}")
    value = float(mpp)
    lo, hi = PLAUSIBLE_MPP
    if not math.isfinite(value) or not lo <= value <= hi:
        raise SlideError(f"mpp {mpp!r} µm per pixel is not a microscope pixel size (expected {lo} to {hi})")
    return value


def _snap_downsample(full: int, level: int) -> float:
    """Pyramids halve with floor or ceil; ``46000 → 11500`` is ×4, and so is ``2967 → 742``."""
    ratio = full / level
    k = round(ratio)
    if k >= 1 and abs(full / k - level) < 1.0:
        return float(k)
    return ratio


# --- the slide ---------------------------------------------------------------------------------------


class _LevelSource:
    """One level as an array-like for ``dask.array.from_array``: every chunk is a fresh read."""

    def __init__(self, slide: Slide, level: int) -> None:
        w, h = slide.level_dimensions[level]
        self._slide = slide
        self._level = level
        self.shape = (h, w, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key: tuple[slice, ...]) -> npt.NDArray[np.uint8]:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        ys, xs, cs = key
        y0, y1, ystep = ys.indices(self.shape[0])
        x0, x1, xstep = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)[:, :, cs]
        arr = self._slide._backend_read(self._level, x0, y0, x1, y1)
        if ystep != 1 or xstep != 1:
            arr = arr[::ystep, ::xstep]
        return arr[:, :, cs]


class Slide:
    """A whole-slide image (or a plain picture), opened once; use it as a context manager.

    ``mpp`` overrides the file's pixel size (µm per level-0 pixel). Regions are given in level-0
    pixels and returned as H×W×3 uint8 RGB at any requested resolution.
    """

    def __init__(self, path: str | os.PathLike[str], *, mpp: float | None = None) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._closed = False
        mpp = check_mpp(mpp)
        opened = open_file(self._path, self._check_file())
        self._backend = opened.backend
        self._properties: dict[str, Any] = opened.properties
        self._vendor = opened.vendor
        self._objective = opened.objective
        self._mpp: float | None = mpp if mpp is not None else opened.mpp
        self._scales = tuple(
            (_snap_downsample(self.dimensions[0], w), _snap_downsample(self.dimensions[1], h))
            for w, h in self._backend.level_dimensions
        )
        log.debug("opened %r", self)

    # -- opening ----------------------------------------------------------------------------------

    def _check_file(self) -> bytes:
        path = self._path
        if not path.exists():
            raise SlideError(f"{path}: no such file")
        if path.is_dir():
            raise SlideError(f"{path} is a folder, not a slide file")
        if path.stat().st_size == 0:
            raise SlideError(f"{path.name} is empty (0 bytes)")
        with path.open("rb") as fh:
            return fh.read(16)

    # -- context manager ----------------------------------------------------------------------------

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the file; reads (also through :meth:`to_dask` arrays) fail afterwards."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._backend.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        w, h = self.dimensions
        state = ", closed" if self._closed else ""
        return (
            f"Slide({self._path.name!r}, {w}×{h} px, {self.level_count} level(s), "
            f"mpp={self._mpp!r}, vendor={self._vendor!r}{state})"
        )

    # -- metadata -----------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @cached_property
    def name(self) -> str:
        """The file name without its image extension (``.ome.tif`` counts as one)."""
        lower = self._path.name.lower()
        for suffix in _MULTI_SUFFIXES:
            if lower.endswith(suffix):
                return self._path.name[: -len(suffix)]
        return self._path.stem

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self._backend.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self._backend.level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each level, largest first."""
        return self._backend.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Level-0 pixels per level pixel (an integer where the level halves with floor or ceil)."""
        return tuple((sx + sy) / 2 for sx, sy in self._scales)

    @property
    def mpp(self) -> float | None:
        """µm per level-0 pixel: the ``mpp`` given at opening, else the file's; ``None`` if unknown."""
        return self._mpp

    @property
    def objective_power(self) -> float | None:
        """The scanner's objective magnification when the file records it."""
        return self._objective

    @property
    def vendor(self) -> str:
        """tiffslide's vendor (``aperio``, ``hamamatsu``, ``philips``, ...), ``ome``, ``generic-tiff`` or ``image``."""
        return self._vendor

    @property
    def properties(self) -> Mapping[str, Any]:
        """tiffslide's property mapping (empty for plain images)."""
        return self._properties

    def require_mpp(self) -> float:
        """The pixel size, or a :class:`SlideError` saying how to give one."""
        if self._mpp is None:
            raise SlideError(
                f"{self._path.name} records no pixel size (µm per pixel); give one explicitly, "
                "e.g. Slide(path, mpp=0.25), --mpp 0.25 on the command line or the widget's mpp field"
            )
        return self._mpp

    def work_mpp(self) -> float:
        """µm per pixel the model sees for this slide (``mpp / working_factor(mpp)``).

        Slides coarser than 40× (e.g. 20× scans) are upsampled, with a logged warning: HoverFast itself
        refuses them, and nuclei look softer than in the 40× training data.
        """
        mpp = self.require_mpp()
        factor = working_factor(mpp)
        if factor > 1:
            log.warning(
                "%s is scanned at %.3g µm/px (about %.0f×), coarser than the 40× HoverFast works at: "
                "upsampling ×%g (upstream HoverFast refuses such slides; expect softer nuclei)",
                self._path.name, mpp, 10.0 / mpp, factor,
            )
        return mpp / factor

    def best_level(self, downsample: float) -> int:
        """The smallest level whose downsample is at most ``downsample`` (level 0 below 1)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + EPS):
                best = level
        return best

    # -- pixels -------------------------------------------------------------------------------------

    def _backend_read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> npt.NDArray[np.uint8]:
        if self._closed:
            raise SlideError(f"{self._path.name} is closed")
        try:
            return self._backend.read(level, x0, y0, x1, y1)
        except (SlideError, MemoryError):
            raise
        except Exception as exc:  # a damaged tile: say where, keep the decoder's words
            if self._closed:
                raise SlideError(f"{self._path.name} is closed") from None
            raise SlideError(
                f"{self._path.name}: cannot decode level {level} pixels x {x0}–{x1}, y {y0}–{y1} "
                f"(damaged tile?): {type(exc).__name__}: {exc}"
            ) from exc

    def read_region(
        self,
        x: int,
        y: int,
        w: int,
        h: int,
        *,
        mpp: float | None = None,
        downsample: float | None = None,
        pad: bool = False,
    ) -> npt.NDArray[np.uint8]:
        """Pixels of the level-0 box (x, y, w, h) as H×W×3 uint8 RGB.

        With ``mpp`` (µm per output pixel) or ``downsample`` (level-0 pixels per output pixel) the
        box is resampled to ``round(w · slide_mpp / mpp) × round(h · slide_mpp / mpp)``, up or down:
        from the smallest pyramid level that is at least as fine, then area averaging (down) or
        bilinear interpolation (up), with output pixel centres placed exactly. A box partly outside
        the slide is an error unless ``pad``, which fills the outside by reflecting the slide.
        """
        try:
            x, y, w, h = (operator.index(v) for v in (x, y, w, h))
        except TypeError:
            raise SlideError(f"region must be whole pixels, got x={x!r}, y={y!r}, w={w!r}, h={h!r}") from None
        W, H = self.dimensions
        where = f"region x={x}, y={y}, w={w}, h={h}"
        if w <= 0 or h <= 0:
            raise SlideError(f"empty {where}: width and height must be at least one pixel")
        if x >= W or y >= H or x + w <= 0 or y + h <= 0:
            raise SlideError(f"{where} lies outside the slide ({W} × {H} px)")
        if not pad and (x < 0 or y < 0 or x + w > W or y + h > H):
            raise SlideError(
                f"{where} extends outside the slide ({W} × {H} px); pass pad=True to reflect the border"
            )
        ds = self._requested_downsample(mpp, downsample)
        out_w, out_h = round(w / ds), round(h / ds)
        if out_w < 1 or out_h < 1:
            raise SlideError(f"{where} is smaller than one pixel at {ds:g}× downsampling")
        level = self.best_level(ds)
        dsx, dsy = self._scales[level]
        # Output pixel i has its centre at level-0 coordinate x + (i + 0.5)·sx; in the level's pixel
        # index space (pixel j centred at j + 0.5) that is origin + i·step.
        sx, sy = w / out_w, h / out_h
        ax = Axis((x + 0.5 * sx) / dsx - 0.5, sx / dsx, out_w)
        ay = Axis((y + 0.5 * sy) / dsy - 0.5, sy / dsy, out_h)
        (wx0, wx1), (wy0, wy1) = ax.window(), ay.window()
        win = self._read_window(level, wx0, wy0, wx1, wy1)
        return resample(win, ay, ax, wy0, wx0)

    def _requested_downsample(self, mpp: float | None, downsample: float | None) -> float:
        if mpp is not None and downsample is not None:
            raise SlideError("give mpp or downsample, not both")
        if mpp is not None:
            if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
                raise SlideError(f"mpp must be a positive number of µm per pixel, got {mpp!r}")
            return float(mpp) / self.require_mpp()
        if downsample is not None:
            if not (isinstance(downsample, (int, float)) and math.isfinite(downsample) and downsample > 0):
                raise SlideError(f"downsample must be a positive number, got {downsample!r}")
            return float(downsample)
        return 1.0

    def _read_window(self, level: int, x0: int, y0: int, x1: int, y1: int) -> npt.NDArray[np.uint8]:
        """Level pixels of a box that may stick out of the level; the outside reflects the inside."""
        lw, lh = self.level_dimensions[level]
        cx0, cy0 = min(max(x0, 0), lw - 1), min(max(y0, 0), lh - 1)
        cx1, cy1 = max(min(x1, lw), cx0 + 1), max(min(y1, lh), cy0 + 1)
        arr = self._backend_read(level, cx0, cy0, cx1, cy1)
        pads = ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1), (0, 0))
        if any(a or b for a, b in pads):
            arr = np.pad(arr, tuple((max(a, 0), max(b, 0)) for a, b in pads), mode="symmetric")
            # a window starting past the level's end (possible only for tiny levels) is cropped here
            arr = arr[max(y0 - cy0, 0) :, max(x0 - cx0, 0) :][: y1 - y0, : x1 - x0]
        return arr

    def to_dask(self) -> list[da.Array]:
        """The pyramid as lazy (y, x, RGB) uint8 dask arrays, largest first, chunked by the file's tiles.

        Nothing is decoded until a chunk is computed, so showing a 5 GB slide costs what a 1 MB one
        does. The arrays read through this slide: keep it open while they are in use.
        """
        import dask.array as da
        from dask.base import tokenize

        stat = self._path.stat()
        token = tokenize(str(self._path.resolve()), stat.st_mtime_ns, stat.st_size, id(self))
        levels = []
        for level in range(self.level_count):
            th, tw = self._backend.tile_shape(level)
            levels.append(
                da.from_array(
                    _LevelSource(self, level),
                    chunks=(th, tw, 3),
                    name=f"hoverfast-slide-{token}-{level}",
                    asarray=True,
                    fancy=False,
                    lock=False,
                    meta=np.empty((0, 0, 0), np.uint8),
                )
            )
        return levels

