"""A segmentation run as a generator: yields progress and nucleus batches, returns the run's result.

The same generator serves the CLI (drained in a loop), the Python API and the napari widget (run in a
``thread_worker``, where each ``yield`` is also where a quit request takes effect). Three stages
overlap so the slowest sets the pace: a read-ahead thread reads and prepares tiles, this thread runs
the network, and a process pool post-processes finished tiles (watershed and polygons are CPU-bound
Python/NumPy and would otherwise hold the GIL against the reader).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, astuple, dataclass, field, replace
from typing import Any

import numpy as np
import shapely
from scipy import ndimage

from .duplicates import duplicates_of
from .model import LoadedModel
from .nuclei import Nuclei
from .postprocess import PostprocessOptions, instance_labels, labels_to_polygons
from .predict import Precision, PredictOptions, Predictor, Stain, prepare
from .tiling import Box, TileSpec, TilingOptions, order_by_distance, plan_tiles, post_window
from .tissue import TissueMask, tiles_on_tissue

log = logging.getLogger(__name__)

#: Upstream's reference resolution for 40× (µm per pixel).
REFERENCE_MPP = 0.2425


class RunError(ValueError):
    """A run that cannot start (bad region, missing resolution…); the message says what to change."""


@dataclass(frozen=True)
class RunOptions:
    """Everything that shapes a run besides the slide, the model and the regions."""

    tiling: TilingOptions = field(default_factory=TilingOptions)
    batch_size: int | None = None
    stain: Stain = "he"
    precision: Precision = "auto"
    min_area_um2: float = 5.0
    simplify: float = 6.0
    workers: int | None = None
    read_ahead: int = 2
    assume_mpp: float = 0.25

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise RunError(f"batch size must be at least 1, got {self.batch_size}")
        if self.min_area_um2 < 0:
            raise RunError(f"minimum area must be zero or more, got {self.min_area_um2}")
        PredictOptions(stain=self.stain, precision=self.precision)


@dataclass(frozen=True)
class Progress:
    """Sent after every finished tile."""

    tiles_done: int
    tiles_total: int
    nuclei: int
    seconds: float

    @property
    def eta(self) -> float | None:
        """Seconds left at the pace so far; ``None`` before the first tile."""
        if self.tiles_done == 0:
            return None
        return self.seconds / self.tiles_done * (self.tiles_total - self.tiles_done)


@dataclass(frozen=True)
class NucleusBatch:
    """Nuclei new since the last batch (level-0 coordinates), and the tiles they came from."""

    nuclei: Nuclei
    tiles: tuple[int, ...]


@dataclass
class RunResult:
    """What a run found. ``cancelled``/``error`` say why it ended early; nuclei found so far are kept."""

    nuclei: Nuclei
    tiles: list[TileSpec]
    tiles_done: list[int]
    work_mpp: float
    scale: float
    cancelled: bool = False
    error: str | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.cancelled and self.error is None


@dataclass(frozen=True)
class Geometry:
    """How level-0 pixels map to the working resolution: ``work = level0 · scale``."""

    mpp: float
    work_mpp: float

    @property
    def scale(self) -> float:
        return self.mpp / self.work_mpp


def working_geometry(mpp: float) -> Geometry:
    """Resample by a power of two to reach ≈40×, as upstream: ``40 · 2^round(log2(0.2425 / mpp))``."""
    factor = 2.0 ** round(math.log2(mpp / REFERENCE_MPP))
    geometry = Geometry(mpp=mpp, work_mpp=mpp / factor)
    if factor > 1:
        log.warning(
            "Slide resolution %.3f µm/px is coarser than 40×: upsampling ×%g to %.3f µm/px (upstream HoverFast refuses such slides)",
            mpp, factor, geometry.work_mpp,
        )
    return geometry


def _slide_geometry(slide: Any, options: RunOptions, whole_slide: bool) -> Geometry:
    mpp = slide.mpp
    if mpp is None:
        if whole_slide:
            raise RunError(f"{slide.name} has no resolution (µm per pixel) in its metadata: give one (--mpp)")
        log.warning("%s has no resolution in its metadata: assuming %.3f µm/px (40×); pass --mpp to set it", slide.name, options.assume_mpp)
        mpp = options.assume_mpp
    return working_geometry(float(mpp))


def _check_region(region: Box, dimensions: tuple[int, int], name: str) -> Box:
    width, height = dimensions
    x0, y0 = max(region.x, 0), max(region.y, 0)
    x1, y1 = min(region.x + region.w, width), min(region.y + region.h, height)
    if x1 <= x0 or y1 <= y0:
        raise RunError(
            f"Region x={region.x}, y={region.y}, w={region.w}, h={region.h} lies outside {name} ({width}×{height} px)"
        )
    return Box(x0, y0, x1 - x0, y1 - y0)


def plan_run(
    slide: Any,
    regions: Sequence[Box] | None,
    geometry: Geometry,
    options: RunOptions,
    *,
    tissue: TissueMask | None = None,
    priority: tuple[float, float] | None = None,
) -> list[TileSpec]:
    """Tiles in working pixels for the given level-0 regions, or for the tissue of the whole slide."""
    multiple = 8
    if regions:
        tiles: list[TileSpec] = []
        for number, region in enumerate(regions):
            clipped = _check_region(region, slide.dimensions, slide.name)
            tiles += plan_tiles(
                clipped.scaled(geometry.scale), options.tiling, multiple=multiple, first_index=len(tiles), region_index=number
            )
    else:
        width, height = slide.dimensions
        whole = Box(0, 0, width, height).scaled(geometry.scale)
        tiles = plan_tiles(whole, options.tiling, multiple=multiple)
        if tissue is not None:
            boxes = [astuple(t.owned.scaled(1.0 / geometry.scale)) for t in tiles]
            tiles = [t for t, keep in zip(tiles, tiles_on_tissue(tissue, boxes)) if keep]
            tiles = [TileSpec(i, t.input, t.owned, t.region) for i, t in enumerate(tiles)]
    if priority is not None:
        tiles = order_by_distance(tiles, (priority[0] * geometry.scale, priority[1] * geometry.scale))
    return tiles


@dataclass(frozen=True)
class _TileJob:
    """What a post-processing worker needs for one tile (picklable)."""

    spec: TileSpec
    scale: float
    post: PostprocessOptions
    exclude: tuple[Box, ...]
    bounds: Box
    window: Box


def postprocess_tile(prob: np.ndarray, hv: np.ndarray, job: _TileJob) -> tuple[list[Any], np.ndarray]:
    """One tile's maps → its owned nuclei as level-0 polygons, with mean nucleus probability.

    Only the tile's post-processing window (valid context: no zero-padding border, nothing outside
    the slide) is segmented. A nucleus is kept when its centroid (working pixels, half-open) lies in
    the tile's owned cell and in no earlier region of the same run.
    """
    post = job.post
    w, i = job.window, job.spec.input
    rows = slice(w.y - i.y, w.y - i.y + w.h)
    cols = slice(w.x - i.x, w.x - i.x + w.w)
    prob, hv = prob[rows, cols], hv[:, rows, cols]
    labels = instance_labels(
        prob, hv, marker_threshold=post.marker_threshold, min_marker_px=post.min_marker_px,
        blur_sigma=post.blur_sigma, mask_threshold=post.mask_threshold,
    )
    min_area_px = post.min_area_um2 / (post.mpp * post.mpp)
    pairs = labels_to_polygons(labels, min_area_px=min_area_px, simplify=post.simplify)
    if not pairs:
        return [], np.zeros(0, np.float32)
    ids = np.array([label for label, _ in pairs])
    # Ownership uses the label's pixel centroid: the same in both overlapping tiles when their
    # predictions agree, and independent of polygon simplification.
    centres = np.array(ndimage.center_of_mass(np.ones_like(labels, dtype=np.uint8), labels, ids), dtype=np.float64).reshape(-1, 2)
    cy = centres[:, 0] + 0.5 + w.y
    cx = centres[:, 1] + 0.5 + w.x
    owned = job.spec.owned
    keep = (cx >= owned.x) & (cx < owned.x + owned.w) & (cy >= owned.y) & (cy < owned.y + owned.h)
    for box in job.exclude:
        keep &= ~((cx >= box.x) & (cx < box.x + box.w) & (cy >= box.y) & (cy < box.y + box.h))
    if not keep.any():
        return [], np.zeros(0, np.float32)
    means = np.asarray(ndimage.mean(prob, labels, ids[keep]), dtype=np.float32)
    polygons = np.array([p for (_, p), k in zip(pairs, keep) if k], dtype=object)
    offset = np.array([w.x, w.y], dtype=np.float64)
    polygons = shapely.transform(polygons, lambda xy: (xy + offset) / job.scale)
    # Context outside the slide is reflected pixels: nothing found there is real.
    b = job.bounds
    outside = ~shapely.contains_properly(shapely.box(b.x, b.y, b.x + b.w, b.y + b.h), polygons)
    if outside.any():
        clipped = shapely.intersection(polygons[outside], shapely.box(b.x, b.y, b.x + b.w, b.y + b.h))
        polygons[outside] = [_largest_part(g) for g in clipped]
        good = np.array([p is not None for p in polygons])
        polygons, means = polygons[good], means[good]
    return list(polygons), means


def _largest_part(geometry: Any) -> Any:
    parts = [g for g in getattr(geometry, "geoms", [geometry]) if g.geom_type == "Polygon" and not g.is_empty]
    return max(parts, key=lambda g: g.area) if parts else None


class _Reader(threading.Thread):
    """Reads and prepares batches of tiles ahead of the network, into a bounded queue."""

    def __init__(self, slide: Any, batches: list[list[TileSpec]], geometry: Geometry, stain: Stain, depth: int) -> None:
        super().__init__(name="hoverfast-reader", daemon=True)
        self.slide = slide
        self.batches = batches
        self.geometry = geometry
        self.stain = stain
        self.out: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.seconds = 0.0

    def read_tile(self, spec: TileSpec) -> np.ndarray:
        box = spec.input.scaled(1.0 / self.geometry.scale)
        native = self.slide.mpp is None  # assumed resolution: read pixels as they are
        pixels = self.slide.read_region(box.x, box.y, box.w, box.h, mpp=None if native else self.geometry.work_mpp, pad=True)
        if pixels.shape[:2] != (spec.input.h, spec.input.w):
            from skimage.transform import resize

            pixels = (resize(pixels, (spec.input.h, spec.input.w), order=1, preserve_range=True)).astype(np.uint8)
        return pixels

    def run(self) -> None:
        try:
            for batch in self.batches:
                if self.stop.is_set():
                    return
                start = time.perf_counter()
                images = prepare(np.stack([self.read_tile(spec) for spec in batch]), self.stain)
                self.seconds += time.perf_counter() - start
                while not self.stop.is_set():
                    try:
                        self.out.put((batch, images), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the consumer, which reports it
            self.out.put(exc)
        finally:
            self.out.put(None)

    def items(self) -> Generator[tuple[list[TileSpec], np.ndarray], None, None]:
        while True:
            item = self.out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def _default_batch_size(model: LoadedModel, tile: int) -> int:
    if model.device.type == "cuda":
        return max(1, int(8 * (1024 / tile) ** 2))
    return 1


def _default_workers(n_tiles: int) -> int:
    if n_tiles <= 1:
        return 0
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def segment_slide(
    slide: Any,
    model: LoadedModel,
    regions: Sequence[Box] | None = None,
    options: RunOptions | None = None,
    *,
    tissue: TissueMask | None = None,
    priority: tuple[float, float] | None = None,
    cancel: threading.Event | None = None,
) -> Generator[Progress | NucleusBatch, None, RunResult]:
    """Segment nuclei in level-0 ``regions`` of ``slide`` (all of it, on ``tissue``, when ``None``).

    Yields :class:`NucleusBatch` as tiles finish and :class:`Progress` after each; returns a
    :class:`RunResult`. Setting ``cancel`` (or closing the generator) stops between batches; the
    result then holds every nucleus found so far, with ``cancelled=True``. An error while reading or
    predicting ends the run with ``error`` set instead of losing what was found.
    """
    options = options or RunOptions()
    options = replace(options, tiling=options.tiling.resolved(model.config.padding_reach))
    geometry = _slide_geometry(slide, options, whole_slide=not regions)
    tiles = plan_run(slide, regions, geometry, options, tissue=tissue, priority=priority)
    post = PostprocessOptions(mpp=geometry.work_mpp, min_area_um2=options.min_area_um2, simplify=options.simplify)
    predictor = Predictor(model, PredictOptions(stain=options.stain, precision=options.precision))
    batch_size = options.batch_size or _default_batch_size(model, options.tiling.tile)
    workers = _default_workers(len(tiles)) if options.workers is None else options.workers
    nuclei = Nuclei(mpp=geometry.mpp)
    result = RunResult(
        nuclei=nuclei, tiles=tiles, tiles_done=[], work_mpp=geometry.work_mpp, scale=geometry.scale,
        parameters={
            "slide": str(getattr(slide, "path", slide)), "mpp": geometry.mpp, "work_mpp": geometry.work_mpp,
            "regions": [asdict(r) for r in regions] if regions else None, "model": model.source,
            **{k: v for k, v in asdict(options).items() if k not in ("workers", "read_ahead")},
            "model_sha256": model.sha256, "device": model.device.type, "batch_size": batch_size,
        },
    )
    region_boxes = [r.scaled(geometry.scale) for r in regions] if regions else []
    bounds = Box(0, 0, *slide.dimensions)
    work_bounds = bounds.scaled(geometry.scale)
    jobs: dict[int, _TileJob] = {}
    for spec in tiles:
        earlier = tuple(b for b in region_boxes[: spec.region] if b.intersects(spec.owned))
        window = post_window(spec, options.tiling, work_bounds)
        jobs[spec.index] = _TileJob(spec=spec, scale=geometry.scale, post=post, exclude=earlier, bounds=bounds, window=window)
    batches = _batches(tiles, batch_size)
    reader = _Reader(slide, batches, geometry, options.stain, options.read_ahead)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) if workers > 0 else None
    pending: deque[tuple[TileSpec, Future[Any] | tuple[list[Any], np.ndarray]]] = deque()
    timings = {"read": 0.0, "forward": 0.0, "postprocess": 0.0}
    started = time.perf_counter()
    reader.start()

    neighbours = _neighbours(tiles)
    rows: dict[int, tuple[int, int]] = {}  # tile -> its nuclei's rows in the container

    def finish(spec: TileSpec, outcome: Any) -> Generator[Progress | NucleusBatch, None, None]:
        polygons, probability = outcome.result() if isinstance(outcome, Future) else outcome
        polygons, probability = _drop_seam_copies(nuclei, rows, neighbours[spec.index], polygons, probability)
        start = len(nuclei)
        batch = nuclei.append(polygons, probability, spec.index)
        rows[spec.index] = (start, len(nuclei))
        result.tiles_done.append(spec.index)
        if len(batch):
            yield NucleusBatch(nuclei=batch, tiles=(spec.index,))
        yield Progress(len(result.tiles_done), len(tiles), len(nuclei), time.perf_counter() - started)

    yield Progress(0, len(tiles), 0, 0.0)
    try:
        for batch_specs, images in reader.items():
            if cancel is not None and cancel.is_set():
                result.cancelled = True
                break
            t0 = time.perf_counter()
            prob, hv = predictor(images)
            timings["forward"] += time.perf_counter() - t0
            for i, spec in enumerate(batch_specs):
                if pool is not None:
                    pending.append((spec, pool.submit(postprocess_tile, prob[i], hv[i], jobs[spec.index])))
                else:
                    t1 = time.perf_counter()
                    pending.append((spec, postprocess_tile(prob[i], hv[i], jobs[spec.index])))
                    timings["postprocess"] += time.perf_counter() - t1
            limit = 2 * max(1, workers)
            while pending and (len(pending) > limit or _ready(pending[0][1])):
                yield from finish(*pending.popleft())
        while pending:
            if cancel is not None and cancel.is_set():
                result.cancelled = True
            yield from finish(*pending.popleft())
        if cancel is not None and cancel.is_set() and len(result.tiles_done) < len(tiles):
            result.cancelled = True
    except GeneratorExit:
        result.cancelled = True
        raise
    except (MemoryError, RuntimeError, OSError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log.error("Run stopped: %s", result.error)
    finally:
        reader.stop.set()
        while True:  # unblock the reader if it waits on a full queue
            try:
                reader.out.get_nowait()
            except queue.Empty:
                break
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        timings["read"] = reader.seconds
        result.timings = timings
        result.seconds = time.perf_counter() - started
    return result


def _neighbours(tiles: Sequence[TileSpec]) -> dict[int, list[int]]:
    """For each tile, the other tiles whose cells its input reaches (where a seam copy can be)."""
    def boxes(attr: str) -> np.ndarray:
        return shapely.box(*np.array([[b.x, b.y, b.x + b.w, b.y + b.h] for b in (getattr(t, attr) for t in tiles)], float).T)

    out: dict[int, list[int]] = {t.index: [] for t in tiles}
    if len(tiles) < 2:
        return out
    # predicate "intersects" on open boxes would also pair cells that only share an edge: harmless
    src, dst = shapely.STRtree(boxes("owned")).query(boxes("input"), predicate="intersects")
    for i, j in zip(src, dst):
        if i != j:
            out[tiles[i].index].append(tiles[j].index)
    return out


def _drop_seam_copies(
    nuclei: Nuclei, rows: dict[int, tuple[int, int]], neighbours: list[int], polygons: list[Any], probability: np.ndarray
) -> tuple[list[Any], np.ndarray]:
    """A finished tile's nuclei without those a finished neighbour already holds (see ``duplicates.py``)."""
    done = [rows[i] for i in neighbours if i in rows and rows[i][1] > rows[i][0]]
    if not polygons or not done:
        return polygons, probability
    old = np.concatenate([nuclei.polygons[a:b] for a, b in done])
    copy = duplicates_of(np.asarray(polygons, dtype=object), old)
    if copy.any():
        log.debug("%d nucleus outline(s) already found by a neighbouring tile", int(copy.sum()))
        polygons = [p for p, c in zip(polygons, copy) if not c]
        probability = np.asarray(probability)[~copy]
    return polygons, probability


def _ready(outcome: Any) -> bool:
    return not isinstance(outcome, Future) or outcome.done()


def _batches(tiles: Sequence[TileSpec], size: int) -> list[list[TileSpec]]:
    """Consecutive tiles grouped by input size (tiles of different regions may differ)."""
    batches: list[list[TileSpec]] = []
    for spec in tiles:
        if batches and len(batches[-1]) < size and (batches[-1][0].input.w, batches[-1][0].input.h) == (spec.input.w, spec.input.h):
            batches[-1].append(spec)
        else:
            batches.append([spec])
    return batches


def run_to_end(generator: Generator[Progress | NucleusBatch, None, RunResult]) -> RunResult:
    """Drain a run generator and return its result (for scripts that need no progress)."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value
