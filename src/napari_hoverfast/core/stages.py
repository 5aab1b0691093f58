"""The stages of a run for one tile: read (pixels), predict (pixels → maps), post-process (maps → nuclei).

``pipeline.py`` orders and overlaps them; between predict and post-process every tile's maps are a
:class:`~napari_hoverfast.core.cache.TileMaps` over the tile's post-processing window, stored in the
tile cache when there is one. Everything a post-processing worker needs is in a picklable
:class:`TileWork`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from scipy import ndimage

from .cache import TileMaps
from .focus import Focus, nearest_first
from .measurements import stain_statistics
from .postprocess import PostprocessOptions, instance_labels, labels_to_polygons
from .predict import Predictor, Stain, prepare
from .tiling import Box, TileSpec


@dataclass(frozen=True)
class TileWork:
    """One tile's post-processing: its window, its cell, the regions before it, the slide's bounds."""

    spec: TileSpec
    window: Box
    scale: float
    post: PostprocessOptions
    exclude: tuple[Box, ...]
    bounds: Box
    #: Where a kept nucleus's centroid may be: the cell widened toward its neighbours (``keep_boxes``).
    keep: Box | None = None
    #: Which stains the measurements unmix (``measurements.py``).
    stain: Stain = "he"
    #: The unmixing matrix (3 channels × 2 stains, as rows of tuples) of vectors estimated from the
    #: slide or given (``stain_vectors.py``); ``None``: scikit-image's.
    unmix: tuple[tuple[float, ...], ...] | None = None


@dataclass(frozen=True)
class TileNuclei:
    """One tile's nuclei: level-0 polygons, mean nucleus probability and measurement columns by name."""

    polygons: list[Any]
    probability: np.ndarray
    measurements: dict[str, np.ndarray]

    @classmethod
    def empty(cls) -> TileNuclei:
        return cls([], np.zeros(0, np.float32), {})

    def __len__(self) -> int:
        return len(self.polygons)

    def select(self, keep: np.ndarray) -> TileNuclei:
        """The nuclei where the boolean ``keep`` is true."""
        return TileNuclei([p for p, k in zip(self.polygons, keep, strict=True) if k], np.asarray(self.probability)[keep],
                          {name: values[keep] for name, values in self.measurements.items()})


def predict_batch(predictor: Predictor, images: np.ndarray, specs: Sequence[TileSpec], windows: Sequence[Box],
                  rgb: np.ndarray | None = None) -> list[TileMaps]:
    """Prepared tiles → each tile's maps over its window, as stored (uint8 probability, float16 maps),
    with the tiles' RGB pixels (``rgb``, as read) over the same window for the stain measurements."""
    prob, hv = predictor(images)
    out = []
    for i, (spec, w) in enumerate(zip(specs, windows, strict=True)):
        rows = slice(w.y - spec.input.y, w.y - spec.input.y + w.h)
        cols = slice(w.x - spec.input.x, w.x - spec.input.x + w.w)
        pixels = None if rgb is None else rgb[i, rows, cols]
        out.append(TileMaps.from_float(prob[i, rows, cols], hv[i, :, rows, cols], pixels))
    return out


def postprocess_tile(maps: TileMaps, work: TileWork) -> TileNuclei:
    """One tile's maps → its owned nuclei as level-0 polygons, with their mean nucleus probability and
    stain measurements (from the maps' RGB under each nucleus's label; none without RGB).

    A nucleus is kept when its centroid (working pixels, half-open) lies in the tile's owned cell
    and in no earlier region of the same run.
    """
    prob, hv = maps.as_float()
    post = work.post
    labels = instance_labels(
        prob, hv, marker_threshold=post.marker_threshold, min_marker_px=post.min_marker_px,
        blur_sigma=post.blur_sigma, mask_threshold=post.mask_threshold,
    )
    pairs = post.shape_rule(labels_to_polygons(labels, min_area_px=post.min_area_px, max_area_px=post.max_area_px, simplify=post.simplify))
    if not pairs:
        return TileNuclei.empty()
    ids = np.array([label for label, _ in pairs])
    # Ownership uses the label's pixel centroid: the same in both overlapping tiles when their
    # predictions agree, and independent of polygon simplification.
    centres = np.array(ndimage.center_of_mass(np.ones_like(labels, dtype=np.uint8), labels, ids), dtype=np.float64).reshape(-1, 2)
    w = work.window
    cy = centres[:, 0] + 0.5 + w.y
    cx = centres[:, 1] + 0.5 + w.x
    owned = work.keep or work.spec.owned
    keep = (cx >= owned.x) & (cx < owned.x + owned.w) & (cy >= owned.y) & (cy < owned.y + owned.h)
    for box in work.exclude:
        keep &= ~((cx >= box.x) & (cx < box.x + box.w) & (cy >= box.y) & (cy < box.y + box.h))
    if not keep.any():
        return TileNuclei.empty()
    means = np.asarray(ndimage.mean(prob, labels, ids[keep]), dtype=np.float32)
    unmix = None if work.unmix is None else np.asarray(work.unmix, dtype=np.float64)
    measured = stain_statistics(maps.rgb, labels, ids[keep], work.stain, unmix) if maps.rgb is not None else {}
    polygons = np.array([p for (_, p), k in zip(pairs, keep, strict=True) if k], dtype=object)
    offset = np.array([w.x, w.y], dtype=np.float64)
    polygons = shapely.transform(polygons, lambda xy: (xy + offset) / work.scale)
    # The window stops at the slide's edge in working pixels; rounding to level 0 may overshoot.
    b = work.bounds
    frame = shapely.box(b.x, b.y, b.x + b.w, b.y + b.h)
    outside = ~shapely.contains_properly(frame, polygons)
    if outside.any():
        polygons[outside] = [_largest_part(g) for g in shapely.intersection(polygons[outside], frame)]
        good = np.array([p is not None for p in polygons])
        polygons, means = polygons[good], means[good]
        measured = {name: values[good] for name, values in measured.items()}
    return TileNuclei(list(polygons), means, measured)


