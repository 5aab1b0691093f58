"""Files under the GeoJSON code: atomic (optionally gzipped) writing and bounded reading.

Writing goes to a hidden temporary file in the target folder, is fsynced and renamed over the target
only when everything succeeded, so a failed or interrupted write leaves neither a partial file nor
the temporary one. Compression and the disk writes can run on a background thread
(:class:`BackgroundWriter`): zlib and ``write`` release the GIL, so a writer that is busy producing
JSON does not wait for them.

Reading decompresses gzip by content (whatever the name says) with a cap on the decompressed size:
a gzip bomb (a few kB that inflate to many GB) must end in a clear :class:`GeoJSONError`, not a
MemoryError or a killed process.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import queue
import struct
import threading
import uuid
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from os import PathLike
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from .geojson_types import GeoJSONError

#: zlib level of written ``.gz`` files. Level 1 compresses our GeoJSON ~4x faster than level 6 for
#: files ~25 % larger (measured by ``benchmarks/bench_geojson.py``); QuPath reads any level.
GZIP_LEVEL = 1
#: Decompressed size never allowed, whatever the file (bytes).
MAX_DECOMPRESSED = 4 << 30
#: Decompressed size always allowed (bytes); between the two, :data:`MAX_RATIO` times the file size.
MIN_DECOMPRESSED = 256 << 20
#: Decompressed / compressed ratio beyond which a file counts as a gzip bomb (real GeoJSON is ~3-10).
MAX_RATIO = 200
_READ_CHUNK = 16 << 20
#: Uncompressed bytes deflated as one independent block by :class:`ParallelGzip`.
GZIP_BLOCK = 4 << 20


def _deflate(block: bytes, level: int, final: bool) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(block) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


class ParallelGzip:
    """A write-only gzip stream (one member, as ``gzip.GzipFile`` writes it) that deflates blocks of
    :data:`GZIP_BLOCK` bytes on several threads, the way pigz does: each block is compressed on
    its own and ends on a byte boundary (a sync flush), so the pieces joined in order are one valid
    deflate stream. zlib releases the GIL, so on 2 cores the file is compressed about twice as fast
    (level 1 deflates ~100 MB/s per core here: 11 s for a million nuclei on one). The blocks are cut
    at fixed offsets, so equal content still makes equal files; each block starts without the
    previous one's window, which costs well under 1 % in size at 4 MiB per block.
    """

    def __init__(self, raw: BinaryIO, filename: str, level: int, threads: int | None = None) -> None:
        self._raw = raw
        self._level = level
        self._buffer = bytearray()
        self._crc = 0
        self._size = 0
        self._threads = threads or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="geojson-gzip")
        self._pending: deque[Future[bytes]] = deque()
        name = filename.encode("latin-1", "replace").replace(b"\0", b"")
        xfl = b"\002" if level == 9 else b"\004" if level == 1 else b"\000"
        raw.write(b"\037\213\010" + (b"\010" if name else b"\000") + struct.pack("<L", 0) + xfl + b"\377")
        if name:
            raw.write(name + b"\000")

    def write(self, data: bytes | memoryview) -> int:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        self._buffer += data
        while len(self._buffer) >= GZIP_BLOCK:
            block = bytes(self._buffer[:GZIP_BLOCK])
            del self._buffer[:GZIP_BLOCK]
            self._pending.append(self._pool.submit(_deflate, block, self._level, False))
            while len(self._pending) > 2 * self._threads or (self._pending and self._pending[0].done()):
                self._raw.write(self._pending.popleft().result())
        return len(data)

    def close(self) -> None:
        """Compress what is left, write the trailer (CRC-32 and size) and stop the threads."""
        try:
            self._pending.append(self._pool.submit(_deflate, bytes(self._buffer), self._level, True))
            self._buffer = bytearray()
            while self._pending:
                self._raw.write(self._pending.popleft().result())
            self._raw.write(struct.pack("<LL", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _unwritable_reason(path: Path, exc: OSError) -> str:
    """Turn the OSError of creating a file next to ``path`` into a message a user can act on."""
    folder = path.parent
    if isinstance(exc, NotADirectoryError) or exc.errno == errno.ENOTDIR:
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        if not blocker.is_dir():
            return f"cannot write {path}: {blocker} is a file, not a folder"
    if isinstance(exc, FileNotFoundError):
        return f"cannot write {path}: folder {folder} does not exist"
    if isinstance(exc, PermissionError):
        return f"cannot write {path}: no permission to create files in folder {folder}"
    if exc.errno == errno.EROFS:
        return f"cannot write {path}: folder {folder} is on a read-only file system"
    return f"cannot write {path}: {exc.strerror or exc}"


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable where the OS allows it (POSIX); a best effort, never an error."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_binary_file(
    path: str | PathLike[str], *, error: type[OSError] = GeoJSONError, compresslevel: int = GZIP_LEVEL
) -> Iterator[BinaryIO]:
    """Yield a binary stream that becomes ``path`` only if the ``with`` body succeeds.

    gzip-compressed when the name ends ``.gz`` (``mtime=0``: equal content, equal files). On any
    exception the temporary file is removed; OSErrors are re-raised as ``error`` with a message naming
    ``path``, other exceptions (the caller's) unchanged.
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"cannot write {path}: it is a folder")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        raw = open(tmp, "xb")  # noqa: SIM115 - closed below, on every path
    except OSError as exc:
        raise error(_unwritable_reason(path, exc)) from exc
    try:
        with raw:
            binary: Any = raw
            if path.name.lower().endswith(".gz"):
                binary = ParallelGzip(raw, path.name[:-3], compresslevel)
            try:
                yield binary
            except BaseException:
                if binary is not raw:
                    binary.abort()
                raise
            if binary is not raw:
                binary.close()  # writes the gzip trailer into ``raw``
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, error):
            raise error(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    _fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_text_file(
    path: str | PathLike[str], *, error: type[OSError] = GeoJSONError, newline: str | None = "\n"
) -> Iterator[TextIO]:
    """:func:`atomic_binary_file` as UTF-8 text (the CSV writer's form)."""
    with atomic_binary_file(path, error=error) as binary:
        text = io.TextIOWrapper(binary, encoding="utf-8", newline=newline)
        try:
            yield text
            text.flush()
        finally:
            text.detach()  # the binary stream is closed by atomic_binary_file, on every path


class BackgroundWriter:
    """Writes byte chunks to a binary stream from a thread, at most ``depth`` chunks behind.

    The producer calls :meth:`write` and goes on building the next chunk while the thread compresses
    and writes this one; memory stays bounded by ``depth`` chunks. An error in the thread is re-raised
    in the producer at its next :meth:`write` or at :meth:`close`. Use as a context manager: leaving
    the block normally flushes everything, leaving it by an exception stops the thread without
    writing the rest.
    """

    def __init__(self, stream: BinaryIO, depth: int = 3) -> None:
        self._stream = stream
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abort = False
        self._thread = threading.Thread(target=self._run, name="geojson-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            if self._error is None and not self._abort:
                try:
                    self._stream.write(chunk)
                except BaseException as exc:  # handed to the producer
                    self._error = exc

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, chunk: bytes | memoryview) -> None:
        self._raise_pending()
        self._queue.put(chunk)

    def close(self) -> None:
        """Wait until every chunk is written; re-raise the thread's error, if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise_pending()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if exc is None:
            self.close()
            return
        self._abort = True  # the thread drains the queue without writing, then stops
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def decompressed_limit(compressed_size: int) -> int:
    """How many bytes a gzip file of ``compressed_size`` bytes may inflate to before it is refused."""
    return min(MAX_DECOMPRESSED, max(MIN_DECOMPRESSED, MAX_RATIO * compressed_size))


def read_capped(path: Path, max_decompressed: int | None = None) -> bytes | bytearray:
    """The content of ``path``, gunzipped when it is gzip, at most ``max_decompressed`` bytes inflated
    (``None``: :func:`decompressed_limit` of the file's size). Any problem is a :class:`GeoJSONError`."""
    try:
        raw = path.read_bytes()
    except IsADirectoryError as exc:
        raise GeoJSONError(f"cannot read {path}: it is a folder") from exc
    except FileNotFoundError as exc:
        raise GeoJSONError(f"cannot read {path}: no such file") from exc
    except OSError as exc:
        raise GeoJSONError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if raw[:2] != b"\x1f\x8b":
        if path.name.lower().endswith(".gz") and raw:
            raise GeoJSONError(f"cannot read {path}: the name ends .gz but the content is not gzip")
        return raw
    limit = decompressed_limit(len(raw)) if max_decompressed is None else int(max_decompressed)
    out = bytearray()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw), mode="rb") as gz:
            del raw  # the stream holds it; nothing else needs it
            while chunk := gz.read(min(_READ_CHUNK, limit + 1 - len(out))):
                out += chunk
                if len(out) > limit:
                    raise GeoJSONError(
                        f"cannot read {path}: it inflates to more than {limit:,} bytes "
                        f"(from {path.stat().st_size:,} compressed), which looks like a gzip bomb; "
                        "read_geojson(..., max_decompressed=N) allows more"
                    )
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, GeoJSONError):
            raise
        raise GeoJSONError(f"cannot read {path}: not a valid gzip stream ({exc})") from exc
    except MemoryError:
        raise GeoJSONError(f"cannot read {path}: not enough memory to decompress it") from None
    return out
