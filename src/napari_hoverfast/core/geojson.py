"""Nuclei as QuPath GeoJSON: stream detections to disk, read QuPath/HoverFast/GeoJSON files back.

Written files follow what QuPath >= 0.4 writes and imports (``/work/shared/reference/QUPATH_GEOJSON.md``):

* a ``FeatureCollection`` of ``{"type": "Feature", "id": <UUID4>, "geometry": Polygon,
  "properties": {"objectType": "detection", "classification": {"name", "color": [r, g, b]},
  "measurements": {name: number}}}``;
* coordinates are level-0 pixels (x right, y down, origin top-left), rounded to 2 decimals like
  QuPath itself. Every written polygon is valid *after* that rounding, because QuPath >= 0.6 aborts the
  whole import on one invalid polygon ("Reduction failed, possible invalid input");
* exterior rings have a positive shoelace area, i.e. counter-clockwise in a y-up frame as RFC 7946 asks
  (they look clockwise on screen, where y points down); holes the other way. QuPath ignores orientation;
* measurements are finite numbers only (a non-finite value is left out: bare ``NaN`` is not JSON, and
  QuPath 0.4 cannot read the string form);
* ``.geojson`` / ``.json`` as UTF-8 (ASCII-escaped) text, ``.geojson.gz`` / ``.json.gz`` as a gzip stream.

Writing is streamed (one ``json.dumps`` per feature, so memory does not grow with the nucleus count) and
atomic (a temporary file in the target folder, ``os.replace`` at the end): a failed or interrupted write
leaves neither a partial file nor the temporary one.

:class:`GeoJSONError` subclasses :class:`OSError`: everything here is "this file could not be written or
read", so one ``except OSError`` around file handling also covers a malformed file. Errors in the caller's
own inputs (a non-polygon, a non-numeric measurement, an iterable that raises) propagate unchanged after
the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import itertools
import json
import logging
import math
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from .formats import GEOJSON_SUFFIXES

log = logging.getLogger(__name__)

#: Default classification colour of written nuclei (QuPath draws detections in their class colour).
DEFAULT_COLOR: tuple[int, int, int] = (255, 0, 0)
#: File name endings QuPath imports objects from (it decides by name only).
SUFFIXES = GEOJSON_SUFFIXES
#: Object types :func:`write_detections` may write (cells need a nucleus geometry it does not have).
WRITABLE_TYPES = ("detection", "annotation")

_DECIMALS = 2  # QuPath writes 2 decimals and, from 0.6, snaps imports to a 0.01 px grid
_CHUNK = 2048  # polygons validated together with shapely's vectorised functions
_LEGACY_TYPES = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tmaCore",
    "PathRootObject": "root",
    "tma_core": "tmaCore",
}
_KNOWN_TYPES = {"annotation", "detection", "cell", "tile", "tmaCore", "root"}


class GeoJSONError(OSError):
    """A GeoJSON file that cannot be written or read; the message names the file and the problem."""


@dataclass(frozen=True)
class GeoObject:
    """One object read from a GeoJSON file.

    ``geometry`` is in level-0 pixels as stored (validity is not enforced on reading: QuPath's own
    exports are valid, and a caller that needs validity can use ``shapely.make_valid``). For cells,
    ``geometry`` is the cell boundary and ``nucleus`` the nucleus (QuPath's ``nucleusGeometry``).
    ``color`` is the colour QuPath would draw the object in: its own ``color`` if set, else its
    classification's. Measurements are floats; non-finite values written as strings come back as NaN.
    """

    geometry: Polygon | MultiPolygon
    object_type: str = "annotation"
    name: str | None = None
    classification: str | None = None
    color: tuple[int, int, int] | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    id: str | None = None
    nucleus: Polygon | MultiPolygon | None = None


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _has_suffix(path: Path, suffixes: Iterable[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


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


@contextlib.contextmanager
def _atomic_text_file(
    path: str | PathLike[str], *, error: type[OSError] = GeoJSONError, newline: str | None = "\n"
) -> Iterator[TextIO]:
    """Yield a UTF-8 text stream that becomes ``path`` only if the ``with`` body succeeds.

    The data goes to a hidden temporary file in the same folder (so ``os.replace`` is atomic), gzip
    compressed when the name ends ``.gz``, is fsynced, then renamed over ``path``. On any exception the
    temporary file is removed; OSErrors are re-raised as ``error`` with a message naming ``path``, other
    exceptions (the caller's) unchanged.
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"cannot write {path}: it is a folder")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        raw = open(tmp, "xb")  # noqa: SIM115 - closed below, on every path
    except OSError as exc:
        raise error(_unwritable_reason(path, exc)) from exc
    text: io.TextIOWrapper | None = None
    try:
        with raw:
            binary: Any = raw
            if path.name.lower().endswith(".gz"):
                # mtime=0: identical content gives identical files; compresslevel 6 is zlib's speed/size default
                binary = gzip.GzipFile(filename=path.name[:-3], mode="wb", fileobj=raw, compresslevel=6, mtime=0)
            text = io.TextIOWrapper(binary, encoding="utf-8", newline=newline)
            yield text
            text.flush()
            text.detach()  # keep ``raw`` open: GzipFile.close() writes the trailer into it
            text = None
            if binary is not raw:
                binary.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if text is not None:
            with contextlib.suppress(Exception):
                text.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, error):
            raise error(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    _fsync_folder(path.parent)


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


def _check_color(color: Iterable[int]) -> list[int]:
    rgb = list(color)
    if len(rgb) != 3 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255 for v in rgb
    ):
        raise ValueError(f"color must be three integers 0-255 (r, g, b), got {tuple(rgb)!r}")
    return [int(v) for v in rgb]