def _largest_part(geometry: Any) -> Any:
    parts = [g for g in getattr(geometry, "geoms", [geometry]) if g.geom_type == "Polygon" and not g.is_empty]
    return max(parts, key=lambda g: g.area) if parts else None


def neighbours(tiles: Sequence[TileSpec]) -> dict[int, list[int]]:
    """For each tile, the other tiles whose cells its input reaches (where a seam copy can be)."""
    out: dict[int, list[int]] = {t.index: [] for t in tiles}
    if len(tiles) < 2:
        return out

    def boxes(attr: str) -> np.ndarray:
        corners = np.array([[b.x, b.y, b.x + b.w, b.y + b.h] for b in (getattr(t, attr) for t in tiles)], float)
        return shapely.box(*corners.T)

    src, dst = shapely.STRtree(boxes("owned")).query(boxes("input"), predicate="intersects")
    for i, j in zip(src, dst, strict=True):
        if i != j:
            out[tiles[i].index].append(tiles[j].index)
    return out


class Reader(threading.Thread):
    """Reads and prepares batches of tiles ahead of the network, into a bounded queue."""

    def __init__(self, slide: Any, batches: list[list[TileSpec]], scale: float, work_mpp: float, stain: Stain, depth: int,
                 focus: Focus | None = None, threads: int = 1) -> None:
        super().__init__(name="hoverfast-reader", daemon=True)
        #: Tiles of a batch decoded in parallel (a GPU consumes them faster than one thread decodes).
        self.threads = max(1, threads)
        self.slide = slide
        self.batches = batches
        self.focus = focus
        self.scale = scale
        self.work_mpp = work_mpp
        self.stain = stain
        self.out: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.seconds = 0.0

    def read_tile(self, spec: TileSpec) -> np.ndarray:
        box = spec.input.scaled(1.0 / self.scale)
        pixels = self.slide.read_region(box.x, box.y, box.w, box.h, mpp=self.work_mpp, pad=True)
        if pixels.shape[:2] != (spec.input.h, spec.input.w):
            from skimage.transform import resize

            pixels = (resize(pixels, (spec.input.h, spec.input.w), order=1, preserve_range=True)).astype(np.uint8)
        return pixels

    def run(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        decoders = ThreadPoolExecutor(self.threads, thread_name_prefix="hoverfast-decode") if self.threads > 1 else None
        try:
            for batch in self._ordered():
                if self.stop.is_set():
                    return
                start = time.perf_counter()
                pixels = np.stack(list(decoders.map(self.read_tile, batch)) if decoders else [self.read_tile(spec) for spec in batch])
                images = prepare(pixels, self.stain)
                self.seconds += time.perf_counter() - start
                while not self.stop.is_set():
                    try:
                        self.out.put((batch, images, pixels), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the consumer, which reports it
            self.out.put(exc)
        finally:
            if decoders is not None:
                decoders.shutdown(wait=False, cancel_futures=True)
            self.out.put(None)

    def _ordered(self) -> Generator[list[TileSpec], None, None]:
        """The batches in order, re-sorted nearest to the focus whenever it moved (working px)."""
        left, seen = list(self.batches), 0
        while left:
            if self.focus is not None:
                point, version = self.focus.get()
                if point is not None and version != seen:
                    seen, target = version, (point[0] * self.scale, point[1] * self.scale)
                    left = nearest_first(left, target, lambda batch: batch[0].owned.centre)
            yield left.pop(0)

    def items(self) -> Generator[tuple[list[TileSpec], np.ndarray, np.ndarray], None, None]:
        """(tiles, prepared images, their RGB pixels as read) per batch."""
        while True:
            item = self.out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop reading and unblock the thread if it waits on a full queue."""
        self.stop.set()
        while True:
            try:
                self.out.get_nowait()
            except queue.Empty:
                break
