"""A segmentation run as a generator: yields progress and nucleus batches, returns the run's result.

The same generator serves the CLI (drained in a loop), the Python API and the napari widget (run in a
``thread_worker``, where each ``yield`` is also where a quit request takes effect). Its stages
(``stages.py``) are plan → predict → post-process, with the tile cache (``cache.py``) between predict
and post-process: tiles whose maps are cached are post-processed first, straight from the cache, and
the others are read, predicted and stored. Three stages overlap so the slowest sets the pace: a
read-ahead thread reads and prepares tiles, this thread runs the network, and a process pool
post-processes finished tiles (watershed and polygons are CPU-bound Python/NumPy and would otherwise
hold the GIL against the reader).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, astuple, replace
from typing import Any, TypeVar

import numpy as np
import shapely
import torch

from .cache import TileCache, TileMaps, slide_fingerprint, tile_key
from .focus import Focus
from .measurements import stain_columns
from .model import LoadedModel
from .nuclei import Nuclei
from .planning import least_work_tiling, plan_run
from .predict import PredictOptions, Predictor
from .run_types import (  # re-exported: the engine's public types
    REFERENCE_MPP,  # noqa: F401
    NucleusBatch,
    Progress,
    RunError,
    RunOptions,
    RunResult,
    fit_tiles_to_memory,
    slide_geometry,
    working_geometry,  # noqa: F401
)
from .seams import SeamBook
from .speed import cpu_plan, cuda_batch_size, reader_threads, usable_cores
from .stages import Reader, TileNuclei, TileWork, neighbours, postprocess_tile, predict_batch
from .stain_vectors import StainVectorError, vectors_for_run
from .tiling import (
    Box,
    TileSpec,
    keep_boxes,
    post_window,
)
from .tissue import TissueMask
from .worker_pool import UNGUARDED, discard_worker_pool, shared_worker_pool, starting_worker

log = logging.getLogger(__name__)

_Result = TypeVar("_Result")

def _in_band(polygons: list[Any], spec: TileSpec, scale: float) -> np.ndarray:
    """Which nuclei lie past the tile's own cell (kept from its seam band): centroids in working px."""
    if not polygons:
        return np.zeros(0, bool)
    c = shapely.centroid(np.asarray(polygons, dtype=object))
    x, y = shapely.get_x(c) * scale, shapely.get_y(c) * scale
    o = spec.owned
    return ~((x >= o.x) & (x < o.x + o.w) & (y >= o.y) & (y < o.y + o.h))


def _default_batch_size(model: LoadedModel, tile: int) -> int:
    """One tile at a time on a CPU (a large tile already fills its cores); on CUDA what free memory holds."""
    if model.device.type == "cuda":
        return cuda_batch_size(model.device, tile * tile)
    return 1


def _default_workers(n_tiles: int, device_type: str) -> int:
    """Post-processing worker processes for a run of ``n_tiles`` (``speed.cpu_plan``): none for one tile."""
    return 0 if n_tiles <= 1 else cpu_plan(usable_cores(), device_type)[1]


