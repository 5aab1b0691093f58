"""Polygons made ready for QuPath, a chunk at a time: rounded, valid, oriented, as coordinate arrays.

QuPath >= 0.6 snaps imported coordinates to a 0.01 px grid and aborts the *whole* import on one
polygon that is invalid after that ("Reduction failed, possible invalid input"), so every written
polygon must be valid after rounding to 2 decimals. RFC 7946 asks exterior rings to have a positive
shoelace area (counter-clockwise in a y-up frame) and holes a negative one.

Everything is done on flat coordinate arrays with shapely's and numpy's vectorised functions (they
release the GIL, so a chunk can be prepared on a thread while the previous one is serialised); only
a polygon that fails the checks goes through the per-polygon repair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from .geojson_types import DECIMALS

log = logging.getLogger("napari_hoverfast.core.geojson")

_POLYGON = shapely.GeometryType.POLYGON
_MULTIPOLYGON = shapely.GeometryType.MULTIPOLYGON


@dataclass(frozen=True)
class PreparedChunk:
    """One chunk of polygons ready to serialise, as a flat ring table.

    ``xy`` holds rounded, oriented float64 coordinates; ring ``r`` is
    ``xy[ring_start[r] : ring_start[r] + ring_length[r]]`` and belongs to input polygon
    ``ring_owner[r]``. Rings are sorted by owner, each polygon's exterior first. ``kept[i]`` says
    whether input polygon ``i`` is written (False: it had to be left out).
    """

    xy: np.ndarray
    ring_start: np.ndarray
    ring_length: np.ndarray
    ring_owner: np.ndarray
    kept: np.ndarray
    repaired: int
    dropped: int

    @property
    def rings(self) -> list[list[np.ndarray] | None]:
        """Per input polygon the list of its ``(k, 2)`` ring arrays, or ``None`` when left out."""
        out: list[list[np.ndarray] | None] = [None] * len(self.kept)
        xy = self.xy
        for s, n, owner in zip(self.ring_start.tolist(), self.ring_length.tolist(), self.ring_owner.tolist(),
                               strict=True):
            rings = out[owner]
            if rings is None:
                out[owner] = [xy[s : s + n]]
            else:
                rings.append(xy[s : s + n])
        return out


def _largest_polygon(geom: BaseGeometry | None) -> Polygon | None:
    """The largest-area polygon part of any geometry (nuclei are single polygons), or None."""
    if geom is None or geom.is_empty:
        return None
    if isinstance(geom, Polygon):
        return geom
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, (Polygon, MultiPolygon))]
    parts = [q for p in parts for q in ([p] if isinstance(p, Polygon) else list(p.geoms))]
    return max(parts, key=lambda p: p.area) if parts else None


def _round(geoms: np.ndarray) -> np.ndarray:
    rounded: np.ndarray = shapely.transform(geoms, lambda xy: np.round(xy, DECIMALS))
    return rounded


def _good(geoms: np.ndarray) -> np.ndarray:
    """Valid, non-empty, positive-area polygons (what QuPath's 0.01 px precision reduction survives)."""
    is_poly = shapely.get_type_id(geoms) == _POLYGON
    good: np.ndarray = is_poly & shapely.is_valid(geoms) & (shapely.area(geoms) > 0)
    return good


def repair(geom: Polygon) -> Polygon | None:
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
    for candidate in (part, _largest_polygon(shapely.set_precision(part, 10.0**-DECIMALS))):
        if candidate is None:
            continue
        rounded = _round(np.array([candidate], dtype=object))
        if _good(rounded)[0]:
            return rounded[0]  # type: ignore[no-any-return]
    return None


def _as_polygons(chunk: list[Any], start: int) -> np.ndarray:
    """The chunk as an object array of Polygons; a MultiPolygon becomes its largest part."""
    geoms = np.empty(len(chunk), dtype=object)
    geoms[:] = chunk
    not_geom = ~shapely.is_geometry(geoms)
    if not_geom.any():
        bad = int(np.flatnonzero(not_geom)[0])
        raise TypeError(f"polygon {start + bad}: expected a shapely Polygon, got {type(chunk[bad]).__name__}")
    kinds = shapely.get_type_id(geoms)
    for i in np.flatnonzero(kinds != _POLYGON).tolist():
        if kinds[i] != _MULTIPOLYGON:
            raise TypeError(f"polygon {start + i}: expected a shapely Polygon, got a {geoms[i].geom_type}")
        geoms[i] = _largest_polygon(geoms[i])  # nuclei are single polygons: keep the main part
    return geoms


def _ring_table(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ring coordinates of non-empty polygons, flat, and per ring its length and polygon index.

    Polygons without holes (nuclei) need no ring objects: their coordinates are their exterior's.
    """
    present = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
    simple = present & (shapely.get_num_interior_rings(geoms) == 0)
    holed = np.flatnonzero(present & ~simple)
    simple_idx = np.flatnonzero(simple)
    coords = [shapely.get_coordinates(geoms[simple_idx])]
    lengths = [shapely.get_num_coordinates(geoms[simple_idx])]
    owners = [simple_idx]
    if len(holed):
        rings, owner = shapely.get_rings(geoms[holed], return_index=True)
        coords.append(shapely.get_coordinates(rings))
        lengths.append(shapely.get_num_coordinates(rings))
        owners.append(holed[owner])
    return np.concatenate(coords), np.concatenate(lengths).astype(np.intp), np.concatenate(owners)


def _signed_areas(xy: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Shoelace area of each ring (positive = counter-clockwise with y up), computed about the ring's
    first vertex so that large slide coordinates do not cancel the digits of small nuclei."""
    local = xy - np.repeat(xy[starts], lengths, axis=0)
    cross = local[:-1, 0] * local[1:, 1] - local[1:, 0] * local[:-1, 1]
    cross = np.append(cross, 0.0)
    cross[starts + lengths - 1] = 0.0  # the pair that would straddle two rings
    return np.add.reduceat(cross, starts) / 2 if len(starts) else np.zeros(0)


def _orient(xy: np.ndarray, starts: np.ndarray, lengths: np.ndarray, shell: np.ndarray) -> np.ndarray:
    """``xy`` with every exterior ring counter-clockwise and every hole clockwise (y up)."""
    area = _signed_areas(xy, starts, lengths)
    flip = np.where(shell, area < 0, area > 0)
    if not flip.any():
        return xy
    ring_of = np.repeat(np.arange(len(starts)), lengths)
    pos = np.arange(len(xy)) - starts[ring_of]
    pos = np.where(flip[ring_of], lengths[ring_of] - 1 - pos, pos)
    return np.ascontiguousarray(xy[starts[ring_of] + pos])


def _rounded_valid(geoms: np.ndarray, xy: np.ndarray, rounded: np.ndarray, lengths: np.ndarray,
                   owners: np.ndarray, starts: np.ndarray, shell: np.ndarray) -> np.ndarray:
    """Per polygon: is it valid with positive area once rounded? Builds only the polygons whose
    coordinates rounding changed (outlines already on the grid are checked as they are)."""
    ok = np.zeros(len(geoms), dtype=bool)
    if not len(xy):
        return ok
    # a polygon's coordinates are consecutive (its rings are), so per-polygon flags are one reduceat
    first = starts[shell]
    polygon = owners[shell]
    diff = rounded != xy
    finite = np.isfinite(rounded)
    moved = np.zeros(len(geoms), dtype=bool)
    moved[polygon] = np.logical_or.reduceat(diff[:, 0] | diff[:, 1], first)
    usable = np.zeros(len(geoms), dtype=bool)
    usable[polygon] = np.logical_and.reduceat(finite[:, 0] & finite[:, 1], first)
    same = np.zeros(len(geoms), dtype=bool)
    same[polygon] = True
    same &= ~moved
    ok[same] = _good(geoms[same])
    build = moved & usable
    if build.any():
        ring_sel = build[owners]
        rings = shapely.linearrings(
            rounded[np.repeat(ring_sel, lengths)],
            indices=np.repeat(np.arange(int(ring_sel.sum())), lengths[ring_sel]),
        )
        ring_owner = owners[ring_sel]
        if len(rings) == int(build.sum()):  # no holes: one ring per polygon
            ok[ring_owner] = _good(shapely.polygons(rings))
        else:  # polygons(indices=) wants each polygon's rings together, exterior first, sorted
            order = np.argsort(ring_owner, kind="stable")
            _, poly_ids = np.unique(ring_owner[order], return_inverse=True)
            ok[np.flatnonzero(build)] = _good(shapely.polygons(rings[order], indices=poly_ids))
    return ok


def prepare_chunk(chunk: list[Any], start: int, path: Path) -> PreparedChunk:
    """Round, validate, repair and orient one chunk of input polygons (numbered from ``start``).

    Raises ``TypeError`` naming the polygon for anything that is not a (Multi)Polygon.
    """
    geoms = _as_polygons(chunk, start)
    xy, lengths, owners = _ring_table(geoms)
    rounded = np.round(xy, DECIMALS)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    shell = np.ones(len(owners), dtype=bool)
    shell[1:] = owners[1:] != owners[:-1]  # a polygon's rings are consecutive, exterior first
    ok = _rounded_valid(geoms, xy, rounded, lengths, owners, starts, shell)
    oriented = _orient(rounded, starts, lengths, shell)

    keep_ring = ok[owners]
    ring_start, ring_length, ring_owner = starts[keep_ring], lengths[keep_ring], owners[keep_ring]
    kept = ok.copy()
    extra: list[np.ndarray] = []  # coordinates of repaired polygons, appended after ``oriented``
    extra_rings: list[tuple[int, int, int]] = []
    size = len(oriented)
    repaired = dropped = 0
    for i in np.flatnonzero(~ok).tolist():  # Python ints (numpy ints upset some log handlers)
        fixed = repair(geoms[i]) if geoms[i] is not None else None
        if fixed is None:
            dropped += 1
            log.warning(
                "%s: polygon %d is not a valid polygon after rounding to 0.01 px and cannot be repaired "
                "(%s); it is left out",
                path, start + i, _why(geoms[i]),
            )
            continue
        repaired += 1
        kept[i] = True
        log.debug("%s: polygon %d repaired (%s)", path, start + i, _why(geoms[i]))
        fixed = shapely.orient_polygons(fixed, exterior_cw=False)
        for ring in (fixed.exterior, *fixed.interiors):
            coords = np.ascontiguousarray(shapely.get_coordinates(ring))
            extra_rings.append((size, len(coords), i))
            extra.append(coords)
            size += len(coords)
    if extra:
        oriented = np.concatenate([oriented, *extra])
        more = np.array(extra_rings, dtype=np.intp).reshape(-1, 3)
        ring_start = np.concatenate([ring_start, more[:, 0]])
        ring_length = np.concatenate([ring_length, more[:, 1]])
        ring_owner = np.concatenate([ring_owner, more[:, 2]])
    if len(ring_owner) > 1 and (np.diff(ring_owner) < 0).any():  # holed and repaired polygons come last
        order = np.argsort(ring_owner, kind="stable")  # each polygon's rings together, exterior first
        ring_start, ring_length, ring_owner = ring_start[order], ring_length[order], ring_owner[order]
    return PreparedChunk(oriented, ring_start, ring_length, ring_owner, kept, repaired, dropped)


def _why(geom: Polygon | None) -> str:
    if geom is None or geom.is_empty:
        return "empty"
    rounded = _round(np.array([geom], dtype=object))[0]
    return shapely.is_valid_reason(rounded) if rounded is not None else "empty"
