"""Output formats in one table: file suffix → kind and writer.

The CLI (``-o``, ``--csv``), the widget's export, the napari writer (``napari.yaml`` lists the same
suffixes; a test checks it), the GeoJSON reader and the run sidecar's name all ask this module which
names are which format, so they cannot disagree (``.json.gz`` used to be accepted by some only).
The writers live here too, over the columns of a :class:`~napari_hoverfast.core.nuclei.Nuclei`.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .nuclei import Nuclei

Kind = Literal["geojson", "csv"]


@dataclass(frozen=True)
class Format:
    """One output format: the suffix a file name ends with, what it holds, and whether it is gzipped."""

    suffix: str
    kind: Kind
    compressed: bool
    description: str


FORMATS: tuple[Format, ...] = (
    Format(".geojson", "geojson", False, "QuPath GeoJSON"),
    Format(".geojson.gz", "geojson", True, "QuPath GeoJSON, gzip compressed"),
    Format(".json", "geojson", False, "QuPath GeoJSON (.json)"),
    Format(".json.gz", "geojson", True, "QuPath GeoJSON (.json), gzip compressed"),
    Format(".csv", "csv", False, "measurements table (CSV)"),
    Format(".csv.gz", "csv", True, "measurements table (CSV), gzip compressed"),
)

GEOJSON_SUFFIXES: tuple[str, ...] = tuple(f.suffix for f in FORMATS if f.kind == "geojson")
CSV_SUFFIXES: tuple[str, ...] = tuple(f.suffix for f in FORMATS if f.kind == "csv")


def find_format(path: str | os.PathLike[str], kind: Kind | None = None) -> Format | None:
    """The format whose suffix ``path``'s name ends with (longest match, any case), or ``None``."""
    name = Path(path).name.lower()
    matches = [f for f in FORMATS if name.endswith(f.suffix) and (kind is None or f.kind == kind)]
    return max(matches, key=lambda f: len(f.suffix)) if matches else None


def format_of(path: str | os.PathLike[str], kind: Kind | None = None) -> Format:
    """Like :func:`find_format`, but a name of no known format is a ``ValueError`` saying which are."""
    found = find_format(path, kind)
    if found is None:
        accepted = GEOJSON_SUFFIXES if kind == "geojson" else CSV_SUFFIXES if kind == "csv" else tuple(f.suffix for f in FORMATS)
        what = {"geojson": "GeoJSON output", "csv": "CSV output", None: "output"}[kind]
        raise ValueError(f"{what} must end in {', '.join(accepted)}, got {Path(path).name}")
    return found


def stem_of(path: str | os.PathLike[str]) -> str:
    """The name without its format suffix (``cells.geojson.gz`` → ``cells``), or without its last suffix."""
    path = Path(path)
    found = find_format(path)
    if found is not None:
        return path.name[: -len(found.suffix)]
    return path.stem


def with_stem_tag(path: str | os.PathLike[str], tag: str) -> Path:
    """``cells.geojson.gz`` + ``partial`` → ``cells.partial.geojson.gz`` (same folder, same format)."""
    path = Path(path)
    found = find_format(path)
    suffix = path.name[len(stem_of(path)):] if found is not None else path.suffix
    return path.with_name(f"{stem_of(path)}.{tag}{suffix}")


def _classes(nuclei: Nuclei) -> list[tuple[str, tuple[int, int, int]] | None] | None:
    """Each nucleus's QuPath class and colour (IHC classes in QuPath's colours), ``None`` if none has one."""
    from .geojson import DEFAULT_COLOR
    from .ihc import COLORS

    names = nuclei.classifications()
    if all(n is None for n in names):
        return None
    return [None if n is None else (n, COLORS.get(n, DEFAULT_COLOR)) for n in names]


def write_geojson(nuclei: Nuclei, path: str | os.PathLike[str]) -> int:
    """The nuclei as QuPath detections with their measurements and classes (atomic); returns the count written.

    Unclassified nuclei are QuPath class "Nucleus"; classified ones (IHC Negative/1+/2+/3+, or a
    class read from a file) keep theirs.
    """
    from .geojson import write_detections

    format_of(path, "geojson")
    return write_detections(path, nuclei.polygons, nuclei.measurements(), classifications=_classes(nuclei))


def write_csv(nuclei: Nuclei, path: str | os.PathLike[str]) -> int:
    """One row per nucleus (``id``, its "Classification" when any nucleus has one, then every
    measurement column), UTF-8, atomic; returns the row count.

    NaN values and missing classes become empty cells. Geometry is not included: GeoJSON holds the outlines.
    """
    from .geojson import _atomic_text_file

    format_of(path, "csv")
    measurements = nuclei.measurements()
    header = ["id"]
    columns = [nuclei.ids.tolist()]
    classes = nuclei.classifications()
    if any(c is not None for c in classes):
        header.append("Classification")
        columns.append(["" if c is None else c for c in classes])
    header += list(measurements)
    columns += [v.tolist() for v in measurements.values()]
    with _atomic_text_file(path, error=OSError, newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for row in zip(*columns, strict=True):
            writer.writerow(["" if isinstance(v, float) and not math.isfinite(v) else v for v in row])
    return len(nuclei)


def write_nuclei(nuclei: Nuclei, path: str | os.PathLike[str]) -> int:
    """Write ``nuclei`` in the format ``path``'s name says (GeoJSON or CSV)."""
    kind = format_of(path).kind
    return write_geojson(nuclei, path) if kind == "geojson" else write_csv(nuclei, path)
