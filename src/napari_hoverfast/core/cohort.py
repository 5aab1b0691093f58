"""Cohorts: many slides as tasks on dask.distributed, on one machine or a cluster.

Each slide is one :class:`~napari_hoverfast.core.job.SlideJob`, run by :func:`run_one` as one dask
task on a worker process, where the model is loaded once per process (``job.cached_model``). dask
does the scheduling: a worker that dies mid-slide has its task rescheduled on another. Slides whose
sidecar says complete with the same model hash and the same job signature are skipped, so the same
command run again finishes what is left (and resumes half-done slides from a shared tile cache).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .job import SlideJob, cached_model, run_slide_job
from .outputs import read_sidecar
from .pipeline import run_to_end
from .tiling import Box

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "mpp", "tissue_mask", "roi")
TABLE_COLUMNS = ("slide", "status", "nuclei", "tiles", "seconds", "error", "output")
#: How often a running slide looks whether the cohort was cancelled (seconds).
CANCEL_POLL = 0.5


class CohortError(ValueError):
    """Cohort input that cannot be used (no slides, a bad manifest row); the message says which."""


@dataclass(frozen=True)
class SlideOutcome:
    """One slide's line in ``cohort.csv``: ``status`` is done, failed, skipped, partial or not started."""

    slide: str
    status: str
    nuclei: int = 0
    tiles: int = 0
    seconds: float = 0.0
    error: str = ""
    output: str = ""


def _float_or_none(value: str, what: str, where: str) -> float | None:
    if value is None or not str(value).strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise CohortError(f"{where}: {what} must be a number, got {value!r}") from None


def read_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Slide paths, globs and CSV manifests (``path`` column; optional ``mpp``, ``tissue_mask``,
    ``roi`` as "X Y W H") → one dict per slide with those keys. Manifest paths are relative to it."""
    entries: list[dict[str, Any]] = []
    for item in inputs:
        text = str(item)
        if text.lower().endswith(".csv"):
            entries += _read_manifest(Path(text))
            continue
        matches = sorted(glob.glob(os.path.expanduser(text))) if glob.has_magic(text) else [text]
        if not matches:
            raise CohortError(f"{text} matches no file")
        entries += [{"path": str(Path(m).expanduser().resolve()), "mpp": None, "tissue_mask": None, "roi": None} for m in matches]
    if not entries:
        raise CohortError("no slides given")
    unique: dict[tuple[Any, ...], dict[str, Any]] = {}
    for entry in entries:  # the same slide named twice (a glob and a manifest) is one slide
        unique.setdefault((entry["path"], entry["mpp"], entry["tissue_mask"], entry["roi"]), entry)
    return list(unique.values())


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise CohortError(f"cannot read the manifest {path}: {exc.strerror or exc}") from None
    if not rows or "path" not in rows[0]:
        raise CohortError(f"{path}: a manifest needs a 'path' column (optional: mpp, tissue_mask, roi)")
    out = []
    for number, row in enumerate(rows, start=2):
        where = f"{path.name} line {number}"
        if not (row.get("path") or "").strip():
            raise CohortError(f"{where}: empty path")
        roi = None
        if (row.get("roi") or "").strip():
            parts = row["roi"].replace(",", " ").split()
            if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
                raise CohortError(f"{where}: roi must be four integers 'X Y W H', got {row['roi']!r}")
            roi = Box(*(int(p) for p in parts))
        mask = (row.get("tissue_mask") or "").strip() or None
        out.append({
            "path": str((path.parent / row["path"].strip()).resolve()),
            "mpp": _float_or_none(row.get("mpp"), "mpp", where),
            "tissue_mask": str((path.parent / mask).resolve()) if mask else None,
            "roi": roi,
        })
    return out


def plan_jobs(entries: Sequence[dict[str, Any]], outdir: Path, template: SlideJob, *, suffix: str = ".geojson.gz",
              csv_out: bool = True) -> list[SlideJob]:
    """One job per slide with outputs ``OUTDIR/<name><suffix>`` (``.csv`` beside it); names made unique."""
    jobs, used = [], set()
    for entry in entries:
        path = Path(entry["path"])
        name = path.name.split(".")[0] or path.stem
        if name in used:
            name = f"{path.parent.name}_{name}"
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        jobs.append(replace(
            template, slide=str(path), mpp=entry["mpp"] if entry["mpp"] is not None else template.mpp,
            tissue_mask=entry["tissue_mask"], regions=(entry["roi"],) if entry["roi"] else None,
            output=str(outdir / f"{name}{suffix}"), csv=str(outdir / f"{name}.csv") if csv_out else None,
        ))
    return jobs


def model_sha256(model: str | None) -> str:
    """The SHA-256 a run records for this model (the file's bytes), without loading it."""
    from .default_model import default_model_path

    path = Path(model) if model else default_model_path()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def already_done(job: SlideJob, sha256: str) -> dict[str, Any] | None:
    """The job's sidecar when it says complete, for the same model and the same signature; else ``None``."""
    outputs = job.outputs
    if outputs is None:
        return None
    side = read_sidecar(outputs.sidecar)
    done = bool(side and side.get("complete") is True and side.get("model_sha256") == sha256
                and side.get("job") == job.signature() and outputs.geojson.exists())
    return side if done else None


def run_one(job: SlideJob, cancel_name: str | None = None, threads: int | None = None,
            progress_name: str | None = None) -> SlideOutcome:
    """Run one slide on this (worker) process; every failure becomes a failed outcome, never a raise.

    ``cancel_name`` names a dask ``Event`` that stops the slide between batches (its partial set is
    written, as ``segment`` does on Ctrl-C); ``threads`` caps torch's threads for this process;
    ``progress_name`` a dask event topic that gets the slide's tiles done and in all, about once a second.
    """
    if threads:
        import torch

        torch.set_num_threads(threads)
    started = time.perf_counter()
    if cancel_name and _is_set(cancel_name):
        return SlideOutcome(job.slide, "not started", error="the cohort was stopped before this slide began")
    cancel = threading.Event()
    stop_polling = _watch_cancel(cancel_name, cancel) if cancel_name else None
    try:
        model = cached_model(job.model, job.device)
        run = run_slide_job(job, model=model, cancel=cancel)
        done = run_to_end(_reporting(run, progress_name) if progress_name else run)
    except Exception as exc:  # one slide's failure never stops the cohort
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return SlideOutcome(job.slide, "failed", seconds=time.perf_counter() - started, error=message)
    finally:
        if stop_polling is not None:
            stop_polling.set()
    run = done.run
    status = "done" if run.complete else "failed" if run.error else "partial"
    return SlideOutcome(
        job.slide, status, nuclei=len(run.nuclei), tiles=len(run.tiles_done), seconds=time.perf_counter() - started,
        error=run.error or "", output=str(done.written[0]) if done.written else "",
    )


def _reporting(run: Any, topic: str) -> Any:
    """Pass a run's events through, logging its tile progress as dask events of ``topic``."""
    from distributed import get_worker

    from .pipeline import Progress

    try:
        worker = get_worker()
        key = str(worker.get_current_task())
    except (ValueError, AttributeError):  # not on a dask worker: nothing to report to
        return (yield from run)
    last = 0.0
    while True:
        try:
            event = next(run)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, Progress) and (time.monotonic() - last > 1.0 or event.tiles_done == event.tiles_total):
            last = time.monotonic()
            with contextlib.suppress(Exception):
                worker.log_event(topic, {"key": key, "done": event.tiles_done, "total": event.tiles_total})
        yield event