def segment_slide(
    slide: Any,
    model: LoadedModel,
    regions: Sequence[Box] | None = None,
    options: RunOptions | None = None,
    *,
    tissue: TissueMask | None = None,
    priority: tuple[float, float] | None = None,
    cancel: threading.Event | None = None,
    cache: TileCache | None = None,
    cache_only: bool = False,
    focus: Focus | None = None,
) -> Generator[Progress | NucleusBatch, None, RunResult]:
    """Segment nuclei in level-0 ``regions`` of ``slide`` (all of it, on ``tissue``, when ``None``).

    Yields :class:`NucleusBatch` as tiles finish and :class:`Progress` after each; returns a
    :class:`RunResult`. Setting ``cancel`` (or closing the generator) stops between batches; the
    result then holds every nucleus found so far, with ``cancelled=True``; a Ctrl-C does the same
    with ``interrupted=True``. An error while reading or predicting ends the run with ``error`` set
    instead of losing what was found. With a ``cache``, tiles already predicted (same slide, model,
    geometry, resolution, stain and precision) are not predicted again, and every tile predicted is
    stored as soon as it is done, so a later run resumes or re-thresholds from there.
    ``cache_only`` post-processes the cached tiles and skips the others (a re-threshold that never
    runs the network; skipped tiles are not in ``tiles_done``). With a ``focus``, the tiles left to
    predict are re-sorted nearest to its point (level-0 px) whenever it moves.
    """
    if starting_worker():  # fail the worker: the parent then post-processes in its own process
        raise RunError(UNGUARDED)
    if regions is not None and not len(regions):
        raise RunError("regions is empty: give at least one box, or None for the whole slide")
    if cache_only and cache is None:
        raise RunError("cache_only needs a tile cache")
    options = options or RunOptions()
    options = fit_tiles_to_memory(options, model)
    if options.marker_threshold is None:  # the model's own, recorded in run.json as used
        options = replace(options, marker_threshold=model.marker_threshold)
    geometry = slide_geometry(slide)
    options = least_work_tiling(slide, regions, geometry, options, tissue, multiple=model.config.multiple)
    tiles = plan_run(slide, regions, geometry, options, tissue=tissue, priority=priority, multiple=model.config.multiple)
    post = options.postprocess(geometry.work_mpp)
    try:  # post-processing only: the network's input, and so the cache, stay as they are
        vectors = vectors_for_run(options.stain_vectors, slide, regions, options.stain, tissue) if tiles else None
    except StainVectorError as exc:
        raise RunError(f"{slide.name}: {exc}; measure with the default (scikit-image's) stain vectors instead") from None
    unmix = None if vectors is None else tuple(tuple(float(v) for v in row) for row in vectors.unmix)
    predictor = Predictor(model, PredictOptions(stain=options.stain, precision=options.precision, compile=options.compile, tta=options.tta))
    batch_size = options.batch_size or _default_batch_size(model, tiles[0].input.w if tiles else options.tiling.tile)
    workers = _default_workers(len(tiles), model.device.type) if options.workers is None else options.workers
    nuclei = Nuclei(mpp=geometry.mpp, ihc=options.ihc if options.stain == "ihc_dab" else None,
                    extra_columns=stain_columns(options.stain))
    result = RunResult(
        nuclei=nuclei, tiles=tiles, tiles_done=[], work_mpp=geometry.work_mpp, scale=geometry.scale,
        parameters={
            "slide": str(getattr(slide, "path", slide)), "mpp": geometry.mpp, "work_mpp": geometry.work_mpp,
            "regions": [asdict(r) for r in regions] if regions else None, "model": model.source,
            **{k: v for k, v in asdict(options).items() if k not in ("workers", "read_ahead")},
            "model_sha256": model.sha256, "device": model.device.type, "precision_used": predictor.precision,
            "batch_size": batch_size,
            **({"stain_vectors_used": vectors.record()} if vectors is not None else {}),
        },
    )
    region_boxes = [r.scaled(geometry.scale) for r in regions] if regions else []
    bounds = Box(0, 0, *slide.dimensions)
    work_bounds = bounds.scaled(geometry.scale)
    works: dict[int, TileWork] = {}
    keep = keep_boxes(tiles)
    for spec in tiles:
        earlier = tuple(b for b in region_boxes[: spec.region] if b.intersects(spec.owned))
        window = post_window(spec, options.tiling, work_bounds)
        works[spec.index] = TileWork(spec=spec, window=window, scale=geometry.scale, post=post, exclude=earlier, bounds=bounds,
                                     keep=keep[spec.index], stain=options.stain, unmix=unmix)
    keys: dict[int, str] = {}  # tile -> cache key: everything its maps depend on
    if cache is not None:
        parts = {
            "slide": slide_fingerprint(slide.path, slide.dimensions), "model": model.sha256,
            "work_mpp": round(geometry.work_mpp, 9), "scale": round(geometry.scale, 9),
            "stain": options.stain, "precision": predictor.precision, "device": model.device.type,
            **({"tta": True} if options.tta else {}),  # keys of runs without TTA stay as they were
        }
        keys = {s.index: tile_key(**parts, input=astuple(s.input), window=astuple(works[s.index].window)) for s in tiles}
    cached = {i for i, key in keys.items() if key in cache}  # type: ignore[operator]
    pool: ProcessPoolExecutor | ThreadPoolExecutor | None = None
    if options.workers is None and cached and len(cached) * 2 >= len(tiles):
        # Mostly cached (a resume or a re-threshold): post-processing is all the work. Threads
        # share it at no start-up cost (1.6× on 2 cores; a process pool takes seconds to start).
        workers = usable_cores()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hoverfast-post")
    elif options.workers is None and workers == 0 and len(tiles) > 1:
        # Few cores: one thread post-processes a tile while the network runs the next (torch and
        # scipy release the GIL). On 2 cores, whole slide: 187 % CPU instead of 174 %, 5 % faster;
        # a worker process there is slower (it takes a core from the forward).
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hoverfast-post")
    elif workers > 0:
        pool = shared_worker_pool(workers)  # once per process, started with Ctrl-C blocked: no worker traceback
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hoverfast-cache") if cache is not None else None
    pending: deque[tuple[TileSpec, Future[Any] | TileNuclei, TileMaps]] = deque()
    timings = {"read": 0.0, "forward": 0.0, "postprocess": 0.0, "cache_read": 0.0}
    book = SeamBook(nuclei, neighbours(tiles))  # which tile holds which rows: no seam copies, none lost
    started = time.perf_counter()
    reader: Reader | None = None

    broken: list[bool] = []  # the process pool could not run (workers failed to start)

    def in_process(spec: TileSpec, maps: TileMaps) -> TileNuclei:
        t1 = time.perf_counter()
        out = postprocess_tile(maps, works[spec.index])
        timings["postprocess"] += time.perf_counter() - t1
        return out

    def pool_broke() -> None:
        if not broken:
            broken.append(True)
            log.warning(
                "Post-processing worker processes could not run (a script calling napari-hoverfast needs "
                "`if __name__ == \"__main__\":`); post-processing in this process instead"
            )

    def submit(spec: TileSpec, maps: TileMaps) -> None:
        if pool is not None and not broken:
            try:
                pending.append((spec, pool.submit(postprocess_tile, maps, works[spec.index]), maps))
                return
            except BrokenProcessPool:  # the pool broke before this tile (its workers died starting)
                pool_broke()
        pending.append((spec, in_process(spec, maps), maps))

    def finish(spec: TileSpec, outcome: Any, maps: TileMaps) -> Generator[Progress | NucleusBatch, None, None]:
        try:
            found = outcome.result() if isinstance(outcome, Future) else outcome
        except BrokenProcessPool:
            pool_broke()
            found = in_process(spec, maps)
        result.tiles_done.append(spec.index)
        for batch in book.add(spec.index, found, _in_band(found.polygons, spec, geometry.scale)):
            if len(batch):
                yield NucleusBatch(nuclei=batch, tiles=(spec.index,))
        yield Progress(len(result.tiles_done), len(tiles), len(nuclei), time.perf_counter() - started)

    def drain(limit: int) -> Generator[Progress | NucleusBatch, None, None]:
        while pending and (len(pending) > limit or _ready(pending[0][1])):
            yield from finish(*pending.popleft())

    def cancelled() -> bool:
        return cancel is not None and cancel.is_set()

    threads = torch.get_num_threads()
    if model.device.type == "cpu" and isinstance(pool, ProcessPoolExecutor):
        torch.set_num_threads(max(1, min(threads, usable_cores() - workers)))  # the workers' cores are theirs
    try:
        yield Progress(0, len(tiles), 0, 0.0)  # inside: a run closed here still shuts its pools down
        to_predict = tiles
        if cache is not None:  # cached tiles first, straight to post-processing
            to_predict = []
            for spec in tiles:
                window = works[spec.index].window
                if spec.index not in cached:
                    to_predict.append(spec)
                    continue
                if cancelled():
                    result.cancelled = True
                    break
                t0 = time.perf_counter()
                maps = cache.get(keys[spec.index], (window.h, window.w))
                timings["cache_read"] += time.perf_counter() - t0
                if maps is None:
                    to_predict.append(spec)
                    continue
                result.tiles_cached += 1
                submit(spec, maps)
                yield from drain(2 * max(1, workers))
        if cache_only:
            to_predict = []
        if not result.cancelled and to_predict:
            reader = Reader(slide, _batches(to_predict, batch_size), geometry.scale, geometry.work_mpp, options.stain, options.read_ahead,
                            focus=focus, threads=reader_threads(usable_cores(), model.device.type))
            reader.start()
            for batch_specs, images, pixels in reader.items():
                if cancelled():
                    result.cancelled = True
                    break
                t0 = time.perf_counter()
                windows = [works[spec.index].window for spec in batch_specs]
                maps_list = predict_batch(predictor, images, batch_specs, windows, pixels)
                timings["forward"] += time.perf_counter() - t0
                for spec, maps in zip(batch_specs, maps_list, strict=True):
                    if writer is not None and cache is not None:
                        writer.submit(cache.put, keys[spec.index], maps)
                    submit(spec, maps)
                yield from drain(2 * max(1, workers))
        while pending:
            if cancelled():
                result.cancelled = True
            yield from finish(*pending.popleft())
        for batch in book.flush():
            if len(batch):
                yield NucleusBatch(nuclei=batch, tiles=tuple(sorted(set(batch.tile.tolist()))))
        if cancelled() and len(result.tiles_done) < len(tiles):
            result.cancelled = True
    except GeneratorExit:
        result.cancelled = True
        raise
    except KeyboardInterrupt:
        result.cancelled = result.interrupted = True
        log.warning("Run interrupted: %d of %d tiles done", len(result.tiles_done), len(tiles))
    except (MemoryError, RuntimeError, OSError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log.error("Run stopped: %s", result.error)
    finally:
        if reader is not None:
            reader.close()
            timings["read"] = reader.seconds
        if isinstance(pool, ProcessPoolExecutor):
            for _, outcome, _ in pending:  # a run that ends early gives up its own tiles, not the pool
                if isinstance(outcome, Future):
                    outcome.cancel()
            if broken or result.interrupted:
                discard_worker_pool(pool)
        elif pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if writer is not None:
            writer.shutdown(wait=True)  # every predicted tile reaches the cache: the next run resumes
        torch.set_num_threads(threads)
        result.timings = timings
        result.seconds = time.perf_counter() - started
    return result


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


def run_to_end(generator: Generator[Any, None, _Result]) -> _Result:
    """Drain a run (or job) generator and return its result (for scripts that need no progress)."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value
