"""The widget's runs: one at a time, in a worker thread, their batches shown in the nuclei layer.

A :class:`Job` is what one press of Run (or one re-threshold) does: the engine's
:class:`~napari_hoverfast.core.job.SlideJob` (a re-threshold re-runs every earlier job of the layer
from the tile cache), run by the engine's one runner. :class:`RunSession` runs it in a napari
``thread_worker`` (or drains it on the main thread when ``synchronous``, as stardist-napari does for
deterministic tests) and hands what it yields to a :class:`Run`, which

- coalesces batches: adding to a Shapes layer costs time in proportion to the layer's size (napari
  rebuilds its mesh), so the layer is updated at most every :data:`FLUSH_MIN_SECONDS`, and no
  sooner than :data:`FLUSH_BUSY_RATIO` × the last update's cost: the viewer stays idle most of the time;
- skips nuclei earlier runs on the layer already found (``_novel.py``);
- keeps the counts the status shows (this run, per region, from the cache) and records each engine
  run in the layer's metadata (parameters, tiles done, areas covered).

Tests and ``benchmarks/bench_layer.py`` feed a run themselves: :meth:`RunSession.begin`, then
:meth:`Run.receive` and :meth:`Run.finish`. No widget here; the form listens through :class:`SessionListener`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ._display import NucleiDisplay
from ._edits import append_copy, empty_like
from ._layers import has_layer
from ._novel import covered_boxes, novel_nuclei
from .core.cache import TileCache
from .core.focus import Focus
from .core.job import SlideJob, run_slide_job
from .core.nuclei import Nuclei
from .core.pipeline import NucleusBatch, Progress, RunResult
from .core.tissue import TissueMask

#: Batches are shown together at most every FLUSH_MIN_SECONDS, and no sooner than FLUSH_BUSY_RATIO
#: times the last layer update took (so updates take at most ~1/FLUSH_BUSY_RATIO of the time).
FLUSH_MIN_SECONDS = 0.25
FLUSH_BUSY_RATIO = 4.0


@dataclass
class Job:
    """One press of Run, or one re-threshold: engine jobs run one after another into one layer.

    ``tissue`` gives the slide's tissue mask (found once per slide, in the worker thread);
    ``cache_only`` never runs the network (tiles not in the cache are skipped); ``retune`` replaces
    the layer's engine-made nuclei by the result (a re-threshold) instead of adding to them.
    """

    slide_jobs: tuple[SlideJob, ...]
    model: Any
    cache: TileCache | None = None
    tissue: Callable[[str, float | None], TissueMask] | None = None
    cache_only: bool = False
    retune: bool = False
    focus: Focus | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class JobDone:
    """Yielded after each engine job of a :class:`Job`: its result."""

    slide_job: SlideJob
    result: RunResult


def run_job(job: Job) -> Generator[Progress | NucleusBatch | JobDone, None, None]:
    """The engine's one runner (``core/job.py``) for each of the job's engine jobs, in the worker thread."""
    for slide_job in job.slide_jobs:
        tissue = job.tissue(slide_job.slide, slide_job.mpp) if slide_job.skip_glass and job.tissue else None
        done = yield from run_slide_job(slide_job, model=job.model, cancel=job.cancel, cache=job.cache, tissue=tissue,
                                        cache_only=job.cache_only, focus=job.focus)
        yield JobDone(slide_job, done.run)
        if not done.run.complete:
            return


class Run:
    """One run into one nuclei layer: batches coalesced, earlier nuclei skipped, counts kept."""

    def __init__(self, display: NucleiDisplay, job: Job | None = None) -> None:
        self.display, self.layer, self.job = display, display.layer, job
        self.retune = job is not None and job.retune
        nuclei = display.nuclei
        self.earlier = Nuclei(nuclei.mpp) if self.retune else nuclei.select(np.ones(len(nuclei), dtype=bool))
        self.covered = np.empty((0, 4)) if self.retune else covered_boxes(self.layer)
        self.kept: Nuclei | None = Nuclei(nuclei.mpp) if self.retune else None  # a re-threshold's nuclei, shown at the end
        self.added = self.duplicates = self.tiles_done = self.tiles_total = self.tiles_cached = 0
        self.per_region: Counter[int] = Counter()
        self.results: list[RunResult] = []
        self.error: str | None = None
        self.started = time.perf_counter()
        self.pending: Nuclei | None = None  # batches received but not yet shown
        self.flushed_at = -math.inf  # the first batch is shown at once
        self.flush_cost = 0.0
        self._tiles: Counter[int] = Counter()  # nuclei added per tile of the engine job running
        self._coverage: list[list[float]] = []

    @property
    def pending_count(self) -> int:
        """Nuclei received and not yet in the layer."""
        return 0 if self.pending is None else len(self.pending)

    @property
    def cancelled(self) -> bool:
        return any(r.cancelled for r in self.results) or (self.job is not None and self.job.cancel.is_set())

    def receive(self, item: Progress | NucleusBatch | JobDone) -> Progress | None:
        """Take what the engine yielded; returns it when it is progress to show."""
        if isinstance(item, NucleusBatch):
            if self.pending is None:
                self.pending = empty_like(item.nuclei)
            self.pending.extend(item.nuclei)  # a run's batches have unique ids: columns copied, not recomputed
            if time.perf_counter() - self.flushed_at >= max(FLUSH_MIN_SECONDS, FLUSH_BUSY_RATIO * self.flush_cost):
                self.flush()
            return None
        if isinstance(item, JobDone):
            self.flush()
            self._record(item)
            return None
        self.tiles_done, self.tiles_total = item.tiles_done, item.tiles_total
        return item

    def flush(self) -> None:
        """Add the batches received since the last update to the layer (if it is still shown)."""
        pending, self.pending = self.pending, None
        start = time.perf_counter()
        if pending is not None and len(pending) and has_layer(self.display.viewer.layers, self.layer):
            keep = novel_nuclei(pending, self.earlier, self.covered)
            self.duplicates += int((~keep).sum())
            fresh = pending.select(keep)
            if len(fresh):
                if self.kept is not None and not len(self.kept):
                    self.kept = empty_like(fresh)  # the engine's columns
                added = append_copy(self.kept, fresh) if self.kept is not None else self.display.add(fresh)
                self.added += len(added)
                self._tiles.update(added.tile.tolist())
        self.flushed_at = time.perf_counter()
        self.flush_cost = self.flushed_at - start

    def _record(self, done: JobDone) -> None:
        """One engine job ended: its tiles count as covered for the next, and the layer records it."""
        result = done.result
        self.results.append(result)
        self.tiles_cached += result.tiles_cached
        region_of = {t.index: t.region for t in result.tiles}
        for tile, count in self._tiles.items():
            self.per_region[region_of.get(tile, 0)] += count
        self._tiles.clear()
        finished = set(result.tiles_done)
        boxes = [[t.owned.x / result.scale, t.owned.y / result.scale, t.owned.w / result.scale, t.owned.h / result.scale]
                 for t in result.tiles if t.index in finished]
        cached = self.job is not None and self.job.cache is not None
        self._coverage += [[*b, 2 if cached else 1] for b in boxes]
        if boxes:
            new = np.asarray(boxes, dtype=np.float64)
            self.covered = np.vstack([self.covered, np.c_[new[:, :2], new[:, :2] + new[:, 2:]]])
        nuclei = self.kept if self.kept is not None else self.display.nuclei
        self.earlier = nuclei.select(np.ones(len(nuclei), dtype=bool))  # a snapshot: what the next job must not repeat
        metadata = self.layer.metadata
        summary = {
            "run": dict(result.parameters), "cancelled": result.cancelled, "error": result.error,
            "tiles_done": list(result.tiles_done), "tiles_done_level0": boxes, "tiles_total": len(result.tiles),
            "tiles_cached": result.tiles_cached, "nuclei_found": len(result.nuclei), "nuclei_added": self.added,
            "duplicates_skipped": self.duplicates, "seconds": round(result.seconds, 3),
        }
        metadata.update(summary)
        if not self.retune:
            metadata["covered"] = list(metadata.get("covered", [])) + boxes
            metadata["coverage"] = list(metadata.get("coverage", [])) + [[*b, 2 if cached else 1] for b in boxes]
            metadata["runs"] = list(metadata.get("runs", [])) + [{k: v for k, v in summary.items() if k != "run"}]
            if finished:
                metadata["jobs"] = list(metadata.get("jobs", [])) + [done.slide_job]

    def finish(self) -> None:
        """Show what is still waiting; a complete re-threshold replaces the engine's nuclei of the layer."""
        self.flush()
        if self.kept is None or self.error or self.cancelled or not has_layer(self.display.viewer.layers, self.layer):
            return
        by_user = self.display.nuclei.tile < 0  # drawn by hand: a re-threshold keeps them
        self.display.replace(by_user, self.kept)
        metadata = self.layer.metadata
        metadata["covered"] = [b[:4] for b in self._coverage]
        metadata["coverage"] = self._coverage
        metadata["nuclei_added"] = self.added


