"""Small real slides for tests: H&E on glass, written as pyramidal TIFFs with tifffile.

Three layouts, the ones tiffslide meets in the wild:
- ``"subifds"``: a generic tiled TIFF, lower levels as SubIFDs of level 0 (the OME/QuPath way);
- ``"aperio"``: an Aperio SVS layout, one page per level plus a stripped thumbnail, with an Aperio
  ImageDescription carrying ``MPP`` and ``AppMag``;
- ``"ome"``: an OME-TIFF with SubIFD levels whose only pixel size is the OME ``PhysicalSizeX``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from skimage.transform import downscale_local_mean

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BUNDLED_TILE = REPO / "src" / "napari_hoverfast" / "data" / "tcga_tile.png"
SVS = SHARED / "CMU-1-Small-Region.svs"
CMU1_MASK = SHARED / "CMU-1.png"

GLASS_RGB = (242, 240, 245)


def he_tile() -> np.ndarray:
    """The bundled 1024² H&E tile at 40× (≈0.25 µm/px), RGB uint8."""
    return np.asarray(Image.open(BUNDLED_TILE).convert("RGB"))


def glass(height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """Empty glass: near-white, faintly tinted, with sensor noise."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    noise = rng.normal(0.0, 2.0, (height, width, 1)).astype(np.float32)
    img[:] = np.clip(np.asarray(GLASS_RGB, np.float32) + noise, 0, 255).astype(np.uint8)
    return img


def tissue_texture(height: int, width: int) -> np.ndarray:
    """The H&E tile mirrored in both directions to cover ``height × width`` without seams."""
    tile = he_tile()
    period = np.concatenate([tile, tile[:, ::-1]], axis=1)
    period = np.concatenate([period, period[::-1]], axis=0)
    reps = (-(-height // period.shape[0]), -(-width // period.shape[1]), 1)
    return np.tile(period, reps)[:height, :width]


def he_on_glass(
    height: int, width: int, boxes: Sequence[tuple[int, int, int, int]], *, seed: int = 0
) -> np.ndarray:
    """Glass with rectangles of tissue; ``boxes`` are (x, y, w, h) in pixels."""
    img = glass(height, width, seed=seed)
    texture = tissue_texture(height, width)
    for x, y, w, h in boxes:
        img[y : y + h, x : x + w] = texture[y : y + h, x : x + w]
    return img


def pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Level 0 and its 2× area-averaged reductions."""
    out = [image]
    for _ in range(levels - 1):
        prev = out[-1]
        h, w = prev.shape[0] // 2 * 2, prev.shape[1] // 2 * 2
        out.append(
            np.rint(downscale_local_mean(prev[:h, :w].astype(np.float32), (2, 2, 1))).astype(
                np.uint8
            )
        )
    return out


def write_pyramid(
    path: Path,
    image: np.ndarray,
    *,
    levels: int = 3,
    tile: int = 256,
    mpp: float | None = 0.25,
    layout: str = "subifds",
    compression: str | None = "jpeg",
    magnification: float | None = 40.0,
) -> Path:
    """Write ``image`` as a tiled pyramidal TIFF; ``mpp`` goes where each layout keeps it."""
    path = Path(path)
    lv = pyramid(image, levels)
    h, w = image.shape[:2]
    opts: dict = {"tile": (tile, tile), "compression": compression, "photometric": "rgb"}
    if compression == "jpeg":
        opts["compressionargs"] = {"level": 90}
    res: dict = {}
    if mpp is not None and layout != "ome":
        res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}

    if layout == "subifds":
        with tifffile.TiffWriter(path, bigtiff=False) as tif:
            tif.write(lv[0], subifds=levels - 1, **opts, **res)
            for k, arr in enumerate(lv[1:], start=1):
                sub_res = {}
                if res:
                    f = 2**k
                    sub_res = {
                        "resolution": (1e4 / (mpp * f), 1e4 / (mpp * f)),  # type: ignore[operator]
                        "resolutionunit": "CENTIMETER",
                    }
                tif.write(arr, subfiletype=1, **opts, **sub_res)
    elif layout == "aperio":
        head = f"Aperio Image Library v12.0.15 \n{w}x{h} ({tile}x{tile}) JPEG/RGB Q=90"
        fields = []
        if magnification is not None:
            fields.append(f"AppMag = {magnification:g}")
        if mpp is not None:
            fields.append(f"MPP = {mpp:.4f}")
        desc = "|".join([head, *fields])
        thumb = lv[-1][::2, ::2]
        with tifffile.TiffWriter(path) as tif:
            tif.write(lv[0], description=desc, metadata=None, **opts)
            tif.write(
                thumb,
                metadata=None,
                description=f"Aperio Image Library v12.0.15 \n{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]}",
                photometric="rgb",
                compression=compression,
            )
            for arr in lv[1:]:
                tif.write(arr, description=desc, metadata=None, **opts)
    elif layout == "ome":
        meta: dict = {"axes": "YXS"}
        if mpp is not None:
            meta.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm",
                        PhysicalSizeYUnit="µm")
        with tifffile.TiffWriter(path, ome=True) as tif:
            tif.write(lv[0], subifds=levels - 1, metadata=meta, **opts)
            for arr in lv[1:]:
                tif.write(arr, subfiletype=1, metadata=None, **opts)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return path


def write_plain_tiff(path: Path, image: np.ndarray, *, mpp: float | None = None) -> Path:
    """A single-level, stripped, uncompressed TIFF (what an image editor writes)."""
    res: dict = {}
    if mpp is not None:
        res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, image, photometric="rgb" if image.ndim == 3 else None, **res)
    return Path(path)
