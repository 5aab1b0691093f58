"""Sample data (File › Open Sample): the bundled H&E tile, and a small slide made from it.

The slide lets the whole-slide path be tried with nothing downloaded: a pyramidal, tiled JPEG
OME-TIFF at 0.25 µm/px, generated once from the bundled tile into a cache folder
(``$NAPARI_HOVERFAST_CACHE``, else the user cache directory). No Qt here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from ._layers import LayerDataTuple, image_layer_data

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
TILE_PATH = DATA_DIR / "tcga_tile.png"
TILE_MPP = 0.25
TILE_NAME = "H&E tile (40×)"
SLIDE_NAME = "Small H&E slide"
#: Bump when the generated slide changes, so caches are rebuilt.
SLIDE_FILE = "small_he_slide_v1.ome.tif"
SLIDE_SIZE = (3072, 2048)  # width, height at 0.25 µm/px
SLIDE_LEVELS = 3
SLIDE_TILE = 256
_GLASS = (242, 240, 245)


def cache_dir() -> Path:
    """``$NAPARI_HOVERFAST_CACHE``, else the platform's user cache folder for napari-hoverfast."""
    env = os.environ.get("NAPARI_HOVERFAST_CACHE")
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path.home() / ".cache" / "napari-hoverfast"
    return Path(user_cache_dir("napari-hoverfast", appauthor=False))


def tile_cache_dir() -> Path:
    """Where the widget keeps tiles' network output: ``$NAPARI_HOVERFAST_TILE_CACHE``, else ``tiles/`` of :func:`cache_dir`."""
    env = os.environ.get("NAPARI_HOVERFAST_TILE_CACHE")
    return Path(env).expanduser() if env else cache_dir() / "tiles"


def sample_tile() -> list[LayerDataTuple]:
    """The bundled 1024² H&E tile at 40× as an RGB image layer in µm."""
    from .core.slide import Slide

    with Slide(TILE_PATH, mpp=TILE_MPP) as slide:
        return [image_layer_data(slide, name=TILE_NAME, in_memory=True)]


def sample_slide() -> list[LayerDataTuple]:
    """A small pyramidal H&E slide (tissue on glass), generated on first use; opened like the reader does."""
    from .core.slide import Slide

    slide = Slide(sample_slide_path())
    return [image_layer_data(slide, name=SLIDE_NAME)]


def sample_slide_path() -> Path:
    """The small sample slide in the cache folder, written there first if missing or unreadable."""
    from .core.slide import Slide, SlideError

    path = cache_dir() / SLIDE_FILE
    if path.is_file():
        try:
            with Slide(path) as slide:
                if slide.level_count == SLIDE_LEVELS and slide.dimensions == SLIDE_SIZE:
                    return path
        except SlideError as exc:
            log.warning("rebuilding the sample slide %s: %s", path, exc)
    write_sample_slide(path)
    return path


def write_sample_slide(path: Path) -> Path:
    """Write the sample slide atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = _sample_image()
    fd, tmp = tempfile.mkstemp(prefix=".small_he_slide-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _write_pyramid(Path(tmp), image, mpp=TILE_MPP)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    log.info("wrote the sample slide %s", path)
    return path


def _sample_image() -> np.ndarray:
    """Glass with one irregular piece of tissue, its texture the bundled tile mirrored to fill it."""
    from PIL import Image
    from scipy import ndimage as ndi

    width, height = SLIDE_SIZE
    tile = np.asarray(Image.open(TILE_PATH).convert("RGB"))
    period = np.concatenate([tile, tile[:, ::-1]], axis=1)
    period = np.concatenate([period, period[::-1]], axis=0)
    reps = (-(-height // period.shape[0]), -(-width // period.shape[1]), 1)
    texture = np.tile(period, reps)[:height, :width].astype(np.float32)

    # a lobed outline, an ellipse whose radius wobbles with the angle, drawn at 1/8 scale and
    # softened there (a 6 px edge at full scale), then enlarged
    f = 8
    yy, xx = np.mgrid[0 : height // f, 0 : width // f].astype(np.float32) * f
    dx, dy = (xx - 0.47 * width) / (0.36 * width), (yy - 0.52 * height) / (0.38 * height)
    angle = np.arctan2(dy, dx)
    wobble = 1 + 0.12 * np.sin(3 * angle + 0.5) + 0.07 * np.sin(5 * angle + 2.0) + 0.04 * np.sin(9 * angle)
    small = ndi.gaussian_filter((np.hypot(dx, dy) < wobble).astype(np.float32), 0.75)
    alpha = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR))
    alpha = alpha[..., None]

    rng = np.random.default_rng(0)
    glass = np.asarray(_GLASS, np.float32) + rng.normal(0, 1.5, (height, width, 1)).astype(np.float32)
    return np.clip(alpha * texture + (1 - alpha) * glass, 0, 255).astype(np.uint8)


def _write_pyramid(path: Path, image: np.ndarray, *, mpp: float) -> None:
    """A tiled JPEG OME-TIFF, lower levels as SubIFDs, the pixel size both in OME and the resolution tags."""
    import tifffile
    from skimage.transform import downscale_local_mean

    levels = [image]
    for _ in range(SLIDE_LEVELS - 1):
        levels.append(np.rint(downscale_local_mean(levels[-1].astype(np.float32), (2, 2, 1))).astype(np.uint8))
    options = {
        "tile": (SLIDE_TILE, SLIDE_TILE),
        "compression": "jpeg",
        "compressionargs": {"level": 90},
        "photometric": "rgb",
        "resolutionunit": "CENTIMETER",
    }
    metadata = {
        "axes": "YXS",
        "Name": SLIDE_NAME,
        "PhysicalSizeX": mpp,
        "PhysicalSizeY": mpp,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeYUnit": "µm",
    }
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(levels[0], subifds=len(levels) - 1, metadata=metadata, resolution=(1e4 / mpp, 1e4 / mpp), **options)
        for k, level in enumerate(levels[1:], start=1):
            res = 1e4 / (mpp * 2**k)
            tif.write(level, subfiletype=1, metadata=None, resolution=(res, res), **options)
