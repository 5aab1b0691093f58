"""The post-processing process pool, started so that Ctrl-C never reaches its workers.

A terminal's Ctrl-C goes to the whole process group, workers included. Each worker ignores SIGINT
(its initializer), but only once it has imported everything, which takes seconds (torch, shapely):
a Ctrl-C in that window ends the worker with a ``KeyboardInterrupt`` traceback in the middle of an
import. So the workers are started here, all at once, with SIGINT blocked in the starting thread:
a blocked signal stays blocked across ``exec``, so a worker never sees one, and the Ctrl-C that
arrives meanwhile reaches the run (which stops them) as soon as the mask is restored.
"""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor

from .stages import ignore_interrupts


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
