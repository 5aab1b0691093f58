"""Vectorised reading of the features in the common shape; all others go to the careful reader.

One pass over the parsed features picks those in the common shape (a Feature with a Polygon, an
optional ``nucleusGeometry`` Polygon, ordinary properties) and gathers them as columns; their
coordinates become one float array per chunk of polygons, are checked (numbers, closed rings of
>= 4 finite positions) and become polygons in two vectorised shapely calls. Every other feature,
and every feature that fails a vectorised check, is read by :mod:`.geojson_parse`, in file order, so
a file with a problem ends in the exact error naming the first bad feature whichever path saw it.
"""

from __future__ import annotations

import array
from itertools import chain, compress
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from . import geojson_parse as parse
from .geojson_coords import parse_polygons
from .geojson_parse import FeatureProblem
from .geojson_types import GeoColumns, GeoJSONError, GeoObject, show

_NOT_SEEN: Any = object()
_BUILD_CHUNK = 32768  # polygons built together


class _Uncommon(Exception):
    """Internal: a feature not in the common shape; the careful reader takes it."""


def _polygon_rings(geom: Any) -> list[Any]:
    """The ring lists of a Polygon geometry in the common shape, else :class:`_Uncommon`."""
    if type(geom) is not dict or geom.get("type") != "Polygon":
        raise _Uncommon
    rings = geom.get("coordinates")
    if type(rings) is not list or not rings or any(type(r) is not list for r in rings):
        raise _Uncommon
    return rings


class _Scan:
    """The features in the common shape as columns (one list per :class:`GeoObject` field), their
    rings for one vectorised build, and the indices of all other features (for the careful reader)."""

    def __init__(self, features: list[Any], *, placeholders: bool = False) -> None:
        self.placeholders = placeholders  # coordinates are the int placeholders of .geojson_coords
        self.index: list[int] = []
        self.kind: list[str] = []
        self.name: list[str | None] = []
        self.class_name: list[str | None] = []
        self.color: list[tuple[int, int, int] | None] = []
        self.values: list[dict[str, Any]] = []
        self.fid: list[str | None] = []
        self.class_color: list[tuple[int, int, int] | None] = []
        self.rings: list[list[Any]] = []
        self.nucleus: dict[int, list[Any]] = {}  # position in the columns → nucleus rings
        self.careful: list[int] = []
        self._run(features)

    def _run(self, features: list[Any]) -> None:  # noqa: C901 - one tight loop on purpose (1M iterations)
        classes: dict[tuple[Any, ...], tuple[int, int, int] | None] = {}
        known, legacy, classification, color = parse.KNOWN_TYPES, parse.LEGACY_TYPES, parse.classification, parse.color
        placeholders = self.placeholders
        for index, data in enumerate(features):
            try:
                geom = data["geometry"]
                rings = geom["coordinates"]
                if (type(data) is not dict or type(geom) is not dict or geom["type"] != "Polygon"
                        or data.get("type", "Feature") != "Feature"):
                    raise _Uncommon
                if placeholders:
                    if type(rings) is not int:
                        raise _Uncommon
                elif type(rings) is not list or not rings or any(type(ring) is not list for ring in rings):
                    raise _Uncommon
                nucleus = data.get("nucleusGeometry")
                nucleus_rings = None if nucleus is None else _polygon_rings(nucleus)
                props = data.get("properties")
                if props is None:
                    props = {}
                elif type(props) is not dict:
                    raise _Uncommon
                fid = data.get("id")
                if fid is not None and type(fid) is not str:
                    raise _Uncommon
                kind = props.get("objectType")
                if kind is None:
                    if "object_type" in props or "type" in props or fid in legacy:
                        raise _Uncommon
                    kind = "annotation"
                elif kind not in known:
                    raise _Uncommon
                name = props.get("name")
                if name is not None and type(name) is not str:
                    raise _Uncommon
                cls = props.get("classification")
                class_rgb = None
                if cls is None:
                    class_name = None
                elif type(cls) is dict and type(class_name := cls.get("name")) is str and type(c := cls.get("color")) is list \
                        and len(c) == 3 and type(c[0]) is int and type(c[1]) is int and type(c[2]) is int and len(cls) == 2:
                    key = (class_name, c[0], c[1], c[2])  # QuPath's own form; a few distinct classes per file
                    class_rgb = classes.get(key, _NOT_SEEN)
                    if class_rgb is _NOT_SEEN:
                        class_rgb = classes[key] = color(c)
                else:
                    class_name, class_rgb = classification(cls)
                own = props.get("color")
                rgb = (color(own) if own is not None else None) or class_rgb
                values = props.get("measurements")
                if values is None:
                    values = {}
                elif type(values) is not dict:
                    raise _Uncommon
            except (_Uncommon, FeatureProblem, KeyError, TypeError, AttributeError):
                self.careful.append(index)
                continue
            if nucleus_rings is not None:
                self.nucleus[len(self.index)] = nucleus_rings
            self.index.append(index)
            self.kind.append(kind)
            self.name.append(name)
            self.class_name.append(class_name)
            self.color.append(rgb)
            self.values.append(values)
            self.fid.append(fid)
            self.class_color.append(class_rgb)
            self.rings.append(rings)


