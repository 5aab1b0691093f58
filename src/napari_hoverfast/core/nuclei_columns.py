"""The columns behind :class:`~.nuclei.Nuclei`: computed from polygons, or gathered from a GeoJSON file.

Kept apart from the container so that it stays about storage (buffers, ids, selection). Two jobs:

* :func:`computed_columns`: geometry (area, perimeter, centroid) and shape for a batch of polygons,
  with shapely's vectorised functions; the centroid is taken from the file when it carries one for
  every nucleus (shapely's centroid is the slowest of the three for a million polygons);
* :class:`FileColumns`: what a GeoJSON file holds for each nucleus (polygon, class, measurements by
  name), gathered a piece of the file at a time (:func:`.geojson_read.read_parts`), so a million
  nuclei are never a million :class:`GeoObject` at once. Measurements that every object in a piece
  has under the same names (our own exports, QuPath's) become columns with one flat copy.
"""

from __future__ import annotations

import array
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import MultiPolygon, Polygon

from . import measurements as m
from .geojson_types import GeoColumns, GeoObject

#: What ``measurements.shape_measurements`` returns, and the columns it fills.
SHAPE_KEYS = ("circularity", "solidity", "eccentricity", "max_caliper", "min_caliper", "major_axis", "minor_axis")


def per_row(value: Any, n: int, name: str, dtype: Any) -> np.ndarray:
    """``value`` as an (n,) array: a scalar is broadcast, an array must have n entries."""
    if dtype is object:
        items = [value] * n if value is None or isinstance(value, str) else list(value)
        if len(items) != n:
            raise ValueError(f"{name} has {len(items)} entries; expected one or {n} for {n} polygons")
        arr = np.empty(n, dtype=object)
        arr[:] = items
        return arr
    arr = np.array(value, dtype=dtype)  # a copy: the container makes its arrays read-only
    if arr.ndim == 0:
        return np.full(n, arr, dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}; expected a scalar or ({n},) for {n} polygons")
    return arr


def _checked(polygons: Sequence[Polygon] | np.ndarray) -> np.ndarray:
    geoms = np.empty(len(polygons), dtype=object)
    geoms[:] = list(polygons)
    if len(geoms):
        ok = shapely.is_geometry(geoms)
        ok[ok] = shapely.get_type_id(geoms[ok]) == shapely.GeometryType.POLYGON
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise TypeError(f"polygon {i}: expected a shapely Polygon, got {type(geoms[i]).__name__}")
        empty = shapely.is_empty(geoms) | ~(shapely.area(geoms) > 0)
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise ValueError(f"polygon {i} is empty (no area): a nucleus needs an outline that encloses pixels")
    return geoms


