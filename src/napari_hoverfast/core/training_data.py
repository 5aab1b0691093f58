"""Annotated tiles for training: loading, patch sampling and augmentation.

A data folder holds ``images/NAME.png|tif`` and either ``masks/NAME.png|tif|npy`` (instance label
images, 0 = background) or ``NAME.geojson`` QuPath annotations beside the image (or in ``masks/``).
Augmentation is chosen for generalisation beyond the training tissue: flips and 90° rotations,
scale jitter, haematoxylin/eosin (HED) and brightness/contrast/saturation jitter, blur and a
resolution drop that mimics 20× scans upsampled to the 40× working resolution. Optionally an H&E
patch is redrawn as haematoxylin only, the way IHC tiles reach the network
(:func:`~napari_hoverfast.core.ihc.haematoxylin_like`), so the model keeps its IHC nuclei.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import color, io
from skimage.draw import polygon as draw_polygon
from skimage.transform import resize

from .ihc import haematoxylin_image
from .measurements import stain_od
from .targets import hv_maps, relabel_sequential

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".npy")


class TrainingDataError(ValueError):
    """A training folder that cannot be read; the message names the file."""


@dataclass(frozen=True, eq=False)
class AnnotatedTile:
    """One image with its instance labels (compared by identity: its fields are arrays)."""

    name: str
    image: np.ndarray  # H×W×3 uint8
    labels: np.ndarray  # H×W int32, 0 = background
    #: The folder (data set) the tile came from: batches draw sets equally, so a set of many small
    #: tiles does not drown one of few large ones.
    source: str = ""


@dataclass(frozen=True)
class AugmentOptions:
    """Augmentation strengths; zero disables a transform."""

    scale_range: tuple[float, float] = (0.8, 1.25)
    hed_sigma: float = 0.05
    hed_bias: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.15
    saturation: float = 0.2
    blur_probability: float = 0.2
    lowres_probability: float = 0.2
    #: Re-encode as JPEG at a random quality (30–90): slides are JPEG-compressed tiles.
    jpeg_probability: float = 0.2
    #: Redraw the patch as haematoxylin only, as IHC input is (0: never; upstream's recipe has no IHC).
    haematoxylin_only_probability: float = 0.0
    #: Its ranges: OD gain, OD background removed, OD cap. They bracket what ``haematoxylin_like``
    #: makes of the shared Ki67 tiles (nuclei median OD 0.34–0.49, background 0.12, cap 0.8) from
    #: H&E nuclei whose haematoxylin OD medians run from 0.25 (CoNSeP) to 0.85 (gbm40).
    haematoxylin_gain: tuple[float, float] = (0.7, 2.0)
    haematoxylin_background: tuple[float, float] = (0.0, 0.1)
    haematoxylin_cap: tuple[float, float] = (0.6, 1.2)

    def __post_init__(self) -> None:
        if not 0.0 <= self.haematoxylin_only_probability <= 1.0:
            raise ValueError(f"haematoxylin_only_probability must lie in [0, 1], got {self.haematoxylin_only_probability}")


def _labels_from_geojson(path: Path, shape: tuple[int, int]) -> np.ndarray:
    from .geojson import read_geojson

    labels = np.zeros(shape, np.int32)
    for index, obj in enumerate(read_geojson(path), start=1):
        geoms = getattr(obj.geometry, "geoms", [obj.geometry])
        for geom in geoms:
            xy = np.asarray(geom.exterior.coords)
            # Pixel (r, c) covers [c, c+1]×[r, r+1]: test pixel centres against the polygon.
            rr, cc = draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)
            labels[rr, cc] = index
    return labels


def _read_mask(path: Path) -> np.ndarray:
    data = np.load(path) if path.suffix == ".npy" else io.imread(path)
    data = np.asarray(data)
    if data.ndim == 3:
        raise TrainingDataError(f"{path}: a mask must be a single-channel label image, got shape {data.shape}")
    return relabel_sequential(data)


def _find(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    for suffix in suffixes:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_folder(folder: str | Path) -> list[AnnotatedTile]:
    """All annotated tiles of one folder, sorted by name."""
    folder = Path(folder)
    images_dir = folder / "images"
    if not images_dir.is_dir():
        raise TrainingDataError(f"{folder} has no images/ folder (expected images/*.png with masks/*.png of the same name)")
    tiles = []
    for image_path in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        stem = image_path.stem
        image = np.asarray(io.imread(image_path))
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        image = image[..., :3].astype(np.uint8)
        mask_path = _find(folder / "masks", stem, MASK_SUFFIXES)
        geojson_path = _find(folder, stem, (".geojson", ".json")) or _find(folder / "masks", stem, (".geojson", ".json"))
        if mask_path is not None:
            labels = _read_mask(mask_path)
        elif geojson_path is not None:
            labels = _labels_from_geojson(geojson_path, image.shape[:2])
        else:
            raise TrainingDataError(f"{image_path}: no mask (masks/{stem}.png|tif|npy) and no {stem}.geojson")
        if labels.shape != image.shape[:2]:
            raise TrainingDataError(f"{image_path}: mask shape {labels.shape} differs from image shape {image.shape[:2]}")
        tiles.append(AnnotatedTile(name=stem, image=image, labels=labels, source=folder.name))
    if not tiles:
        raise TrainingDataError(f"{images_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    log.info("Loaded %d annotated tiles from %s", len(tiles), folder)
    return tiles


def _hed_jitter(rgb: np.ndarray, rng: np.random.Generator, opts: AugmentOptions) -> np.ndarray:
    hed = color.rgb2hed(rgb)
    alpha = rng.normal(1.0, opts.hed_sigma, size=3)
    beta = rng.normal(0.0, opts.hed_bias, size=3) * np.array([0.05, 0.05, 0.02])
    return np.clip(color.hed2rgb(hed * alpha + beta), 0.0, 1.0)


def _colour_jitter(rgb: np.ndarray, rng: np.random.Generator, opts: AugmentOptions) -> np.ndarray:
    if opts.hed_sigma > 0 and rng.random() < 0.8:
        rgb = _hed_jitter(rgb, rng, opts)
    if opts.saturation > 0:
        grey = rgb.mean(axis=-1, keepdims=True)
        rgb = grey + (rgb - grey) * rng.uniform(1 - opts.saturation, 1 + opts.saturation)
    if opts.contrast > 0:
        mean = rgb.mean()
        rgb = mean + (rgb - mean) * rng.uniform(1 - opts.contrast, 1 + opts.contrast)
    if opts.brightness > 0:
        rgb = rgb + rng.uniform(-opts.brightness, opts.brightness)
    return np.clip(rgb, 0.0, 1.0)


def sample_patch(
    tile: AnnotatedTile, size: int, rng: np.random.Generator, opts: AugmentOptions | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A random augmented patch: float32 3×size×size image in [0, 1] and int32 size×size labels."""
    opts = opts or AugmentOptions()
    h, w = tile.labels.shape
    scale = float(np.exp(rng.uniform(*np.log(opts.scale_range)))) if opts.scale_range != (1.0, 1.0) else 1.0
    src = min(int(round(size / scale)), h, w)
    y = int(rng.integers(0, h - src + 1))
    x = int(rng.integers(0, w - src + 1))
    image = tile.image[y : y + src, x : x + src].astype(np.float32) / 255.0
    labels = tile.labels[y : y + src, x : x + src]
    if src != size:
        image = resize(image, (size, size), order=1, anti_aliasing=src > size, preserve_range=True).astype(np.float32)
        labels = resize(labels, (size, size), order=0, anti_aliasing=False, preserve_range=True).astype(np.int32)
    k = int(rng.integers(0, 4))
    image, labels = np.rot90(image, k), np.rot90(labels, k)
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    image = _colour_jitter(np.ascontiguousarray(image, dtype=np.float64), rng, opts)
    if rng.random() < opts.haematoxylin_only_probability:
        image = _haematoxylin_only(image, rng, opts)
    if rng.random() < opts.lowres_probability:
        small = resize(image, (size // 2, size // 2), order=1, anti_aliasing=True)
        image = resize(small, (size, size), order=1)
    elif rng.random() < opts.blur_probability:
        image = ndimage.gaussian_filter(image, sigma=(rng.uniform(0.3, 1.2),) * 2 + (0,))
    if rng.random() < opts.jpeg_probability:
        image = _jpeg(image, int(rng.integers(30, 91)))
    labels = np.ascontiguousarray(labels)
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32), labels


def _haematoxylin_only(rgb: np.ndarray, rng: np.random.Generator, opts: AugmentOptions) -> np.ndarray:
    """An H&E patch (float [0, 1]) as a haematoxylin-only image with random gain, background and cap."""
    h = stain_od(np.round(rgb * 255.0).astype(np.uint8), "he")[..., 0]
    h = rng.uniform(*opts.haematoxylin_gain) * np.maximum(h - rng.uniform(*opts.haematoxylin_background), 0.0)
    np.minimum(h, rng.uniform(*opts.haematoxylin_cap), out=h)
    return haematoxylin_image(h).astype(np.float64)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """The image after a JPEG round trip at ``quality``: the block artefacts of compressed slides."""
    import io as _io

    from PIL import Image

    buffer = _io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer), dtype=np.float64) / 255.0


