"""Whole-slide images: open once, read regions at a requested resolution, show lazily.

:class:`Slide` reads every TIFF-based format through tiffslide (Aperio SVS, Hamamatsu NDPI, Philips,
Leica SCN, generic and OME tiled pyramids, single-level TIFF) and plain pictures (PNG, JPEG, ...)
through Pillow into memory. Coordinates are level-0 pixels, x right and y down; a pixel size (mpp,
µm per pixel) comes from the vendor's metadata, the OME pixel size or the TIFF resolution tags and is
``None`` when the file has none: it is never guessed.

Reads are safe from several threads at once: tiffslide keeps one zarr store per thread and tifffile
serialises the file reads, so tiles decode in parallel.
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
from typing import TYPE_CHECKING, Any, Protocol
from xml.etree import ElementTree

import numpy as np

if TYPE_CHECKING:
    import dask.array as da
    import numpy.typing as npt

__all__ = ["WORK_MPP", "Slide", "SlideError", "working_factor"]

log = logging.getLogger(__name__)

#: µm per pixel of HoverFast's 40× working resolution (the reference its models are trained at).
WORK_MPP = 0.2425

#: Pixel sizes (µm) a microscope scan can have; resolution tags outside this range are a DPI default
#: written by an image editor (72 dpi is 353 µm/px), not a measurement, and are ignored.
_PLAUSIBLE_MPP = (0.01, 50.0)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_UNSUPPORTED = {
    ".mrxs": "3DHISTECH MIRAX (.mrxs)",
    ".vsi": "Olympus VSI",
    ".czi": "Zeiss CZI",
    ".dcm": "DICOM",
    ".isyntax": "Philips iSyntax",
}
_MULTI_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.tf2", ".ome.tf8", ".ome.btf")
_PLAIN_TILE = 1024  # dask chunk size for images held in memory
_MAX_IN_MEMORY = 1 << 30  # samples: the largest unusual TIFF read whole into memory
_EPS = 1e-6


class SlideError(ValueError):
    """A file that is not a readable slide, or a request the slide cannot answer; the message says which."""


def working_factor(mpp: float) -> float:
    """The power of two that brings a slide of ``mpp`` to the 40× working resolution.

    ``work_mpp = mpp / factor``: a 20× scan (0.5 µm/px) has factor 2 and is upsampled ×2, an 80× scan
    (0.125 µm/px) has factor 0.5 and is downsampled ×2, a 40× scan has factor 1.
    """
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise SlideError(f"mpp must be a positive number of µm per pixel, got {mpp!r}")
    return float(2.0 ** round(math.log2(mpp / WORK_MPP)))


# --- backends --------------------------------------------------------------------------------------


class _Backend(Protocol):
    """Pixel access by level; ``read`` takes a box inside the level and returns RGB uint8."""

    level_dimensions: tuple[tuple[int, int], ...]

    def tile_shape(self, level: int) -> tuple[int, int]: ...

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> npt.NDArray[np.uint8]: ...

    def close(self) -> None: ...


def _to_rgb(arr: np.ndarray) -> npt.NDArray[np.uint8]:
    """H×W, H×W×1, ×2 (grey + alpha), ×3 or ×4 (alpha dropped), uint8 or uint16 → H×W×3 uint8."""
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise SlideError(f"unsupported pixel type {arr.dtype} (8- or 16-bit brightfield images only)")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    if channels in (1, 2):
        return np.repeat(arr[:, :, :1], 3, axis=2)
    if channels == 3:
        return arr
    return np.ascontiguousarray(arr[:, :, :3])


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
    lo, hi = _PLAUSIBLE_MPP
    if not math.isfinite(value) or not lo <= value <= hi:
        raise SlideError(f"mpp {mpp!r} µm per pixel is not a microscope pixel size (expected {lo} to {hi})")
    return value


def _plausible_mpp(value: Any, source: str, name: str) -> float | None:
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(mpp) or mpp <= 0:
        return None
    lo, hi = _PLAUSIBLE_MPP
    if not lo <= mpp <= hi:
        log.info("%s: ignoring %s of %.4g µm/px (not a microscope pixel size)", name, source, mpp)
        return None
    return mpp


class _TiffBackend:
    """Pixels through tiffslide; per-thread zarr arrays, cached by level."""

    def __init__(self, path: Path) -> None:
        from tiffslide import TiffSlide

        self._ts = TiffSlide(path)
        try:
            props = self._ts.properties
            self.properties: dict[str, Any] = props
            self.axes: str = props["tiffslide.series-axes"]
            self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
                (int(w), int(h)) for w, h in self._ts.level_dimensions
            )
            self._composite = bool(props.get("tiffslide.series-composition"))
            self._tiles = tuple(
                (
                    int(props.get(f"tiffslide.level[{lvl}].tile-height") or 0),
                    int(props.get(f"tiffslide.level[{lvl}].tile-width") or 0),
                )
                for lvl in range(len(self.level_dimensions))
            )
            self._check_channels()
            self._check_complete(path)
        except BaseException:
            self._ts.close()
            raise
        self._local = threading.local()

    @property
    def tifffile(self) -> Any:
        return self._ts.ts_tifffile

    def _series(self) -> Any:
        return self.tifffile.series[self.properties.get("tiffslide.series-index") or 0]

    def _check_channels(self) -> None:
        series = self._series()
        dtype = np.dtype(series.dtype)
        if dtype not in (np.uint8, np.uint16, np.bool_):
            raise SlideError(f"unsupported pixel type {dtype} (8- or 16-bit brightfield images only)")
        shape = series.shape
        # interleaved samples are grey, grey + alpha, RGB or RGBA; separate planes must be RGB
        ok = {"YXS": shape[-1] in (1, 2, 3, 4), "CYX": shape[0] in (1, 3), "YX": True}
        if not ok.get(self.axes, False):
            raise SlideError(
                f"is not a 2-D RGB slide: its image has axes {self.axes} and shape {tuple(shape)}"
            )

    def _check_complete(self, path: Path) -> None:
        """A truncated file opens (its IFDs come first) but its last tiles point past the end."""
        if self._composite:
            return
        size = path.stat().st_size
        for level in self._series().levels:
            page = level.keyframe
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            if offsets.size and int((offsets + counts).max()) > size:
                raise SlideError(
                    "the file is truncated: its image data needs "
                    f"{int((offsets + counts).max()):,} bytes but the file has {size:,}"
                )

    def tile_shape(self, level: int) -> tuple[int, int]:
        th, tw = self._tiles[level]
        if th and tw:
            return th, tw
        if not self._composite:
            chunks = self._array(level).chunks
            return (chunks[1], chunks[2]) if self.axes == "CYX" else (chunks[0], chunks[1])
        return _PLAIN_TILE, _PLAIN_TILE

    def _array(self, level: int) -> Any:
        cache: dict[int, Any] | None = getattr(self._local, "arrays", None)
        if cache is None:
            cache = self._local.arrays = {}
        try:
            return cache[level]
        except KeyError:
            arr = cache[level] = self._ts.zarr_group[str(level)]
            return arr

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> npt.NDArray[np.uint8]:
        if self._composite:
            ds = self._ts.level_downsamples[level]
            loc = (math.ceil(x0 * ds - _EPS), math.ceil(y0 * ds - _EPS))
            arr = self._ts.read_region(loc, level, (x1 - x0, y1 - y0), as_array=True, padding=True)
            return _to_rgb(np.asarray(arr))
        zarr_array = self._array(level)
        if self.axes == "CYX":
            return _to_rgb(np.moveaxis(zarr_array[:, y0:y1, x0:x1], 0, -1))
        return _to_rgb(np.asarray(zarr_array[y0:y1, x0:x1]))

    def close(self) -> None:
        self._ts.close()


class _ArrayBackend:
    """A picture held in memory as one RGB level."""

    def __init__(self, rgb: npt.NDArray[np.uint8]) -> None:
        self._rgb = rgb
        self.level_dimensions: tuple[tuple[int, int], ...] = ((int(rgb.shape[1]), int(rgb.shape[0])),)

    def tile_shape(self, level: int) -> tuple[int, int]:
        return _PLAIN_TILE, _PLAIN_TILE

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> npt.NDArray[np.uint8]:
        return self._rgb[y0:y1, x0:x1].copy()  # never a view: callers may write into what they get

    def close(self) -> None:
        pass


def _read_picture(path: Path, head: bytes) -> tuple[npt.NDArray[np.uint8], float | None]:
    """PNG, JPEG and other non-TIFF pictures via Pillow; mpp from PNG pHYs or JPEG density."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            dpi = im.info.get("dpi")
            if im.mode in ("I;16", "I;16B", "I;16L"):
                rgb = _to_rgb(np.asarray(im).astype(np.uint16))
            elif im.mode in ("I", "F"):
                raise SlideError(f"{path.name}: unsupported {im.mode} image (8- or 16-bit only)")
            else:
                rgb = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        kind = _UNSUPPORTED.get(path.suffix.lower())
        if kind:
            raise SlideError(
                f"{path.name}: {kind} files cannot be read here (tiffslide reads TIFF-based "
                "formats); convert it to a pyramidal OME-TIFF, e.g. with QuPath or bfconvert"
            ) from None
        raise SlideError(
            f"{path.name} is neither a slide nor an image that tiffslide or Pillow can read "
            f"(it starts with {head[:8]!r})"
        ) from None
    except Image.DecompressionBombError as exc:
        raise SlideError(
            f"{path.name} is too large to read into memory as a plain image ({exc}); "
            "convert it to a tiled pyramidal TIFF"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, SlideError):
            raise
        raise SlideError(f"{path.name} cannot be decoded; is it truncated or corrupt? ({exc})") from None
    mpp = None
    if dpi and dpi[0]:
        mpp = _plausible_mpp(25400.0 / float(dpi[0]), "the image resolution", path.name)
    return rgb, mpp


