"""A columnar, append-only container for segmented nuclei.

A run produces nuclei batch by batch; the CLI, the napari widget and the exporters all want columns
(numpy arrays) rather than a list of objects, and want to forward "just the new batch" as it arrives.
:class:`Nuclei` keeps one array per column in capacity-doubling buffers, so appending is amortised O(1)
per nucleus even when a viewer reads the full columns after every batch (the arrays handed out are
read-only views, valid forever because rows are never changed once written).

Geometry columns are computed with shapely 2's vectorised functions at append time, in level-0 pixels;
µm columns use the slide's ``mpp`` (µm per level-0 pixel) and are NaN when it is unknown, in which case
the exports leave them out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import MultiPolygon, Polygon

from .geojson import GeoObject

#: Human-readable column names, shared by GeoJSON measurements, CSV headers and napari features.
AREA_UM2 = "Area µm^2"
PERIMETER_UM = "Perimeter µm"
AREA_PX = "Area px^2"
PROBABILITY = "Probability"
CENTROID_X = "Centroid X px"
CENTROID_Y = "Centroid Y px"
TILE = "Tile"

_DTYPES: dict[str, Any] = {
    "ids": np.int64,
    "polygons": object,
    "centroid_x": np.float64,
    "centroid_y": np.float64,
    "area_px": np.float64,
    "area_um2": np.float64,
    "perimeter_um": np.float64,
    "probability": np.float64,
    "tile": np.int64,
}
_MIN_CAPACITY = 1024


def _check_mpp(mpp: float | None) -> float | None:
    if mpp is None:
        return None
    value = float(mpp)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"mpp must be a positive number of µm per pixel (or None), got {mpp!r}")
    return value


def _per_row(value: npt.ArrayLike, n: int, name: str, dtype: Any) -> np.ndarray:
    """``value`` as an (n,) array: a scalar is broadcast, an array must have n entries."""
    arr = np.array(value, dtype=dtype)  # a copy: the container makes its arrays read-only
    if arr.ndim == 0:
        return np.full(n, arr, dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}; expected a scalar or ({n},) for {n} polygons")
    return arr


class Nuclei:
    """Segmented nuclei as columns: ``ids``, ``polygons`` (level-0 px), centroids, areas, perimeter,
    probability and source tile. Grows with :meth:`append` / :meth:`extend`; rows never change.

    ``ids`` are int64, unique within a container, assigned from a running counter on :meth:`append`
    (they are row identities for the viewer and exports, not GeoJSON UUIDs).
    """

    def __init__(self, mpp: float | None = None) -> None:
        self.mpp: float | None = _check_mpp(mpp)
        self._n = 0
        self._next_id = 0
        self._buf: dict[str, np.ndarray] = {k: np.empty(0, dtype=d) for k, d in _DTYPES.items()}

    # ---- construction -----------------------------------------------------------------------

    @classmethod
    def _from_columns(cls, mpp: float | None, columns: dict[str, np.ndarray], next_id: int) -> Nuclei:
        out = cls(mpp)
        out._buf = dict(columns)
        out._n = len(columns["ids"])
        out._next_id = next_id
        return out

    def _compute(self, polygons: Sequence[Polygon] | np.ndarray, probability: npt.ArrayLike,
                 tile: npt.ArrayLike, ids: np.ndarray) -> dict[str, np.ndarray]:
        """All columns for a batch of polygons (shapely-vectorised geometry)."""
        geoms = np.empty(len(polygons), dtype=object)
        geoms[:] = list(polygons)
        n = len(geoms)
        if n:
            ok = shapely.is_geometry(geoms)
            ok[ok] = shapely.get_type_id(geoms[ok]) == shapely.GeometryType.POLYGON
            if not ok.all():
                i = int(np.flatnonzero(~ok)[0])
                raise TypeError(f"polygon {i}: expected a shapely Polygon, got {type(geoms[i]).__name__}")
        area = shapely.area(geoms).astype(np.float64)
        length = shapely.length(geoms).astype(np.float64)
        centroids = shapely.centroid(geoms)
        mpp = self.mpp if self.mpp is not None else math.nan
        return {
            "ids": ids,
            "polygons": geoms,
            "centroid_x": shapely.get_x(centroids).astype(np.float64),
            "centroid_y": shapely.get_y(centroids).astype(np.float64),
            "area_px": area,
            "area_um2": area * mpp * mpp,
            "perimeter_um": length * mpp,
            "probability": _per_row(probability, n, "probability", np.float64),
            "tile": _per_row(tile, n, "tile", np.int64),
        }

    def _push(self, columns: dict[str, np.ndarray]) -> None:
        """Copy a batch's columns into the buffers, doubling their capacity when full."""
        k = len(columns["ids"])
        if k == 0:
            return
        need = self._n + k
        if need > len(self._buf["ids"]):
            capacity = max(need, 2 * len(self._buf["ids"]), _MIN_CAPACITY)
            for name, old in self._buf.items():
                new = np.empty(capacity, dtype=old.dtype)
                new[: self._n] = old[: self._n]
                self._buf[name] = new
        for name, values in columns.items():
            self._buf[name][self._n : need] = values
        self._n = need

    def append(self, polygons: Sequence[Polygon] | np.ndarray, probability: npt.ArrayLike,
               tile: npt.ArrayLike) -> Nuclei:
        """Add a batch of nuclei and return it as its own :class:`Nuclei` (same ids, same mpp).

        ``polygons`` are shapely Polygons in level-0 pixels; ``probability`` (mean nucleus probability,
        0..1) and ``tile`` (source tile index) are one value per polygon or a scalar for all.
        Polygons are stored as given: they should be valid (shapely's area of a self-intersecting
        polygon is meaningless); ``formats.write_geojson`` repairs what QuPath would reject.
        """
        n = len(polygons)
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        columns = self._compute(polygons, probability, tile, ids)
        for values in columns.values():
            values.flags.writeable = False
        self._push(columns)
        self._next_id += n
        return Nuclei._from_columns(self.mpp, columns, self._next_id)

    def extend(self, other: Nuclei) -> None:
        """Append all rows of ``other``, keeping its ids (e.g. batches handed out by another container).

        Raises ValueError if the pixel sizes differ (the µm columns would mix units) or an id is
        already present.
        """
        same = (other.mpp is None and self.mpp is None) or (
            other.mpp is not None and self.mpp is not None and math.isclose(other.mpp, self.mpp, rel_tol=1e-9)
        )
        if not same:
            raise ValueError(f"cannot extend nuclei with mpp={self.mpp} by nuclei with mpp={other.mpp}")
        if not len(other):
            return
        new_ids = other.ids
        if len(self) and new_ids.min() < self._next_id and np.isin(new_ids, self.ids).any():
            raise ValueError("cannot extend: some ids are already present")
        if len(np.unique(new_ids)) != len(new_ids):  # pragma: no cover - containers keep ids unique
            raise ValueError("cannot extend: duplicate ids")
        self._push({name: other._column(name) for name in _DTYPES})
        self._next_id = max(self._next_id, int(new_ids.max()) + 1)

    @classmethod
    def from_geo_objects(cls, objs: Iterable[GeoObject], mpp: float | None) -> Nuclei:
        """Rebuild nuclei from :func:`~napari_hoverfast.core.geojson.read_geojson` objects.

        Every object with an area counts, whatever its type (hand-drawn annotations too); for a cell the
        nucleus geometry is used when present; a MultiPolygon keeps its largest part. Probability and
        tile come from the "Probability" / "Tile" measurements when present (else NaN / -1); geometry
        columns are recomputed, with ``mpp`` for the µm ones. Ids are fresh (GeoJSON ids are UUIDs).
        """
        polygons: list[Polygon] = []
        probability: list[float] = []
        tiles: list[int] = []
        for obj in objs:
            geom = obj.nucleus if obj.nucleus is not None else obj.geometry
            if isinstance(geom, MultiPolygon):
                geom = max(geom.geoms, key=lambda p: p.area)
            polygons.append(geom)
            probability.append(obj.measurements.get(PROBABILITY, math.nan))
            tile = obj.measurements.get(TILE, math.nan)
            tiles.append(int(tile) if math.isfinite(tile) else -1)
        out = cls(mpp)
        out.append(polygons, np.asarray(probability, dtype=np.float64), np.asarray(tiles, dtype=np.int64))
        return out

    # ---- access -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"Nuclei({self._n} nuclei, mpp={self.mpp})"

    @property
    def next_id(self) -> int:
        """The id the next appended nucleus gets: every row appended from now on has an id at least this."""
        return self._next_id

    def _column(self, name: str) -> np.ndarray:
        view = self._buf[name][: self._n]
        view.flags.writeable = False
        return view

    @property
    def ids(self) -> np.ndarray:
        """Unique int64 row ids."""
        return self._column("ids")

    @property
    def polygons(self) -> np.ndarray:
        """Object array of shapely Polygons in level-0 pixels (x right, y down)."""
        return self._column("polygons")

    @property
    def centroid_x(self) -> np.ndarray:
        """Centroid x in level-0 pixels."""
        return self._column("centroid_x")

    @property
    def centroid_y(self) -> np.ndarray:
        """Centroid y in level-0 pixels."""
        return self._column("centroid_y")

    @property
    def area_px(self) -> np.ndarray:
        """Area in level-0 pixels²."""
        return self._column("area_px")

    @property
    def area_um2(self) -> np.ndarray:
        """Area in µm² (NaN when mpp is unknown)."""
        return self._column("area_um2")

    @property
    def perimeter_um(self) -> np.ndarray:
        """Perimeter (exterior and holes) in µm (NaN when mpp is unknown)."""
        return self._column("perimeter_um")

    @property
    def probability(self) -> np.ndarray:
        """Mean nucleus probability, 0..1."""
        return self._column("probability")

    @property
    def tile(self) -> np.ndarray:
        """Index of the tile each nucleus came from."""
        return self._column("tile")

    def select(self, mask_or_indices: npt.ArrayLike) -> Nuclei:
        """The rows picked by a boolean mask or integer indices, as a new container (ids kept)."""
        key = np.asarray(mask_or_indices)
        if key.dtype == bool:
            if key.shape != (self._n,):
                raise ValueError(f"boolean mask has shape {key.shape}; expected ({self._n},)")
        elif key.size == 0:
            key = key.astype(np.int64)
        elif not np.issubdtype(key.dtype, np.integer):
            raise TypeError(f"select needs a boolean mask or integer indices, got dtype {key.dtype}")
        columns = {name: self._column(name)[key] for name in _DTYPES}
        for values in columns.values():
            values.flags.writeable = False
        return Nuclei._from_columns(self.mpp, columns, self._next_id)

    def measurements(self) -> dict[str, np.ndarray]:
        """Per-nucleus measurements by display name, in export order (µm columns only if mpp is known)."""
        out: dict[str, np.ndarray] = {}
        if self.mpp is not None:
            out[AREA_UM2] = self.area_um2
            out[PERIMETER_UM] = self.perimeter_um
        out[AREA_PX] = self.area_px
        out[PROBABILITY] = self.probability
        out[CENTROID_X] = self.centroid_x
        out[CENTROID_Y] = self.centroid_y
        out[TILE] = self.tile
        return out

    def rows(self) -> Iterator[dict[str, float]]:
        """One measurement dict per nucleus, generated lazily (columns converted to Python once).

        The writers (``core/formats.py``) stream these into GeoJSON measurements.
        """
        columns = self.measurements()
        names = list(columns)
        values = [columns[k].tolist() for k in names]
        for row in zip(*values, strict=True):
            yield dict(zip(names, row, strict=True))
