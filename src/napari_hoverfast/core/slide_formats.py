"""How pixels and pixel sizes come out of each kind of file, for :class:`~napari_hoverfast.core.slide.Slide`.

Two backends: TIFF-based slides through tiffslide (one zarr array per thread and level, so reads
decode in parallel) and pictures held in memory (PNG, JPEG, TIFF layouts tiffslide declines). The
rules that keep a damaged or hostile file bounded are applied here, at opening, before any pixel is
decoded: a file whose image data points past its end is refused; a TIFF whose chunks (tiles or
strips) are too large to decode for every region read (a whole scan in one strip: 2.6 MB on disk
can declare 2.7 GB of pixels) is read into memory once when it fits and refused with advice to
convert it otherwise. A pixel size comes from the metadata only when it is plausible for a
microscope, and is ``None`` otherwise: it is never guessed.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .resample import EPS
from .slide_metadata import ome_pixel_size, plausible_mpp, plausible_objective, tiff_tags_mpp

if TYPE_CHECKING:
    import numpy.typing as npt

log = logging.getLogger(__name__)


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_UNSUPPORTED = {
    ".mrxs": "3DHISTECH MIRAX (.mrxs)",
    ".vsi": "Olympus VSI",
    ".czi": "Zeiss CZI",
    ".dcm": "DICOM",
    ".isyntax": "Philips iSyntax",
}
PLAIN_TILE = 1024  # dask chunk size for images held in memory
#: Samples: the largest image read whole into memory (an unusual TIFF layout, or one in huge chunks).
MAX_IN_MEMORY = 1 << 30
#: Samples: the largest TIFF chunk (tile or strip) decoded for a region read; 64 Mi is a 4096² RGBA
#: tile. Every read decodes each chunk it touches, so larger chunks make each read cost that much.
MAX_CHUNK = 1 << 26
_CONVERT = (
    "convert it to a tiled pyramidal TIFF first, e.g. `vips tiffsave IN OUT.tif --tile --pyramid "
    "--compression jpeg` or `bfconvert -tilex 512 -tiley 512 -pyramid-resolutions 5 IN OUT.ome.tif`"
)


class SlideError(ValueError):
    """A file that is not a readable slide, or a request the slide cannot answer; the message says which."""


class Backend(Protocol):
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



class TiffBackend:
    """Pixels through tiffslide; per-thread zarr arrays, cached by level."""

    def __init__(self, path: Path) -> None:
        from tiffslide import TiffSlide

        self._ts = TiffSlide(path)
        self._local = threading.local()
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

    @property
    def tifffile(self) -> Any:
        return self._ts.ts_tifffile

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self._series().dtype)

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

    def largest_chunk(self) -> tuple[int, tuple[int, int]]:
        """Samples in the largest chunk (tile or strip) that a read decodes whole, and its height and
        width; ``0`` when tiffslide composes the levels itself."""
        if self._composite:
            return 0, (0, 0)
        chunks = [tuple(int(c) for c in self._array(level).chunks) for level in range(len(self.level_dimensions))]
        largest = max(chunks, key=math.prod)
        return math.prod(largest), (largest[1], largest[2]) if self.axes == "CYX" else (largest[0], largest[1])

    def tile_shape(self, level: int) -> tuple[int, int]:
        th, tw = self._tiles[level]
        if th and tw:
            return th, tw
        if not self._composite:
            chunks = self._array(level).chunks
            return (chunks[1], chunks[2]) if self.axes == "CYX" else (chunks[0], chunks[1])
        return PLAIN_TILE, PLAIN_TILE

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
            loc = (math.ceil(x0 * ds - EPS), math.ceil(y0 * ds - EPS))
            arr = self._ts.read_region(loc, level, (x1 - x0, y1 - y0), as_array=True, padding=True)
            return _to_rgb(np.asarray(arr))
        zarr_array = self._array(level)
        if self.axes == "CYX":
            return _to_rgb(np.moveaxis(zarr_array[:, y0:y1, x0:x1], 0, -1))
        return _to_rgb(np.asarray(zarr_array[y0:y1, x0:x1]))

    def close(self) -> None:
        self._ts.close()


class ArrayBackend:
    """A picture held in memory as one RGB level."""

    def __init__(self, rgb: npt.NDArray[np.uint8]) -> None:
        self._rgb = rgb
        self.level_dimensions: tuple[tuple[int, int], ...] = ((int(rgb.shape[1]), int(rgb.shape[0])),)

    def tile_shape(self, level: int) -> tuple[int, int]:
        return PLAIN_TILE, PLAIN_TILE

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
        mpp = plausible_mpp(25400.0 / float(dpi[0]), "the image resolution", path.name)
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
            if series.size > MAX_IN_MEMORY:
                raise SlideError(
                    f"{path.name} has an image layout tiffslide does not read ({reason}) and is too large "
                    f"({shape[1]} × {shape[0]} px) to read into memory; convert it to a tiled pyramidal TIFF"
                ) from reason
            return _to_rgb(series.asarray())
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(f"{path.name}: a TIFF that cannot be read ({exc})") from reason


@dataclass
class OpenedFile:
    """A file's backend and what its metadata say (``mpp`` ``None`` when it records none)."""

    backend: Backend
    mpp: float | None = None
    vendor: str = "image"
    properties: dict[str, Any] = field(default_factory=dict)
    objective: float | None = None


