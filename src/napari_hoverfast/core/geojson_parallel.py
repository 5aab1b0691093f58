"""A large GeoJSON file read on every core: worker processes parse its first slices, this process its last.

Reading is orjson and Python work that holds the GIL (about 15 s per million nuclei on one core
here), so threads cannot share it; processes can. Each worker reads its slices straight from the
file (no text is copied to it), parses them with the same fast path, and sends back compact arrays
(``Packing.pack``: coordinates and offsets, not pickled shapely objects), which this process turns
into parts (``Packing.unpack``). Meanwhile this process parses slices from the end of the file, and
takes each one only if no worker has begun it (a pending future can be cancelled), so both sides
stay busy to the last slice without any planning.

A slice the fast path cannot read, or a file changed under the workers, comes back as "not done",
and the caller reads it the ordinary way, in order, with exact error messages. Workers that cannot
start (a script without ``if __name__ == "__main__":``) leave the whole read to this process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from .worker_pool import UNGUARDED, start_worker_pool, starting_worker, usable_cores

log = logging.getLogger("napari_hoverfast.core.geojson")

T = TypeVar("T")

#: Bytes of plain JSON from which workers pay for their start (~0.3 s): about 300,000 nuclei.
PARALLEL_FROM = 256 << 20
#: Worker processes at most (each holds a slice's objects while it parses).
MOST_WORKERS = 3


@dataclass(frozen=True)
class Packing(Generic[T]):
    """How a part crosses from a worker: ``pack`` (module-level, run in the worker on the fast
    path's columns) makes something cheap to pickle, and ``unpack`` makes the part of it here (the
    slices this process reads go through the caller's ``convert`` directly)."""

    pack: Callable[[Any], Any]
    unpack: Callable[[Any], T]


@dataclass(frozen=True)
class SliceParser:
    """The reader's own ways of parsing a slice, handed in (``geojson_read`` imports this module):
    ``in_worker(path, start, stop, stamp, pack)`` runs in a worker and checks the file's stamp,
    ``here(text)`` is the fast path in this process (None: refused), and ``text(data, bounds)``
    cuts one slice out of the file's bytes as a JSON array."""

    in_worker: Callable[..., tuple[int, Any] | None]
    here: Callable[[bytes], Any | None]
    text: Callable[[bytes | bytearray, tuple[int, int]], bytes]


def _stamp(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns


def _workers_for(path: Path, size: int, slices: int) -> int:
    if size < PARALLEL_FROM or slices < 4 or path.name.lower().endswith(".gz"):
        # small files, and gzip: a worker cannot seek into it, and sending it slices of text would
        # risk a hang at exit should a worker die (a pool's feeder thread blocks on a full pipe)
        return 0
    if starting_worker():  # fail this worker: the parent then reads the file itself
        raise RuntimeError(UNGUARDED)
    return max(0, min(MOST_WORKERS, usable_cores() - 1))


def read_in_workers(path: Path, data: bytes | bytearray, bounds: list[tuple[int, int]], parser: SliceParser,
                    packing: Packing[T], convert: Callable[[Any], T]) -> dict[int, tuple[int, T]]:
    """{slice number: (feature count, part)} for the slices read by workers or by this process's
    share (``convert`` makes this process's parts); slices left out are for the caller to read in
    order."""
    workers = _workers_for(path, len(data), len(bounds))
    if not workers:
        return {}
    stamp = _stamp(path)
    try:
        pool = start_worker_pool(workers)
    except (OSError, RuntimeError) as exc:  # no processes here (a sandbox) or a bootstrapping parent
        log.info("%s: read in this process only (%s)", path, exc)
        return {}
    done: dict[int, tuple[int, T]] = {}
    mine = len(bounds)  # slices from here on are this process's
    try:
        futures: list[Future[tuple[int, Any] | None]] = [
            pool.submit(parser.in_worker, str(path), start, stop, stamp, packing.pack) for start, stop in bounds
        ]
        while mine > 0 and futures[mine - 1].cancel():  # a slice no worker has begun: read it here
            mine -= 1
            fast = parser.here(parser.text(data, bounds[mine]))
            if fast is not None:
                done[mine] = (len(fast), convert(fast))
        for number in range(mine):
            result = futures[number].result()
            if result is not None:
                done[number] = (result[0], packing.unpack(result[1]))
    except BrokenProcessPool:
        log.warning("%s: worker processes could not read it (a script calling napari-hoverfast needs "
                    "`if __name__ == \"__main__\":`); reading in this process instead", path)
        done = {k: v for k, v in done.items() if k >= mine}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    log.debug("%s: %d worker(s) read %d of %d slices", path, workers, mine, len(bounds))
    return done