def _read_tiff_plainly(path: Path, reason: BaseException) -> npt.NDArray[np.uint8]:
    """A TIFF tiffslide declines (an unusual layout): read it whole if it is one 2-D image."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            shape, axes = series.shape, series.axes
            if not (len(shape) == 2 or (len(shape) == 3 and axes.endswith("S") and shape[2] <= 4)):
                raise SlideError(
                    f"{path.name} is not a 2-D RGB slide: its image has axes {axes} and shape {shape}"
                ) from reason
            if series.size > _MAX_IN_MEMORY:
                raise SlideError(
                    f"{path.name} has an image layout tiffslide does not read ({reason}) and is too large "
                    f"({shape[1]} × {shape[0]} px) to read into memory; convert it to a tiled pyramidal TIFF"
                ) from reason
            return _to_rgb(series.asarray())
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(f"{path.name}: a TIFF that cannot be read ({exc})") from reason


def _ome_pixel_size(xml: str) -> tuple[float | None, float | None]:
    """``PhysicalSizeX`` in µm and the objective's nominal magnification from OME-XML."""
    to_um = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "nm": 1e-3, "Å": 1e-4}
    try:
        root = ElementTree.fromstring(xml)  # noqa: S314 - metadata of a local file
    except ElementTree.ParseError:
        return None, None
    mpp = magnification = None
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "Pixels" and mpp is None and "PhysicalSizeX" in element.attrib:
            unit = element.attrib.get("PhysicalSizeXUnit", "µm")
            if unit in to_um:
                mpp = float(element.attrib["PhysicalSizeX"]) * to_um[unit]
        elif tag == "Objective" and magnification is None:
            value = element.attrib.get("NominalMagnification")
            magnification = float(value) if value else None
    return mpp, magnification


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
        self._properties: dict[str, Any] = {}
        self._vendor = "image"
        self._objective: float | None = None
        file_mpp: float | None = None
        mpp = check_mpp(mpp)

        head = self._check_file()
        if head[:4] in _TIFF_MAGIC:
            self._backend, file_mpp = self._open_tiff()
        else:
            rgb, file_mpp = _read_picture(self._path, head)
            self._backend = _ArrayBackend(rgb)
        self._mpp: float | None = float(mpp) if mpp is not None else file_mpp
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

    def _open_tiff(self) -> tuple[_Backend, float | None]:
        from tifffile import TiffFileError

        name = self._path.name
        try:
            backend = _TiffBackend(self._path)
        except SlideError as exc:
            raise SlideError(f"{name}: {exc}") from None
        except NotImplementedError as exc:
            return _ArrayBackend(_read_tiff_plainly(self._path, exc)), self._tiff_tags_mpp()
        except (TiffFileError, ValueError, KeyError, IndexError, OSError, AssertionError) as exc:
            raise SlideError(
                f"{name} starts like a TIFF but cannot be read; is it truncated or corrupt? ({exc})"
            ) from None

        props = backend.properties
        self._properties = props
        tf = backend.tifffile
        self._vendor = str(props.get("tiffslide.vendor") or ("ome" if tf.is_ome else "generic-tiff"))
        mpp_x = _plausible_mpp(props.get("tiffslide.mpp-x"), "the slide's pixel size", name)
        mpp_y = _plausible_mpp(props.get("tiffslide.mpp-y"), "the slide's pixel size", name)
        mpp = mpp_x if mpp_y is None else mpp_y if mpp_x is None else (mpp_x + mpp_y) / 2
        if mpp_x and mpp_y and mpp and abs(mpp_x - mpp_y) > 0.01 * mpp:
            log.warning("%s has non-square pixels (%.4g × %.4g µm); using %.4g", name, mpp_x, mpp_y, mpp)
        objective = _plausible_objective(props.get("tiffslide.objective-power"))
        if tf.is_ome and tf.ome_metadata:
            ome_mpp, ome_mag = _ome_pixel_size(tf.ome_metadata)
            ome_mpp = _plausible_mpp(ome_mpp, "the OME pixel size", name)
            mpp = ome_mpp if ome_mpp is not None else mpp
            objective = objective if objective is not None else _plausible_objective(ome_mag)
        self._objective = objective
        return backend, mpp

    def _tiff_tags_mpp(self) -> float | None:
        import tifffile

        try:
            with tifffile.TiffFile(self._path) as tf:
                tags = tf.pages.first.tags
                unit = tags["ResolutionUnit"].value
                xres = tags["XResolution"].value
        except Exception:
            return None
        scale = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}.get(int(unit))
        if scale is None or not xres[0]:
            return None
        return _plausible_mpp(scale * xres[1] / xres[0], "the TIFF resolution", self._path.name)

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
            if ds <= downsample * (1 + _EPS):
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
        ax = _Axis((x + 0.5 * sx) / dsx - 0.5, sx / dsx, out_w)
        ay = _Axis((y + 0.5 * sy) / dsy - 0.5, sy / dsy, out_h)
        (wx0, wx1), (wy0, wy1) = ax.window(), ay.window()
        win = self._read_window(level, wx0, wy0, wx1, wy1)
        return _resample(win, ay, ax, wy0, wx0)

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