def tile_weights(tiles: Sequence[AnnotatedTile], set_weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Sampling probability per tile: each source (data set) equally unless ``set_weights`` gives a
    set's share (relative; sets not named weigh 1), tiles of a set by area."""
    areas = np.array([t.labels.size for t in tiles], dtype=np.float64)
    sources = [t.source for t in tiles]
    weights = np.empty_like(areas)
    for source in set(sources):
        members = np.array([s == source for s in sources])
        share = 1.0 if set_weights is None else float(set_weights.get(source, 1.0))
        weights[members] = share * areas[members] / areas[members].sum()
    return weights / weights.sum()


def make_batch(
    tiles: Sequence[AnnotatedTile], batch_size: int, size: int, rng: np.random.Generator, opts: AugmentOptions | None = None,
    set_weights: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images N×3×S×S, nucleus masks N×S×S (int64) and HV maps N×2×S×S; sets drawn equally or by
    ``set_weights`` (`tile_weights`)."""
    picks = rng.choice(len(tiles), size=batch_size, p=tile_weights(tiles, set_weights))
    images, masks, maps = [], [], []
    for index in picks:
        image, labels = sample_patch(tiles[index], size, rng, opts)
        labels = _split_fragments(labels)
        images.append(image)
        masks.append((labels > 0).astype(np.int64))
        maps.append(hv_maps(labels))
    return np.stack(images), np.stack(masks), np.stack(maps)


def _split_fragments(labels: np.ndarray) -> np.ndarray:
    """Keep, for each label cut by the crop border, only its largest connected piece.

    HV targets assume one connected region per label; border crops can split a nucleus in two.
    """
    out = labels.copy()
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        own = labels[sl] == index
        parts, n = ndimage.label(own)
        if n > 1:
            sizes = ndimage.sum_labels(own, parts, index=np.arange(1, n + 1))
            keep = parts == (int(np.argmax(sizes)) + 1)
            region = out[sl]
            region[own & ~keep] = 0
    return out