def _round(geoms: np.ndarray) -> np.ndarray:
    rounded: np.ndarray = shapely.transform(geoms, lambda xy: np.round(xy, _DECIMALS))
    return rounded


def _largest_polygon(geom: BaseGeometry | None) -> Polygon | None:
    """The largest-area polygon part of any geometry (nuclei are single polygons), or None."""
    if geom is None or geom.is_empty:
        return None
    if isinstance(geom, Polygon):
        return geom
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, (Polygon, MultiPolygon))]
    parts = [q for p in parts for q in ([p] if isinstance(p, Polygon) else list(p.geoms))]
    return max(parts, key=lambda p: p.area) if parts else None


def _good(geoms: np.ndarray) -> np.ndarray:
    """Valid, non-empty, positive-area polygons (what QuPath's 0.01 px precision reduction survives)."""
    is_poly = shapely.get_type_id(geoms) == shapely.GeometryType.POLYGON
    good: np.ndarray = is_poly & shapely.is_valid(geoms) & (shapely.area(geoms) > 0)
    return good


def _repair(geom: Polygon) -> Polygon | None:
    """A valid polygon on the 0.01 px grid close to ``geom``, or None if nothing usable is left.

    ``make_valid`` splits a bowtie into its lobes and a spike into a polygon plus a line; the largest
    polygon part is the nucleus. Rounding can break validity again (two vertices merge), so the fallback
    is GEOS's precision reducer, which snaps to the grid and keeps the result valid.
    """
    if not np.isfinite(shapely.get_coordinates(geom)).all():
        return None
    part = _largest_polygon(shapely.make_valid(geom))
    if part is None:
        return None
    for candidate in (part, _largest_polygon(shapely.set_precision(part, 10.0**-_DECIMALS))):
        if candidate is None:
            continue
        rounded = _round(np.array([candidate], dtype=object))
        if _good(rounded)[0]:
            return rounded[0]
    return None