def _bad_positions(positions: list[Any], values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Positions holding a boolean: Python's ``True``/``False`` pass as 1.0/0.0 into a float array, so
    the few values that are exactly 0 or 1 are looked up in the parsed objects."""
    suspects = np.flatnonzero((values == 0.0) | (values == 1.0))
    if not len(suspects):
        return suspects
    pos = np.searchsorted(starts, suspects, side="right") - 1
    offsets = (suspects - starts[pos]).tolist()
    flags = [type(positions[p][k]) is bool for p, k in zip(pos.tolist(), offsets, strict=True)]
    return np.unique(pos[np.asarray(flags, dtype=bool)])


def _build(polygons: list[list[Any]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Shapely polygons from ring lists, vectorised: (polygons, per-input ok mask); an input that fails
    a check gets ``ok = False`` (and no polygon). ``None`` when the coordinates are not all numbers
    (a string, null, list or huge integer somewhere; booleans are found and marked not ok)."""
    n = len(polygons)
    if not n:
        return np.empty(0, dtype=object), np.ones(0, dtype=bool)
    rings = list(chain.from_iterable(polygons))
    ring_counts = np.fromiter(map(len, polygons), dtype=np.intp, count=n)
    ring_lens = np.fromiter(map(len, rings), dtype=np.intp, count=len(rings))
    positions = list(chain.from_iterable(rings))
    try:
        pos_lens = np.fromiter(map(len, positions), dtype=np.intp, count=len(positions))
        values = np.frombuffer(array.array("d", chain.from_iterable(positions)), dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # a string, null, list or huge integer somewhere
        return None
    pos_starts = np.cumsum(pos_lens) - pos_lens
    pos_ok = (pos_lens == 2) | (pos_lens == 3)
    pos_ok[_bad_positions(positions, values, pos_starts)] = False
    del positions
    if (pos_lens == 2).all():
        xy = values.reshape(-1, 2)
    else:
        x_at = np.minimum(pos_starts, max(len(values) - 2, 0))
        xy = np.stack([values[x_at], values[x_at + 1]], axis=1) if len(values) >= 2 else np.zeros((len(pos_lens), 2))

    ring_starts = np.cumsum(ring_lens) - ring_lens
    ring_ok = ring_lens >= 4
    if len(xy):
        first = xy[np.minimum(ring_starts, len(xy) - 1)]
        last = xy[np.clip(ring_starts + ring_lens - 1, 0, len(xy) - 1)]
        ring_ok &= (first[:, 0] == last[:, 0]) & (first[:, 1] == last[:, 1])
        finite = np.isfinite(xy)
        coord_ok = finite[:, 0] & finite[:, 1] & pos_ok
        nonempty = ring_lens > 0
        ring_ok[nonempty] &= np.logical_and.reduceat(coord_ok, ring_starts[nonempty])
    # every polygon has >= 1 ring (the scan saw to it), so its rings' flags are one reduceat
    ok = np.logical_and.reduceat(ring_ok, np.cumsum(ring_counts) - ring_counts)

    if ok.all():
        kept_rings = shapely.linearrings(xy, indices=np.repeat(np.arange(len(rings)), ring_lens))
        kept_counts = ring_counts
    else:
        ring_sel = np.repeat(ok, ring_counts)
        kept_rings = shapely.linearrings(
            xy[np.repeat(ring_sel, ring_lens)],
            indices=np.repeat(np.arange(int(ring_sel.sum())), ring_lens[ring_sel]),
        ) if ring_sel.any() else np.empty(0, dtype=object)
        kept_counts = ring_counts[ok]
    if (kept_counts == 1).all():
        built = shapely.polygons(kept_rings)
    else:
        built = shapely.polygons(kept_rings, indices=np.repeat(np.arange(len(kept_counts)), kept_counts))
    return built, ok


def _build_all(polygons: list[list[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_build` a chunk at a time: ~2x less CPU for a million polygons (the temporaries stay
    small enough to be reused rather than freshly mapped). A chunk with something that is not a
    number in its coordinates is all ``ok = False``: the careful reader names the culprit."""
    shapes, oks = [], []
    for start in range(0, len(polygons), _BUILD_CHUNK):
        chunk = polygons[start : start + _BUILD_CHUNK]
        built = _build(chunk)
        if built is None:
            built = np.empty(0, dtype=object), np.zeros(len(chunk), dtype=bool)
        shapes.append(built[0])
        oks.append(built[1])
    if not shapes:
        return np.empty(0, dtype=object), np.ones(0, dtype=bool)
    return np.concatenate(shapes), np.concatenate(oks)


def _float_measurements(values: list[dict[str, Any]]) -> list[dict[str, float] | None]:
    """The measurement dicts as floats; one that needs the careful reading becomes ``None``.

    The common case (all JSON floats, as QuPath and our writer write them) is checked in one pass and
    keeps the parsed dicts; ints are converted; strings (``"NaN"``), nulls and the rest go through
    :func:`.geojson_parse.measurements`.
    """
    present = [v for v in values if v]
    kinds = set(map(type, chain.from_iterable(map(dict.values, present))))
    if kinds <= {float}:
        return values  # type: ignore[return-value]  # all floats, as checked
    out: list[dict[str, float] | None] = []
    for v in values:
        if not v or all(type(x) is float for x in v.values()):
            out.append(v)
            continue
        try:
            out.append(parse.measurements(v))
        except FeatureProblem:
            out.append(None)
    return out


def _label(index: int, data: Any) -> str:
    fid = data.get("id") if isinstance(data, dict) else None
    if isinstance(fid, str):
        return f"feature {index} (id {fid[:80]}{'…' if len(fid) > 80 else ''})"
    if isinstance(fid, int) and not isinstance(fid, bool):
        return f"feature {index} (id {show(fid)})"
    return f"feature {index}"


def objects_of(features: list[Any], path: Path, offset: int, skipped: list[str]) -> list[GeoObject]:
    """The objects of ``features`` (feature ``i`` is the file's feature ``offset + i``); the types of
    features without an area go to ``skipped``. Raises GeoJSONError naming the first bad feature."""
    scan = _Scan(features)
    n = len(scan.index)
    with_nucleus = list(scan.nucleus)
    shapes, ok = _build_all(scan.rings + [scan.nucleus[p] for p in with_nucleus])
    careful = scan.careful
    objects: list[GeoObject] = []
    keep: list[bool] = []
    if n:
        placed = np.empty(len(ok), dtype=object)
        placed[ok] = shapes
        good = ok[:n].copy()
        nuclei: list[Any] = [None] * n
        for position, shape, fine in zip(with_nucleus, placed[n:].tolist(), ok[n:].tolist(), strict=True):
            nuclei[position] = shape
            good[position] &= fine
        values = _float_measurements(scan.values)
        if values is not scan.values:
            good &= np.fromiter((v is not None for v in values), dtype=bool, count=n)
        keep = good.tolist()
        columns = (placed[:n].tolist(), scan.kind, scan.name, scan.class_name, scan.color, values, scan.fid,
                   nuclei, scan.class_color)
        objects = list(map(GeoObject, *(compress(c, keep) for c in columns)))
        if not careful and good.all():
            return objects
        careful = sorted(careful + list(compress(scan.index, (not k for k in keep))))

    results: list[GeoObject | None] = [None] * len(features)
    for index, obj in zip(compress(scan.index, keep), objects, strict=True):
        results[index] = obj
    for index in careful:
        try:
            results[index] = parse.feature(features[index], skipped)
        except FeatureProblem as exc:
            raise GeoJSONError(f"cannot read {path}: {_label(offset + index, features[index])}: {exc}") from None
    return [obj for obj in results if obj is not None]


def placed_columns(features: list[Any], arrays: list[memoryview]) -> GeoColumns | None:
    """The columns of ``features`` whose coordinates are placeholders for ``arrays`` (see
    :mod:`.geojson_coords`), or ``None`` for anything but the plainest file: a feature the careful
    reader would have to see, a cell, a placeholder out of place, odd coordinates or measurements.
    The caller then reads the original text the ordinary way, which names any problem exactly."""
    scan = _Scan(features, placeholders=True)
    if scan.careful or scan.nucleus or len(scan.index) != len(features) or scan.rings != list(range(len(arrays))):
        return None
    polygons = parse_polygons(arrays)
    if polygons is None:
        return None
    values = _float_measurements(scan.values)
    if values is not scan.values and any(v is None for v in values):
        return None
    return GeoColumns(polygons.tolist(), scan.kind, scan.name, scan.class_name, scan.color,
                      values, scan.fid, scan.class_color)  # type: ignore[arg-type]