def _plausible_objective(value: Any) -> float | None:
    try:
        power = float(value)
    except (TypeError, ValueError):
        return None
    return power if math.isfinite(power) and 0 < power <= 200 else None


# --- resampling --------------------------------------------------------------------------------------


class _Axis:
    """How one output axis samples its source: output pixel ``i`` is centred at ``origin + i·step``.

    Source coordinates are pixel indices (pixel ``j`` covers ``[j - 0.5, j + 0.5]``). Whole, aligned
    source pixels per output pixel (``step`` = 1, 2, ...) are a crop or a block mean; other steps
    above 1 average the exact area each output pixel covers; steps below 1 interpolate linearly.
    """

    def __init__(self, origin: float, step: float, n: int) -> None:
        self.origin, self.step, self.n = origin, step, n
        k = round(step)
        start = origin - (k - 1) / 2
        aligned = k >= 1 and abs(step - k) < _EPS and abs(start - round(start)) < _EPS
        self.block = k if aligned else 0
        self.start = round(start)

    def window(self) -> tuple[int, int]:
        """The source pixels this axis reads, ``[start, stop)``; may stick out of the level."""
        first, last = self.origin, self.origin + (self.n - 1) * self.step
        if self.block:
            return self.start, self.start + self.n * self.block
        if self.step > 1:
            half = self.step / 2
            return math.floor(first - half + 0.5 + _EPS), math.ceil(last + half + 0.5 - _EPS)
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


def _resample(
    win: npt.NDArray[np.uint8], ay: _Axis, ax: _Axis, wy0: int, wx0: int
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