def _prepare(chunk: list[Any], start: int, path: Path) -> tuple[list[Polygon | None], int]:
    """Round, validate, repair and orient one chunk of input polygons (shapely-vectorised).

    Returns the polygons to write (None for one that had to be dropped) and how many were repaired.
    """
    geoms = np.empty(len(chunk), dtype=object)
    geoms[:] = chunk
    not_geom = ~shapely.is_geometry(geoms)
    if not_geom.any():
        bad = int(np.flatnonzero(not_geom)[0])
        raise TypeError(f"polygon {start + bad}: expected a shapely Polygon, got {type(chunk[bad]).__name__}")
    kinds = shapely.get_type_id(geoms)
    for i in np.flatnonzero(kinds != shapely.GeometryType.POLYGON).tolist():
        if kinds[i] != shapely.GeometryType.MULTIPOLYGON:
            raise TypeError(f"polygon {start + i}: expected a shapely Polygon, got a {geoms[i].geom_type}")
        geoms[i] = _largest_polygon(geoms[i])  # nuclei are single polygons: keep the main part
    rounded = _round(geoms)
    good = _good(rounded)
    repaired = 0
    for i in np.flatnonzero(~good).tolist():  # Python ints (numpy ints upset some log handlers)
        fixed = _repair(geoms[i])
        if fixed is None:
            log.warning(
                "%s: polygon %d is not a valid polygon after rounding to 0.01 px and cannot be repaired "
                "(%s); it is left out",
                path, start + i, shapely.is_valid_reason(rounded[i]) if rounded[i] is not None else "empty",
            )
        else:
            repaired += 1
            log.debug("%s: polygon %d repaired (%s)", path, start + i, shapely.is_valid_reason(rounded[i]))
        rounded[i] = fixed
    keep = ~shapely.is_missing(rounded)
    rounded[keep] = shapely.orient_polygons(rounded[keep], exterior_cw=False)
    return list(rounded), repaired


def _rings(polygon: Polygon) -> list[list[list[float]]]:
    return [shapely.get_coordinates(r).tolist() for r in (polygon.exterior, *polygon.interiors)]


def _measurement_dict(values: Mapping[str, Any], index: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"feature {index}: measurement name {key!r} must be a non-blank string")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"feature {index}: measurement {key!r} is not a number: {value!r}") from None
        if math.isfinite(number):
            out[key] = number
    return out