class SessionListener(Protocol):
    """What the form hears from the session (on the main thread)."""

    def run_progress(self, run: Run, progress: Progress) -> None: ...

    def run_ended(self, run: Run) -> None: ...


class RunSession:
    """Starts, feeds and ends the widget's runs, one at a time."""

    def __init__(self, listener: SessionListener, *, synchronous: bool = False) -> None:
        self._listener = weakref.ref(listener)  # worker signals may outlive the widget
        self.synchronous = synchronous
        self.run: Run | None = None
        self.worker: Any = None
        self.closed = False

    @property
    def running(self) -> bool:
        return self.run is not None

    def begin(self, display: NucleiDisplay, job: Job | None = None) -> Run:
        """A run into ``display``'s layer; without a job the caller feeds it (tests, benchmarks)."""
        self.run = Run(display, job)
        return self.run

    def end(self) -> None:
        """End a run the caller fed (:meth:`begin`): what waits is shown, and the run ends as any run does."""
        self._finished()

    def start(self, job: Job, display: NucleiDisplay) -> Run:
        """Run ``job`` into ``display``'s layer: synchronously, or in a worker thread."""
        run = self.begin(display, job)
        generator = run_job(job)
        if self.synchronous:
            try:
                for item in generator:
                    self._yielded(item)
            except Exception as exc:  # the worker path reports these through `errored`
                self._errored(exc)
            finally:
                self._finished()
        else:
            self._start_worker(job, generator)
        return run

    def _start_worker(self, job: Job, generator: Generator[Any, None, Any]) -> None:
        from napari.qt.threading import create_worker

        worker = create_worker(_drive, generator, _ignore_errors=True)
        me = weakref.ref(self)

        def call(name: str) -> Callable[..., None]:
            def handler(*args: Any) -> None:
                session = me()
                if session is not None and not session.closed:
                    getattr(session, name)(*args)
            return handler

        worker.yielded.connect(call("_yielded"))
        worker.errored.connect(call("_errored"))
        worker.aborted.connect(job.cancel.set)
        worker.finished.connect(lambda: _close_generator(generator))
        worker.finished.connect(call("_finished"))
        self.worker = worker
        worker.start()

    def _yielded(self, item: Any) -> None:
        run = self.run
        if run is None:
            return
        progress = run.receive(item)
        listener = self._listener()
        if progress is not None and listener is not None:
            listener.run_progress(run, progress)

    def _errored(self, exc: BaseException) -> None:
        if self.run is not None:
            self.run.error = str(exc) or type(exc).__name__
            self.run.layer.metadata.update({"error": self.run.error, "cancelled": False})

    def _finished(self, *_: Any) -> None:
        run, self.run, self.worker = self.run, None, None
        if run is None:
            return
        run.finish()
        listener = self._listener()
        if listener is not None and not self.closed:
            listener.run_ended(run)

    def cancel(self) -> None:
        """Stop the run after the batch in progress; nuclei found so far stay."""
        if self.run is not None and self.run.job is not None:
            self.run.job.cancel.set()

    def close(self, *_: Any) -> None:
        """The widget (or its viewer) closed: stop the run so no thread outlives it for long."""
        self.closed = True
        self.cancel()


def _drive(generator: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    """The worker's generator: ours, so it can be closed (slide and pool freed) after an abort."""
    return (yield from generator)


def _close_generator(generator: Generator[Any, None, Any]) -> None:
    with contextlib.suppress(Exception):  # already reported through the worker's signals
        generator.close()
