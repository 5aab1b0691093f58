"""The careful reading of one GeoJSON feature: every field checked, every problem named.

:mod:`.geojson_read` reads ordinary files with vectorised code and sends here every feature that is
not in the common shape or that fails a vectorised check, so that a malformed file always ends in
the same precise message ("feature 12 (id …): geometry ring 0 is not closed"). Accepts what QuPath
accepts (``/work/shared/reference/QUPATH_GEOJSON.md``): current and legacy (QuPath <= 0.3, HoverFast)
keys, measurements as an object or as a ``[{name, value}]`` list, classifications as a string,
``{name|names, color}`` or legacy ``{name, colorRGB}``.

Hostile values are problems too, never a crash: coordinates must be JSON numbers (not strings or
booleans, which numpy would silently convert), and a number too large for a float is named.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from shapely.geometry import MultiPolygon, Polygon

from .geojson_types import GeoObject, show

log = logging.getLogger("napari_hoverfast.core.geojson")

LEGACY_TYPES = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tmaCore",
    "PathRootObject": "root",
    "tma_core": "tmaCore",
}
KNOWN_TYPES = {"annotation", "detection", "cell", "tile", "tmaCore", "root"}
NON_AREA_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString", "GeometryCollection")


class FeatureProblem(ValueError):
    """A problem inside one feature; the reader turns it into a GeoJSONError naming the feature."""


class TooLong:
    """An integer literal with more digits than Python converts (``sys.get_int_max_str_digits``);
    the JSON fallback parser puts one where such a number stood, so that the feature is named."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def parse_int(text: str) -> int | TooLong:
    """``parse_int`` of the standard-library JSON fallback: refuse nothing, convert what fits."""
    try:
        return int(text)
    except ValueError:
        return TooLong(len(text))


def _kind(value: Any) -> str:
    if isinstance(value, TooLong):
        return f"an integer of {value.digits} digits"
    names = {bool: "a boolean", str: "a string", type(None): "a null", list: "a list", dict: "an object"}
    return names.get(type(value), f"a {type(value).__name__}")


def _ring(ring: Any, where: str) -> np.ndarray:
    if not isinstance(ring, list):
        raise FeatureProblem(f"{where} is not a list of [x, y] number pairs")
    for j, position in enumerate(ring):
        if not isinstance(position, list) or len(position) not in (2, 3):
            raise FeatureProblem(f"{where} is not a list of [x, y] number pairs (position {j} is {show(position)})")
        for value in position:
            if type(value) not in (int, float):
                what = "too large for a coordinate" if isinstance(value, TooLong) else "not a number"
                raise FeatureProblem(
                    f"{where} is not a list of [x, y] number pairs (position {j} holds {_kind(value)}, {what})"
                )
    try:
        xy = np.array([p[:2] for p in ring], dtype=np.float64).reshape(-1, 2)
    except OverflowError:
        raise FeatureProblem(f"{where} has a coordinate too large for a floating-point number") from None
    if len(xy) < 4:
        raise FeatureProblem(f"{where} has {len(xy)} positions; a closed ring needs at least 4")
    if not np.isfinite(xy).all():
        raise FeatureProblem(f"{where} has a non-finite coordinate")
    if not (xy[0] == xy[-1]).all():
        raise FeatureProblem(f"{where} is not closed (first {xy[0].tolist()} != last {xy[-1].tolist()})")
    return xy


def _polygon(rings: Any, where: str) -> Polygon:
    if not isinstance(rings, list) or not rings:
        raise FeatureProblem(f"{where} has no rings")
    parsed = [_ring(r, f"{where} ring {i}") for i, r in enumerate(rings)]
    return Polygon(parsed[0], parsed[1:])


def geometry(geom: Any, where: str) -> Polygon | MultiPolygon | None:
    """A shapely polygon from a GeoJSON geometry, None for a non-area type (skipped), or a problem."""
    if geom is None:
        raise FeatureProblem(f"{where} missing")
    if not isinstance(geom, dict):
        raise FeatureProblem(f"{where} is not a JSON object")
    kind = geom.get("type")
    if kind in NON_AREA_TYPES:
        return None
    if kind not in ("Polygon", "MultiPolygon"):
        raise FeatureProblem(f"{where} has unknown type {show(kind)}")
    if "coordinates" not in geom:
        raise FeatureProblem(f"{where} has no 'coordinates'")
    coords = geom["coordinates"]
    if kind == "Polygon":
        return _polygon(coords, where)
    if not isinstance(coords, list) or not coords:
        raise FeatureProblem(f"{where} MultiPolygon has no polygons")
    return MultiPolygon([_polygon(p, f"{where} polygon {i}") for i, p in enumerate(coords)])


def _unpack_rgb(packed: int) -> tuple[int, int, int]:
    """QuPath's packed (A)RGB int, e.g. HoverFast's ``colorRGB: -65536`` = red."""
    return ((packed >> 16) & 255, (packed >> 8) & 255, packed & 255)