def write_detections(
    path: str | PathLike[str],
    polygons: Iterable[Polygon],
    measurements: Iterable[Mapping[str, float]] | None = None,
    *,
    object_type: str = "detection",
    name: str = "Nucleus",
    color: tuple[int, int, int] = DEFAULT_COLOR,
    ids: Iterable[str] | None = None,
) -> int:
    """Stream ``polygons`` (level-0 pixels) to a QuPath GeoJSON file; return how many were written.

    ``measurements`` and ``ids``, if given, run parallel to ``polygons`` (one mapping / one id string per
    polygon; ``None`` ids get a random UUID4; given ids must be unique, and QuPath replaces any that is
    not a UUID). Any of them may be a generator: nothing is materialised
    beyond a chunk of polygons. A polygon that is invalid after rounding to 0.01 px is repaired
    (largest valid part) or, if nothing is left, left out with a logged warning; a MultiPolygon is
    reduced to its largest part. Raises :class:`GeoJSONError` when the file cannot be written (nothing is
    left behind), ``ValueError`` for a bad name, colour, object type, suffix or measurement, ``TypeError``
    for a non-polygon.
    """
    path = Path(path)
    if not _has_suffix(path, SUFFIXES):
        raise ValueError(f"{path}: QuPath imports objects only from names ending {', '.join(SUFFIXES)}")
    if object_type not in WRITABLE_TYPES:
        raise ValueError(f"object_type must be one of {WRITABLE_TYPES}, got {object_type!r}")
    if not isinstance(name, str) or not name.strip() or "\n" in name or "\r" in name:
        raise ValueError(f"name must be a non-blank single-line string (a QuPath class name), got {name!r}")
    properties_base = {"objectType": object_type, "classification": {"name": name, "color": _check_color(color)}}

    missing: Any = object()
    meas_iter: Iterator[Any] = iter(measurements) if measurements is not None else itertools.repeat(None)
    id_iter: Iterator[Any] = iter(ids) if ids is not None else itertools.repeat(None)
    poly_iter = iter(polygons)
    seen_ids: set[str] = set()  # QuPath does not notice duplicates inside a file; we refuse them
    written = dropped = repaired = 0
    index = 0
    with _atomic_text_file(path) as out:
        out.write('{"type":"FeatureCollection","features":[')
        while chunk := list(itertools.islice(poly_iter, _CHUNK)):
            prepared, n_repaired = _prepare(chunk, index, path)
            repaired += n_repaired
            for polygon in prepared:
                values = next(meas_iter, missing)
                given_id = next(id_iter, missing)
                if values is missing or given_id is missing:
                    which = "measurements" if values is missing else "ids"
                    raise ValueError(f"{which} has fewer items than polygons ({index})")
                if polygon is None:
                    dropped += 1
                    index += 1
                    continue
                properties: dict[str, Any] = dict(properties_base)
                if values is not None:
                    properties["measurements"] = _measurement_dict(values, index)
                if given_id is None:
                    given_id = str(uuid.uuid4())
                elif not isinstance(given_id, str):
                    raise ValueError(f"feature {index}: id must be a string, got {given_id!r}")
                elif given_id in seen_ids:
                    raise ValueError(f"feature {index}: id {given_id!r} is used twice")
                else:
                    seen_ids.add(given_id)
                feature = {
                    "type": "Feature",
                    "id": given_id,
                    "geometry": {"type": "Polygon", "coordinates": _rings(polygon)},
                    "properties": properties,
                }
                out.write(",\n" if written else "\n")
                out.write(json.dumps(feature, separators=(",", ":"), allow_nan=False))
                written += 1
                index += 1
        for given, rest, label in ((measurements, meas_iter, "measurements"), (ids, id_iter, "ids")):
            if given is not None and next(rest, missing) is not missing:
                raise ValueError(f"{label} has more items than polygons ({index})")
        out.write("\n]}\n")
    if dropped or repaired:  # repairs are routine (pixel-traced outlines pinch); losing a nucleus is not
        log.log(logging.WARNING if dropped else logging.INFO,
                "%s: %d polygon(s) repaired, %d left out as unrepairable", path, repaired, dropped)
    log.debug("%s: wrote %d detection(s)", path, written)
    return written


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


class _FeatureProblem(ValueError):
    """Internal: a problem inside one feature; turned into a GeoJSONError naming the feature."""


