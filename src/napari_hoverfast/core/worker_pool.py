"""Process pools started so that Ctrl-C never reaches their workers (post-processing, large GeoJSON reads).

A terminal's Ctrl-C goes to the whole process group, workers included. Each worker ignores SIGINT
(its initializer), but only once it has imported everything, which takes seconds (torch, shapely):
a Ctrl-C in that window ends the worker with a ``KeyboardInterrupt`` traceback in the middle of an
import. So the workers are started here, all at once, with SIGINT blocked in the starting thread:
a blocked signal stays blocked across ``exec``, so a worker never sees one, and the Ctrl-C that
arrives meanwhile reaches the run (which stops them) as soon as the mask is restored.

Starting spawned workers costs seconds (each imports torch, scipy, shapely), so a process keeps one
pool for all its runs (``shared_worker_pool``): the widget's second Run and a cohort worker's next
slide find it started. A run that ends early cancels its own pending tiles, not the pool; a pool
that broke is replaced; the pool is shut down when the process exits.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor

#: what a worker says when, starting up, it imports a script that calls the product at its top level
UNGUARDED = 'napari-hoverfast called while a worker process starts: guard the script with `if __name__ == "__main__":`'


def starting_worker() -> bool:
    """True while this process is a spawned worker importing its parent's main script: a call into
    the product then comes from a script without a ``__main__`` guard, and running it would start
    the parent's work a second time (and race its files)."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def ignore_interrupts() -> None:
    """Workers leave Ctrl-C to the parent, which stops them (no worker tracebacks)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask: a cluster job's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def start_worker_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes, already started; the caller shuts the pool down."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=ignore_interrupts)
    masked = hasattr(signal, "pthread_sigmask")
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if masked else None
    try:
        for _ in range(workers):  # each submit to a pool with no idle worker starts one
            pool.submit(int)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return pool


_lock = threading.Lock()
_shared: list[tuple[int, ProcessPoolExecutor]] = []  # at most one (size, pool)


def shared_worker_pool(workers: int) -> ProcessPoolExecutor:
    """This process's pool of ``workers`` post-processing processes, started on first use."""
    with _lock:
        if _shared:
            size, pool = _shared[0]
            if size == workers and not getattr(pool, "_broken", False):
                return pool
            _shared.clear()
            pool.shutdown(wait=False, cancel_futures=True)
        pool = start_worker_pool(workers)
        _shared.append((workers, pool))
        return pool


def discard_worker_pool(pool: ProcessPoolExecutor) -> None:
    """Shut ``pool`` down and forget it (it broke, or the run was interrupted): the next run starts afresh."""
    with _lock:
        if _shared and _shared[0][1] is pool:
            _shared.clear()
    pool.shutdown(wait=False, cancel_futures=True)


@atexit.register
def _shutdown() -> None:
    with _lock:
        for _, pool in _shared:
            pool.shutdown(wait=False, cancel_futures=True)
        _shared.clear()