def color(value: Any) -> tuple[int, int, int] | None:
    """An RGB colour from QuPath's packed int or ``[r, g, b(, a)]``; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _unpack_rgb(value)
    if (isinstance(value, list) and len(value) in (3, 4)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return (value[0] & 255, value[1] & 255, value[2] & 255)
    return None


def classification(value: Any) -> tuple[str | None, tuple[int, int, int] | None]:
    """(name, colour) from the string, ``{name|names, color}`` or legacy ``{name, colorRGB}`` forms."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, None
    if not isinstance(value, dict):
        raise FeatureProblem(f"classification is {_kind(value)}; expected a string or an object")
    if "names" in value and isinstance(value["names"], list):
        names = value["names"]
        if not all(isinstance(n, str) for n in names):
            raise FeatureProblem(f"classification names {show(names)} are not all strings")
        name = ": ".join(names) or None
    else:
        name = value.get("name")
        if name is not None and not isinstance(name, str):
            raise FeatureProblem(f"classification name {show(name)} is not a string")
    rgb = color(value["colorRGB"]) if "colorRGB" in value else color(value.get("color"))
    return name, rgb


def _number(value: Any, key: str) -> float | None:
    if isinstance(value, bool) or value is None:
        return None  # QuPath skips these with a warning
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            raise FeatureProblem(f"measurement {key!r} is too large for a floating-point number") from None
    if isinstance(value, str):
        try:
            return float(value)  # "NaN", "Infinity", "-inf" and numeric strings, as QuPath >= 0.5
        except ValueError:
            pass
    raise FeatureProblem(f"measurement {key!r} is not a number: {show(value)}")


def measurements(value: Any) -> dict[str, float]:
    """Measurements as floats under their names as written; null/boolean values are skipped."""
    if value is None:
        return {}
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):  # legacy (QuPath <= 0.3): [{"name": ..., "value": ...}, ...]
        items = []
        for i, item in enumerate(value):
            if not (isinstance(item, dict) and isinstance(item.get("name"), str) and "value" in item):
                raise FeatureProblem(f"measurement {i} is not a {{name, value}} object")
            items.append((item["name"], item["value"]))
    else:
        raise FeatureProblem(f"measurements is {_kind(value)}; expected an object")
    out = {}
    for key, raw in items:
        number = _number(raw, key)
        if number is not None:
            out[key] = number
    return out


def object_type(props: dict[str, Any], fid: Any) -> tuple[str, Any]:
    """(QuPath object type, id) of a feature, with QuPath's fallbacks and legacy forms."""
    kind = props.get("objectType", props.get("object_type", props.get("type")))
    if fid in LEGACY_TYPES and kind is None:  # QuPath 0.2 stored the type in "id"
        kind, fid = fid, None
    if kind is None:
        return "annotation", fid  # QuPath's default for a feature without a type
    if not isinstance(kind, str):
        raise FeatureProblem(f"objectType {show(kind)} is not a string")
    kind = LEGACY_TYPES.get(kind, kind)
    if kind not in KNOWN_TYPES:
        log.warning("unknown objectType %s read as 'annotation' (as QuPath does)", show(kind))
        kind = "annotation"
    return kind, fid


def feature(data: Any, skipped: list[str]) -> GeoObject | None:
    """The object of one feature, None for one without an area (its type goes to ``skipped``)."""
    if not isinstance(data, dict):
        raise FeatureProblem(f"is a JSON {type(data).__name__}, not a Feature object")
    kind = data.get("type", "Feature")
    if kind != "Feature":
        raise FeatureProblem(f"type is {show(kind)}, expected 'Feature'")
    props = data.get("properties", {})
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise FeatureProblem("properties is not a JSON object")
    fid = data.get("id")
    if fid is not None and (type(fid) not in (str, int, float)):
        raise FeatureProblem(f"id {show(fid)} is not a string")
    kind, fid = object_type(props, fid)
    fid = None if fid is None else fid if isinstance(fid, str) else show(fid)

    geom = geometry(data.get("geometry"), "geometry")
    if geom is None:
        skipped.append(str(data["geometry"].get("type")))
        return None
    nucleus = None
    if data.get("nucleusGeometry") is not None:
        nucleus = geometry(data["nucleusGeometry"], "nucleusGeometry")

    name = props.get("name")
    if name is not None and not isinstance(name, str):
        raise FeatureProblem(f"name {show(name)} is not a string")
    class_name, class_color = classification(props.get("classification"))
    own_color = color(props.get("color")) if props.get("color") is not None else None
    return GeoObject(
        geometry=geom,
        object_type=kind,
        name=name,
        classification=class_name,
        color=own_color or class_color,
        measurements=measurements(props.get("measurements")),
        id=fid,
        nucleus=nucleus,
        classification_color=class_color,
    )
