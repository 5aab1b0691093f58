"""A run's files as one set: GeoJSON, optional CSV, and the ``NAME.run.json`` sidecar, written together.

Every file goes to a hidden temporary name in its folder first; only when all are written are they
renamed into place, the sidecar last, so a set that cannot be completely written leaves the previous
one as it was. The sidecar says whether the run was complete. A run that was cancelled, interrupted
or failed never replaces a result: its set goes to ``NAME.partial.*`` beside it. Writing through a
symbolic link updates its target, and a replaced file keeps its permissions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .formats import format_of, stem_of, with_stem_tag, write_csv, write_geojson
from .nuclei import Nuclei

PARTIAL = "partial"


@dataclass(frozen=True)
class OutputSet:
    """Where a run's files go: GeoJSON (required) and CSV (optional); the sidecar sits beside the GeoJSON."""

    geojson: Path
    csv: Path | None = None

    def __post_init__(self) -> None:
        format_of(self.geojson, "geojson")
        if self.csv is not None:
            format_of(self.csv, "csv")

    @property
    def sidecar(self) -> Path:
        """``cells.geojson[.gz]`` → ``cells.run.json``."""
        return self.geojson.with_name(stem_of(self.geojson) + ".run.json")

    def files(self) -> list[Path]:
        return [self.geojson, *([self.csv] if self.csv is not None else []), self.sidecar]

    def partial(self) -> OutputSet:
        """The set a run that did not complete writes: ``NAME.partial.geojson`` and so on."""
        return OutputSet(with_stem_tag(self.geojson, PARTIAL), with_stem_tag(self.csv, PARTIAL) if self.csv else None)


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar's content, or ``None`` when there is none or it cannot be read as JSON."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_outputs(outputs: OutputSet, inputs: Sequence[str | os.PathLike[str] | None] = ()) -> None:
    """Refuse, before any work, outputs that cannot be written or would overwrite an input or each other."""
    files = outputs.files()
    resolved = [Path(os.path.realpath(p)) for p in files]
    if len(set(resolved)) != len(resolved):
        raise ValueError("the outputs name the same file twice: " + ", ".join(str(p) for p in files))
    protected = {Path(os.path.realpath(p)): Path(p) for p in inputs if p is not None}
    for path, real in zip(files, resolved, strict=True):
        if real in protected:
            raise ValueError(f"output {path} is the input {protected[real]}: choose another name")
        check_writable(path)


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail before a long run, not after it: the folder must exist and be writable, the name no folder."""
    real = Path(os.path.realpath(path))
    folder = real.parent
    if not folder.exists():
        raise OSError(f"Cannot write {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise OSError(f"Cannot write {path}: {folder} is not a folder")
    if real.is_dir():
        raise OSError(f"Cannot write {path}: it is a folder")
    if not os.access(folder, os.W_OK):
        raise OSError(f"Cannot write {path}: folder {folder} is not writable")


def _temporary(target: Path) -> Path:
    """A hidden name beside ``target`` with the same format suffix (``.gz`` decides compression)."""
    return target.with_name(f".{stem_of(target)}.{uuid.uuid4().hex[:12]}.tmp{target.name[len(stem_of(target)):]}")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with open(path, "x", encoding="utf-8") as handle:
        json.dump(dict(data), handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())


def _install(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` over ``target`` (its real path), keeping the permissions ``target`` had."""
    if target.exists():
        with contextlib.suppress(OSError):
            shutil.copymode(target, tmp)
    else:
        os.chmod(tmp, 0o644)
    os.replace(tmp, target)


def write_outputs(
    nuclei: Nuclei,
    outputs: OutputSet,
    *,
    complete: bool,
    sidecar: Mapping[str, Any],
) -> list[Path]:
    """Write the set (the partial one when ``complete`` is false); return the paths written.

    ``sidecar`` is the run's description (parameters, tiles, error, where the mpp came from); the
    sidecar adds ``complete``, the nucleus count, the files, the measurement columns and, for IHC
    runs (``nuclei.ihc`` set), the positivity summary (counts per class, "Positive %", "H-score").
    Raises ``OSError`` naming the file
    that could not be written, after removing every temporary file: nothing is replaced then.
    """
    target = outputs if complete else outputs.partial()
    files = [Path(os.path.realpath(p)) for p in target.files()]
    temps = [_temporary(p) for p in files]
    writers = [lambda p: write_geojson(nuclei, p)]
    if target.csv is not None:
        writers.append(lambda p: write_csv(nuclei, p))
    record = {
        "complete": complete, "nuclei": len(nuclei), **dict(sidecar),
        "files": [str(p) for p in target.files()[:-1]], "measurements": list(nuclei.measurements()),
    }
    if nuclei.ihc is not None:  # IHC runs: QuPath's positivity summary of what was written
        from .ihc import summarize

        record["ihc"] = {"thresholds": list(nuclei.ihc.thresholds), "measurement": nuclei.ihc.measurement,
                         **summarize(nuclei).as_dict()}
    writers.append(lambda p: _write_json(p, record))
    for final in files:  # found now, not half way through the renames
        if final.is_dir():
            raise OSError(f"Cannot write {final}: it is a folder")
    try:
        for write, tmp, final in zip(writers, temps, files, strict=True):
            try:
                write(tmp)
            except OSError as exc:
                raise OSError(f"Cannot write {final}: {getattr(exc, 'strerror', None) or exc}") from exc
        for tmp, final in zip(temps, files, strict=True):
            _install(tmp, final)
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
    if complete:  # a complete set supersedes an earlier partial one
        for stale in outputs.partial().files():
            with contextlib.suppress(OSError):
                stale.unlink()
    return target.files()