def _load(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except IsADirectoryError as exc:
        raise GeoJSONError(f"cannot read {path}: it is a folder") from exc
    except FileNotFoundError as exc:
        raise GeoJSONError(f"cannot read {path}: no such file") from exc
    except OSError as exc:
        raise GeoJSONError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if raw[:2] == b"\x1f\x8b":  # gzip by content, whatever the name says
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise GeoJSONError(f"cannot read {path}: not a valid gzip stream ({exc})") from exc
    elif path.name.lower().endswith(".gz") and raw:
        raise GeoJSONError(f"cannot read {path}: the name ends .gz but the content is not gzip")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GeoJSONError(f"cannot read {path}: not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise GeoJSONError(f"cannot read {path}: the file is empty; expected GeoJSON")
    try:
        # QuPath 0.4 writes bare NaN measurements; Python's json accepts them by default (parse_constant)
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GeoJSONError(f"cannot read {path}: not JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from exc


def _features(data: Any) -> list[Any]:
    """The list of features of a FeatureCollection, a bare list, a single Feature or a bare geometry."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise _FeatureProblem(f"top level is a JSON {type(data).__name__}; expected a FeatureCollection, a Feature or a list of Features")
    kind = data.get("type")
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise _FeatureProblem("FeatureCollection has no 'features' list")
        return features
    if kind == "Feature":
        return [data]
    if kind in ("Polygon", "MultiPolygon"):  # QuPath imports a bare geometry as one annotation
        return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise _FeatureProblem(f"top-level type is {kind!r}; expected FeatureCollection, Feature or a list of Features")


def _ring(ring: Any, where: str) -> np.ndarray:
    try:
        xy = np.asarray(ring, dtype=float)
    except (TypeError, ValueError):
        raise _FeatureProblem(f"{where} is not a list of [x, y] number pairs") from None
    if xy.ndim != 2 or xy.shape[1] not in (2, 3):
        raise _FeatureProblem(f"{where} is not a list of [x, y] number pairs")
    if len(xy) < 4:
        raise _FeatureProblem(f"{where} has {len(xy)} positions; a closed ring needs at least 4")
    if not np.isfinite(xy).all():
        raise _FeatureProblem(f"{where} has a non-finite coordinate")
    if not (xy[0, :2] == xy[-1, :2]).all():
        raise _FeatureProblem(f"{where} is not closed (first {xy[0, :2].tolist()} != last {xy[-1, :2].tolist()})")
    return xy[:, :2]


def _polygon(rings: Any, where: str) -> Polygon:
    if not isinstance(rings, list) or not rings:
        raise _FeatureProblem(f"{where} has no rings")
    parsed = [_ring(r, f"{where} ring {i}") for i, r in enumerate(rings)]
    return Polygon(parsed[0], parsed[1:])


def _geometry(geom: Any, where: str) -> Polygon | MultiPolygon | None:
    """A shapely polygon from a GeoJSON geometry, None for a non-area type (skipped), or a problem."""
    if geom is None:
        raise _FeatureProblem(f"{where} missing")
    if not isinstance(geom, dict):
        raise _FeatureProblem(f"{where} is not a JSON object")
    kind = geom.get("type")
    if kind in ("Point", "MultiPoint", "LineString", "MultiLineString", "GeometryCollection"):
        return None
    if kind not in ("Polygon", "MultiPolygon"):
        raise _FeatureProblem(f"{where} has unknown type {kind!r}")
    if "coordinates" not in geom:
        raise _FeatureProblem(f"{where} has no 'coordinates'")
    coords = geom["coordinates"]
    if kind == "Polygon":
        return _polygon(coords, where)
    if not isinstance(coords, list) or not coords:
        raise _FeatureProblem(f"{where} MultiPolygon has no polygons")
    return MultiPolygon([_polygon(p, f"{where} polygon {i}") for i, p in enumerate(coords)])


def _unpack_rgb(packed: int) -> tuple[int, int, int]:
    """QuPath's packed (A)RGB int, e.g. HoverFast's ``colorRGB: -65536`` = red."""
    return ((packed >> 16) & 255, (packed >> 8) & 255, packed & 255)


def _color(value: Any) -> tuple[int, int, int] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _unpack_rgb(value)
    if isinstance(value, list) and len(value) in (3, 4) and all(isinstance(v, int) for v in value):
        return (value[0], value[1], value[2])
    return None


def _classification(value: Any) -> tuple[str | None, tuple[int, int, int] | None]:
    """(name, colour) from the string, ``{name|names, color}`` or legacy ``{name, colorRGB}`` forms."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, None
    if not isinstance(value, dict):
        raise _FeatureProblem(f"classification is a {type(value).__name__}; expected a string or an object")
    if "names" in value and isinstance(value["names"], list):
        name = ": ".join(str(n) for n in value["names"]) or None
    else:
        name = value.get("name")
        if name is not None and not isinstance(name, str):
            raise _FeatureProblem(f"classification name {name!r} is not a string")
    color = _color(value["colorRGB"]) if "colorRGB" in value else _color(value.get("color"))
    return name, color


def _number(value: Any, key: str) -> float | None:
    if isinstance(value, bool) or value is None:
        return None  # QuPath skips these with a warning
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # "NaN", "Infinity", "-inf" and numeric strings, as QuPath >= 0.5
        except ValueError:
            pass
    raise _FeatureProblem(f"measurement {key!r} is not a number: {value!r}")


def _measurements(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):  # legacy (QuPath <= 0.3): [{"name": ..., "value": ...}, ...]
        items = []
        for i, item in enumerate(value):
            if not (isinstance(item, dict) and isinstance(item.get("name"), str) and "value" in item):
                raise _FeatureProblem(f"measurement {i} is not a {{name, value}} object")
            items.append((item["name"], item["value"]))
    else:
        raise _FeatureProblem(f"measurements is a {type(value).__name__}; expected an object")
    out = {}
    for key, raw in items:
        number = _number(raw, key)
        if number is not None:
            out[key] = number
    return out


def _feature(feature: Any, skipped: list[str]) -> GeoObject | None:
    if not isinstance(feature, dict):
        raise _FeatureProblem(f"is a JSON {type(feature).__name__}, not a Feature object")
    kind = feature.get("type", "Feature")
    if kind != "Feature":
        raise _FeatureProblem(f"type is {kind!r}, expected 'Feature'")
    props = feature.get("properties", {})
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise _FeatureProblem("properties is not a JSON object")
    fid = feature.get("id")
    if fid is not None and not isinstance(fid, (str, int, float)):
        raise _FeatureProblem(f"id {fid!r} is not a string")
    fid = None if fid is None else str(fid)

    object_type = props.get("objectType", props.get("object_type", props.get("type")))
    if fid in _LEGACY_TYPES and object_type is None:  # QuPath 0.2 stored the type in "id"
        object_type, fid = fid, None
    if object_type is None:
        object_type = "annotation"  # QuPath's default for a feature without a type
    elif not isinstance(object_type, str):
        raise _FeatureProblem(f"objectType {object_type!r} is not a string")
    object_type = _LEGACY_TYPES.get(object_type, object_type)
    if object_type not in _KNOWN_TYPES:
        log.warning("unknown objectType %r read as 'annotation' (as QuPath does)", object_type)
        object_type = "annotation"

    geometry = _geometry(feature.get("geometry"), "geometry")
    if geometry is None:
        skipped.append(str(feature["geometry"].get("type")))
        return None
    nucleus = None
    if feature.get("nucleusGeometry") is not None:
        nucleus = _geometry(feature["nucleusGeometry"], "nucleusGeometry")

    name = props.get("name")
    if name is not None and not isinstance(name, str):
        raise _FeatureProblem(f"name {name!r} is not a string")
    class_name, class_color = _classification(props.get("classification"))
    own_color = _color(props.get("color")) if props.get("color") is not None else None
    return GeoObject(
        geometry=geometry,
        object_type=object_type,
        name=name,
        classification=class_name,
        color=own_color or class_color,
        measurements=_measurements(props.get("measurements")),
        id=fid,
        nucleus=nucleus,
    )


def read_geojson(path: str | PathLike[str]) -> list[GeoObject]:
    """Read the polygon objects of a QuPath/GeoJSON file (plain or gzip, any name).

    Accepts a FeatureCollection, a bare list of Features (QuPath's default export), a single Feature or
    a bare Polygon/MultiPolygon; current and legacy (QuPath <= 0.3, HoverFast) keys. Only areas are
    kept: Point/LineString/GeometryCollection features are skipped with one logged warning. Raises
    :class:`GeoJSONError` naming the feature (index and id) and the problem for anything malformed.
    """
    path = Path(path)
    data = _load(path)
    try:
        features = _features(data)
    except _FeatureProblem as exc:
        raise GeoJSONError(f"cannot read {path}: {exc}") from None
    objects: list[GeoObject] = []
    skipped: list[str] = []
    for index, feature in enumerate(features):
        try:
            obj = _feature(feature, skipped)
        except _FeatureProblem as exc:
            fid = feature.get("id") if isinstance(feature, dict) else None
            label = f"feature {index}" + (f" (id {fid})" if isinstance(fid, (str, int)) else "")
            raise GeoJSONError(f"cannot read {path}: {label}: {exc}") from None
        if obj is not None:
            objects.append(obj)
    if skipped:
        kinds = ", ".join(sorted(set(skipped)))
        log.warning("%s: %d feature(s) without an area (%s) skipped", path, len(skipped), kinds)
    return objects
