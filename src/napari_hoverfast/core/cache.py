"""The network's work, kept: each tile's maps on disk, so runs resume and re-threshold without it.

Between predict (pixels → maps) and post-process (maps → nuclei) every tile's maps pass through a
:class:`TileMaps`: nucleus probability as uint8 (1/255 steps; the 0.5 threshold falls between two
steps, so the mask is exact), the horizontal/vertical maps as float16, and the tile's RGB pixels
that the stain measurements read (``measurements.py``), kept only where the probability is above 0:
no threshold in (0, 1) can put a nucleus pixel anywhere else, and the zeros halve what RGB costs on
disk. A fresh run post-processes these same arrays, so a resumed or re-thresholded run gives exactly
its nuclei and measurements, without reading the slide again.

:class:`TileCache` stores them as compressed ``.npz`` files (numpy's format; no format of our own),
one per tile, keyed by everything the maps depend on: the slide's fingerprint, the model's SHA-256,
the tile's geometry, the working resolution, the stain mode and the precision. A different key is
a miss; an entry that does not load, or holds another key or shape, is recomputed with a warning.
With ``max_bytes`` the least recently used entries are evicted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Bump when the entry layout or the meaning of the stored maps changes (2: RGB stored; new IHC input).
CACHE_VERSION = 2
_FINGERPRINT_BYTES = 1 << 20


class CacheError(OSError):
    """A cache folder that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class TileMaps:
    """One tile's network output over its post-processing window, as stored."""

    prob: np.ndarray  # uint8 H×W, probability × 255
    hv: np.ndarray  # float16 2×H×W
    rgb: np.ndarray | None = None  # uint8 H×W×3 where prob > 0, else 0 (None: no pixels, no stain measurements)

    @classmethod
    def from_float(cls, prob: np.ndarray, hv: np.ndarray, rgb: np.ndarray | None = None) -> TileMaps:
        quantised = np.rint(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)
        kept = None if rgb is None else np.where((quantised > 0)[..., None], rgb, 0).astype(np.uint8)
        return cls(prob=quantised, hv=np.asarray(hv, dtype=np.float16), rgb=kept)

    def as_float(self) -> tuple[np.ndarray, np.ndarray]:
        """(probability float32 in [0, 1], maps float32) for post-processing."""
        return self.prob.astype(np.float32) / np.float32(255.0), self.hv.astype(np.float32)

    @property
    def nbytes(self) -> int:
        return int(self.prob.nbytes + self.hv.nbytes + (self.rgb.nbytes if self.rgb is not None else 0))


def slide_fingerprint(path: str | os.PathLike[str], dimensions: tuple[int, int]) -> str:
    """SHA-256 of the file's size, level-0 size and first and last MiB: cheap, and changes with the pixels.

    A copy of the slide under another name or folder has the same fingerprint (its cache is reused).
    """
    path = Path(path)
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(f"{size}:{dimensions[0]}x{dimensions[1]}:".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            handle.seek(max(size - _FINGERPRINT_BYTES, _FINGERPRINT_BYTES))
            digest.update(handle.read(_FINGERPRINT_BYTES))
    return digest.hexdigest()


def tile_key(**parts: Any) -> str:
    """A stable key for one tile's maps from named parts (all JSON-serialisable)."""
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class TileCache:
    """Per-tile maps in ``folder`` (created if missing); ``max_bytes`` caps its size (LRU eviction)."""

    def __init__(self, folder: str | os.PathLike[str], *, max_bytes: int | None = None) -> None:
        self.folder = Path(folder).expanduser()
        self.max_bytes = max_bytes
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".probe-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CacheError(f"Cannot use cache folder {self.folder}: {exc.strerror or exc}") from exc
        self._write_failed = False
        self._size: int | None = None

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_file()

    def get(self, key: str, shape: tuple[int, int] | None = None) -> TileMaps | None:
        """The maps stored under ``key``, or ``None`` (a miss, or an entry not to be trusted)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                stored_key = str(data["key"])
                maps = TileMaps(prob=data["prob"], hv=data["hv"], rgb=data["rgb"] if "rgb" in data.files else None)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            return self._distrust(path, f"it does not load ({type(exc).__name__}: {exc})")
        if stored_key != key:
            return self._distrust(path, "it holds another tile")
        expected = maps.prob.shape if shape is None else shape
        if (maps.prob.dtype != np.uint8 or maps.hv.dtype != np.float16 or maps.prob.shape != expected
                or maps.hv.shape != (2, *expected)
                or (maps.rgb is not None and (maps.rgb.dtype != np.uint8 or maps.rgb.shape != (*expected, 3)))):
            return self._distrust(path, "its arrays have the wrong shape or type")
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
        return maps

    def _distrust(self, path: Path, why: str) -> None:
        log.warning("Cache entry %s is not trusted (%s): the tile is computed again", path.name, why)
        with contextlib.suppress(OSError):
            path.unlink()
        self._size = None
        return None

    def put(self, key: str, maps: TileMaps) -> bool:
        """Store ``maps`` (atomically: a temporary file renamed into place). False if it could not be.

        The RGB goes with the maps when they have it (a run's maps always do), so what comes back
        from the cache measures what a fresh run measures.
        """
        if self._write_failed:
            return False
        path = self._path(key)
        tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.part")  # never matches *.npz
        try:
            path.parent.mkdir(exist_ok=True)
            with open(tmp, "xb") as handle:
                arrays = {"prob": maps.prob, "hv": maps.hv, **({"rgb": maps.rgb} if maps.rgb is not None else {})}
                np.savez_compressed(handle, key=np.array(key), **arrays)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._write_failed = True
            log.warning("Cannot write to the cache %s (%s): this run goes on without storing tiles", self.folder, exc.strerror or exc)
            return False
        if self._size is not None:
            self._size += path.stat().st_size
        if self.max_bytes is not None:
            self.evict()
        return True

    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for path in self.folder.glob("??/*.npz"):
            with contextlib.suppress(OSError):
                st = path.stat()
                out.append((st.st_mtime, st.st_size, path))
        return out

    def size_bytes(self) -> int:
        """Bytes the entries take on disk."""
        if self._size is None:
            self._size = sum(size for _, size, _ in self._entries())
        return self._size

    def evict(self) -> int:
        """Remove the least recently used entries until the cache fits ``max_bytes``; bytes freed."""
        if self.max_bytes is None or self.size_bytes() <= self.max_bytes:
            return 0
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, path in entries:
            if total - freed <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                freed += size
        self._size = total - freed
        return freed

    def clear(self) -> int:
        """Remove every entry; bytes freed."""
        freed = self.size_bytes()
        for child in self.folder.iterdir():
            if child.is_dir() and len(child.name) == 2:
                shutil.rmtree(child, ignore_errors=True)
        self._size = 0
        return freed