def _is_set(name: str) -> bool:
    from distributed import Event

    try:
        return bool(Event(name).is_set())
    except Exception:
        return False


def _watch_cancel(name: str, cancel: threading.Event) -> threading.Event:
    """A thread that sets ``cancel`` once the dask Event ``name`` is set (or the scheduler is gone)."""
    stop = threading.Event()

    def watch() -> None:
        from distributed import Event

        event = Event(name)
        while not stop.wait(CANCEL_POLL):  # is_set, not wait: no request left pending at shutdown
            try:
                if event.is_set():
                    cancel.set()
                    return
            except Exception:  # scheduler gone: nobody waits for this slide any more
                cancel.set()
                return

    threading.Thread(target=watch, name="hoverfast-cancel", daemon=True).start()
    return stop


def cluster_size(workers: int | None = None) -> tuple[int, int]:
    """(worker processes, torch threads each) for this machine: one per GPU, else one per 4 cores,
    with the cores shared so that nothing is oversubscribed; ``workers`` overrides the count."""
    cores = os.cpu_count() or 1
    if workers is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        workers = gpus or max(1, cores // 4)
    return workers, max(1, cores // workers)


def local_cluster(workers: int | None = None) -> tuple[Any, int]:
    """A ``LocalCluster`` of worker processes sized by :func:`cluster_size`, and the threads per worker.

    Its workers start with SIGINT ignored, so a Ctrl-C in the terminal (sent to the whole process
    group) reaches only this process, which stops the slides cleanly instead of workers dying mid-write.
    """
    import signal

    from distributed import LocalCluster

    n, threads = cluster_size(workers)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if threading.current_thread() is threading.main_thread() else None
    try:
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return cluster, threads


def run_cohort(jobs: Sequence[SlideJob], client: Any = None, *, skip_done: bool = True, threads: int | None = None,
               cancel: threading.Event | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> Iterator[SlideOutcome]:
    """Submit every job to ``client`` (a ``distributed.Client``) as one task, now; return an iterator of
    outcomes as slides finish. Without a client, a :func:`local_cluster` is started for the cohort
    and closed when the iterator is exhausted (or closed).

    Done slides (see :func:`already_done`) come first, as skipped. Setting ``cancel`` (or Ctrl-C
    while the iterator waits) stops the running slides between batches (they write their partial
    sets, status "partial") and those not started yet return at once ("not started"): keep
    iterating to collect them. ``on_progress(tiles done, tiles in all)`` is called from a thread about
    every two seconds with the totals of the slides running then.
    """
    from distributed import Client, Event

    owned: list[Any] = []
    if client is None:
        cluster, local_threads = local_cluster()
        client = Client(cluster)
        owned = [client, cluster]
        threads = threads if threads is not None else local_threads
    cancel = cancel if cancel is not None else threading.Event()
    cancel_name = f"hoverfast-cancel-{uuid.uuid4().hex}"
    Event(cancel_name, client=client)  # created before any task looks for it
    sha = {m: model_sha256(m) for m in {j.model for j in jobs}}
    skipped, futures, slide_of = [], [], {}
    for job in jobs:
        side = already_done(job, sha[job.model]) if skip_done else None
        if side is not None:
            skipped.append(SlideOutcome(job.slide, "skipped", nuclei=int(side.get("nuclei", 0)),
                                        tiles=int(side.get("tiles_done", 0)), seconds=float(side.get("seconds", 0.0)),
                                        output=str(job.output)))
            continue
        key = f"slide-{uuid.uuid4().hex[:12]}"
        future = client.submit(run_one, job, cancel_name, threads, f"{cancel_name}-progress" if on_progress else None,
                               pure=False, key=key)
        futures.append(future)
        slide_of[future.key] = job.slide

    def relay() -> None:  # the caller's stop reaches every worker through the dask Event
        cancel.wait()
        with contextlib.suppress(Exception):
            Event(cancel_name, client=client).set()

    threading.Thread(target=relay, name="hoverfast-cohort-cancel", daemon=True).start()
    if on_progress is not None:
        threading.Thread(target=_poll_progress, args=(client, futures, cancel_name, on_progress),
                         name="hoverfast-cohort-progress", daemon=True).start()
    return _outcomes(skipped, futures, slide_of, cancel, owned)


def _poll_progress(client: Any, futures: list[Any], prefix: str, on_progress: Callable[[int, int], None]) -> None:
    """Sum the tile progress of the slides running now and hand it to ``on_progress``, until all are done."""
    latest: dict[str, tuple[int, int]] = {}
    while not all(f.done() for f in futures):
        with contextlib.suppress(Exception):
            for _, message in client.get_events(f"{prefix}-progress"):
                latest[message["key"]] = (message["done"], message["total"])
            running = {f.key for f in futures if not f.done()}
            now = [v for k, v in latest.items() if k in running]
            on_progress(sum(d for d, _ in now), sum(t for _, t in now))
        time.sleep(2.0)


def _outcomes(skipped: list[SlideOutcome], futures: list[Any], slide_of: dict[str, str],
              cancel: threading.Event, owned: list[Any]) -> Iterator[SlideOutcome]:
    from distributed import as_completed

    try:
        yield from skipped
        finished = iter(as_completed(futures))
        while True:
            try:
                future = next(finished)
            except StopIteration:
                return
            except KeyboardInterrupt:  # Ctrl-C while waiting: stop the slides, keep collecting them
                if cancel.is_set():
                    raise
                cancel.set()
                continue
            try:
                outcome = future.result()
            except Exception as exc:  # the task itself died (e.g. KilledWorker after repeated deaths)
                outcome = SlideOutcome(slide_of[future.key], "failed", error=f"{type(exc).__name__}: {exc}")
            yield outcome
    finally:
        for resource in owned:  # the client, then the cluster this call started
            with contextlib.suppress(Exception):
                resource.close()


def write_table(path: Path, outcomes: Sequence[SlideOutcome]) -> None:
    """``cohort.csv``, rewritten whole after every slide (temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(TABLE_COLUMNS)
            for o in outcomes:
                writer.writerow([o.slide, o.status, o.nuclei, o.tiles, f"{o.seconds:.1f}", o.error, o.output])
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