def computed_columns(polygons: Sequence[Polygon] | np.ndarray, probability: npt.ArrayLike, tile: npt.ArrayLike,
                     ids: np.ndarray, classification: Any, mpp: float | None, *, shape: bool = True,
                     centroid: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """All computed columns for a batch of polygons (shapely-vectorised geometry and shape).

    ``shape=False`` leaves the shape columns NaN: a file that carries them all (our own exports
    do) is read back without recomputing calipers and moments, the slowest part of reading;
    ``centroid`` gives the centroid columns instead of computing them.
    """
    geoms = _checked(polygons)
    n = len(geoms)
    area = shapely.area(geoms).astype(np.float64)
    length = shapely.length(geoms).astype(np.float64)
    if centroid is None:
        centroids = shapely.centroid(geoms)
        centroid = shapely.get_x(centroids).astype(np.float64), shapely.get_y(centroids).astype(np.float64)
    values = m.shape_measurements(geoms) if shape else {k: np.full(n, np.nan) for k in SHAPE_KEYS}
    scale = mpp if mpp is not None else math.nan
    return {
        "ids": ids,
        "polygons": geoms,
        "centroid_x": centroid[0],
        "centroid_y": centroid[1],
        "area_px": area,
        "area_um2": area * scale * scale,
        "perimeter_um": length * scale,
        "circularity": values["circularity"],
        "solidity": values["solidity"],
        "max_caliper_um": values["max_caliper"] * scale,
        "min_caliper_um": values["min_caliper"] * scale,
        "major_axis_um": values["major_axis"] * scale,
        "minor_axis_um": values["minor_axis"] * scale,
        "eccentricity": values["eccentricity"],
        "probability": per_row(probability, n, "probability", np.float64),
        "tile": per_row(tile, n, "tile", np.int64),
        "classification": per_row(classification, n, "classification", object),
    }


def measurement_columns(values: list[dict[str, float]]) -> dict[str, np.ndarray]:
    """Per-object measurement dicts as columns by name (NaN where an object lacks one), names in
    the order they first appear. When every dict has the same names in the same order, one flat
    copy does it (~10x faster than a lookup per name and object)."""
    n = len(values)
    if not n:
        return {}
    names = tuple(values[0])
    if names and len(set(map(tuple, values))) == 1:
        flat = np.frombuffer(array.array("d", chain.from_iterable(map(dict.values, values))), dtype=np.float64)
        block = flat.reshape(n, len(names))
        return {name: np.ascontiguousarray(block[:, j]) for j, name in enumerate(names)}
    order: dict[str, None] = {}
    for v in values:
        order.update(dict.fromkeys(v))
    return {name: np.fromiter((v.get(name, math.nan) for v in values), dtype=np.float64, count=n) for name in order}


@dataclass(frozen=True)
class FileColumns:
    """The nuclei of (a piece of) a file: polygons, stored classes and measurement columns by name."""

    polygons: list[Polygon]
    classes: list[str | None]
    measurements: dict[str, np.ndarray]

    @classmethod
    def of(cls, part: GeoColumns | Iterable[GeoObject]) -> FileColumns:
        """From the fast reader's columns or from objects (a cell counts by its nucleus, a MultiPolygon
        by its largest part)."""
        if isinstance(part, GeoColumns):
            geoms, classes, values = part.geometry, part.classification, part.measurements
        else:
            objs = list(part)
            geoms = [o.nucleus if o.nucleus is not None else o.geometry for o in objs]
            classes, values = [o.classification for o in objs], [o.measurements for o in objs]
        polygons = [max(g.geoms, key=lambda p: p.area) if isinstance(g, MultiPolygon) else g for g in geoms]
        return cls(polygons, list(classes), measurement_columns(values))

    def packed(self) -> tuple[np.ndarray, tuple[np.ndarray, ...], list[str | None], dict[str, np.ndarray]]:
        """The part as arrays that pickle fast (a worker process sends it): shapely's ragged
        coordinates instead of pickled polygons (WKB, ~3× slower to send and rebuild)."""
        _, coords, offsets = shapely.to_ragged_array(self.polygons)
        return coords, offsets, self.classes, self.measurements

    @classmethod
    def unpacked(cls, packed: tuple[np.ndarray, tuple[np.ndarray, ...], list[str | None], dict[str, np.ndarray]]) -> FileColumns:
        """The part :meth:`packed` made."""
        coords, offsets, classes, measurements = packed
        polygons = shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords, offsets)
        return cls(polygons.tolist(), classes, measurements)

    @classmethod
    def concat(cls, parts: list[FileColumns]) -> FileColumns:
        """The pieces one after another; a name some pieces lack is NaN there."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls([], [], {})
        names: dict[str, None] = {}
        for part in parts:
            names.update(dict.fromkeys(part.measurements))
        columns = {
            name: np.concatenate([p.measurements.get(name, np.full(len(p.polygons), math.nan)) for p in parts])
            for name in names
        }
        return cls(list(chain.from_iterable(p.polygons for p in parts)),
                   list(chain.from_iterable(p.classes for p in parts)), columns)


def pack_part(part: GeoColumns) -> tuple[np.ndarray, tuple[np.ndarray, ...], list[str | None], dict[str, np.ndarray]]:
    """In a worker process: the fast reader's columns of a slice as :meth:`FileColumns.packed`."""
    return FileColumns.of(part).packed()
