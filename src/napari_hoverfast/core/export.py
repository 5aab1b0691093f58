"""Write a run's nuclei for other tools: QuPath GeoJSON, a CSV table, and a JSON sidecar of the run."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .nuclei import Nuclei


def sidecar_path(geojson_path: str | os.PathLike[str]) -> Path:
    """``cells.geojson[.gz]`` → ``cells.run.json`` beside it."""
    path = Path(geojson_path)
    name = path.name
    for suffix in (".geojson.gz", ".json.gz", ".geojson", ".json", ".gz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + ".run.json")


def write_sidecar(path: str | os.PathLike[str], parameters: Mapping[str, Any]) -> Path:
    """The run's parameters and model hash as JSON, written atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(dict(parameters), handle, indent=2, default=str)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail before a long run, not after it, when the output cannot be written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise OSError(f"Cannot write {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise OSError(f"Cannot write {path}: {folder} is not a folder")
    if path.is_dir():
        raise OSError(f"Cannot write {path}: it is a folder")
    if not os.access(folder, os.W_OK):
        raise OSError(f"Cannot write {path}: folder {folder} is not writable")


def export_nuclei(
    nuclei: Nuclei,
    geojson_path: str | os.PathLike[str],
    *,
    csv_path: str | os.PathLike[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> list[Path]:
    """GeoJSON (QuPath detections), optional CSV, and the run sidecar when parameters are given."""
    written = [Path(geojson_path)]
    nuclei.to_geojson(geojson_path)
    if csv_path is not None:
        nuclei.to_csv(csv_path)
        written.append(Path(csv_path))
    if parameters is not None:
        written.append(write_sidecar(sidecar_path(geojson_path), {**parameters, "nuclei": len(nuclei)}))
    return written