def open_file(path: Path, head: bytes) -> OpenedFile:
    """Open ``path`` (whose first bytes are ``head``) with the backend its format needs."""
    if head[:4] in TIFF_MAGIC:
        return _open_tiff(path)
    rgb, mpp = _read_picture(path, head)
    return OpenedFile(ArrayBackend(rgb), mpp)


def _open_tiff(path: Path) -> OpenedFile:
    from tifffile import TiffFileError

    name = path.name
    try:
        backend = TiffBackend(path)
    except SlideError as exc:
        raise SlideError(f"{name}: {exc}") from None
    except NotImplementedError as exc:
        return OpenedFile(ArrayBackend(_read_tiff_plainly(path, exc)), tiff_tags_mpp(path))
    except (TiffFileError, ValueError, KeyError, IndexError, OSError, AssertionError) as exc:
        raise SlideError(f"{name} starts like a TIFF but cannot be read; is it truncated or corrupt? ({exc})") from None
    try:
        opened = _tiff_metadata(backend, name)
        opened.backend = _bounded(backend, name)
    except BaseException:
        backend.close()
        raise
    return opened


def _tiff_metadata(backend: TiffBackend, name: str) -> OpenedFile:
    props = backend.properties
    tf = backend.tifffile
    vendor = str(props.get("tiffslide.vendor") or ("ome" if tf.is_ome else "generic-tiff"))
    mpp_x = plausible_mpp(props.get("tiffslide.mpp-x"), "the slide's pixel size", name)
    mpp_y = plausible_mpp(props.get("tiffslide.mpp-y"), "the slide's pixel size", name)
    mpp = mpp_x if mpp_y is None else mpp_y if mpp_x is None else (mpp_x + mpp_y) / 2
    if mpp_x and mpp_y and mpp and abs(mpp_x - mpp_y) > 0.01 * mpp:
        log.warning("%s has non-square pixels (%.4g × %.4g µm); using %.4g", name, mpp_x, mpp_y, mpp)
    objective = plausible_objective(props.get("tiffslide.objective-power"))
    if tf.is_ome and tf.ome_metadata:
        ome_mpp, ome_mag = ome_pixel_size(tf.ome_metadata)
        ome_mpp = plausible_mpp(ome_mpp, "the OME pixel size", name)
        mpp = ome_mpp if ome_mpp is not None else mpp
        objective = objective if objective is not None else plausible_objective(ome_mag)
    return OpenedFile(backend, mpp, vendor, props, objective)


def _bounded(backend: TiffBackend, name: str) -> Backend:
    """``backend``, or its only level read once into memory when its chunks are too large to decode
    per read; refused (with how to convert it) when such a file does not fit in memory either."""
    samples, (chunk_h, chunk_w) = backend.largest_chunk()
    if samples <= MAX_CHUNK:
        return backend
    (width, height), *lower = backend.level_dimensions
    size = f"{width} × {height} px"
    if chunk_w == width:
        chunk = "one strip" if chunk_h >= height else f"strips of {chunk_h:,} rows"
    else:
        chunk = f"tiles of {chunk_w} × {chunk_h} px"
    if lower or width * height * 3 > MAX_IN_MEMORY:
        gib = samples * np.dtype(backend.dtype).itemsize / 2**30
        raise SlideError(f"{name} stores its {size} image in {chunk}: every region read would decode {gib:.1f} GiB; {_CONVERT}")
    log.info("%s stores its %s image in %s: reading it into memory once", name, size, chunk)
    try:
        rgb = backend.read(0, 0, 0, width, height)
    except SlideError:
        raise
    except Exception as exc:  # a damaged strip: say so, keep the decoder's words
        raise SlideError(f"{name}: cannot decode its image ({type(exc).__name__}: {exc}); is it truncated or corrupt?") from None
    backend.close()
    return ArrayBackend(rgb)
