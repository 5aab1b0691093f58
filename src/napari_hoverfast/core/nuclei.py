"""A columnar, append-only container for segmented nuclei.

A run produces nuclei batch by batch; the CLI, the napari widget and the exporters all want columns
(numpy arrays) rather than a list of objects, and want to forward "just the new batch" as it arrives.
:class:`Nuclei` keeps one array per column in capacity-doubling buffers, so appending is amortised O(1)
per nucleus even when a viewer reads the full columns after every batch (the arrays handed out are
read-only views, valid forever because rows are never changed once written).

Geometry and shape columns (``measurements.py``) are computed with shapely 2's vectorised functions
at append time, in level-0 pixels; µm columns use the slide's ``mpp`` (µm per level-0 pixel) and
are NaN when it is unknown, in which case the exports leave them out. Other per-nucleus columns
(the stain measurements of post-processing, or whatever a GeoJSON file carried) travel as *extra*
columns through :meth:`~Nuclei.append`, :meth:`~Nuclei.extend`, :meth:`~Nuclei.select` and
:meth:`~Nuclei.from_geo_objects`; rows that lack one hold NaN. With ``ihc`` set, each nucleus's IHC
class is derived from its DAB OD mean whenever it is asked for, so new thresholds re-classify at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np
import numpy.typing as npt
from shapely.geometry import Polygon

from . import measurements as m
from .geojson import GeoObject
from .geojson_parallel import Packing
from .ihc import SCORE, IhcOptions, class_names
from .nuclei_columns import FileColumns, computed_columns, pack_part
from .nuclei_columns import per_row as _per_row

#: Human-readable column names, shared by GeoJSON measurements, CSV headers and napari features.
#: Those QuPath has use QuPath's names (``measurements.py``); the others are this plugin's.
AREA_UM2 = m.AREA_UM2
PERIMETER_UM = m.PERIMETER_UM
AREA_PX = "Area px^2"
PROBABILITY = "Probability"
CENTROID_X = "Centroid X px"
CENTROID_Y = "Centroid Y px"
TILE = "Tile"
CLASSIFICATION = "Classification"

_DTYPES: dict[str, Any] = {
    "ids": np.int64,
    "polygons": object,
    "centroid_x": np.float64,
    "centroid_y": np.float64,
    "area_px": np.float64,
    "area_um2": np.float64,
    "perimeter_um": np.float64,
    "circularity": np.float64,
    "solidity": np.float64,
    "max_caliper_um": np.float64,
    "min_caliper_um": np.float64,
    "major_axis_um": np.float64,
    "minor_axis_um": np.float64,
    "eccentricity": np.float64,
    "probability": np.float64,
    "tile": np.int64,
    "classification": object,
}
#: Computed columns by display name, in export order: (name, column, is a µm column).
_SHAPE_COLUMNS = (
    (AREA_UM2, "area_um2", True), (PERIMETER_UM, "perimeter_um", True), (m.CIRCULARITY, "circularity", False),
    (m.SOLIDITY, "solidity", False), (m.MAX_CALIPER_UM, "max_caliper_um", True), (m.MIN_CALIPER_UM, "min_caliper_um", True),
    (m.MAJOR_AXIS_UM, "major_axis_um", True), (m.MINOR_AXIS_UM, "minor_axis_um", True), (m.ECCENTRICITY, "eccentricity", False),
)
_TAIL_COLUMNS = (
    (AREA_PX, "area_px", False), (PROBABILITY, "probability", False), (CENTROID_X, "centroid_x", False),
    (CENTROID_Y, "centroid_y", False), (TILE, "tile", False),
)
_FIXED = {name: key for name, key, _ in (*_SHAPE_COLUMNS, *_TAIL_COLUMNS)}
#: how the columns of a large file's slices come back from the worker processes that read them
_PACKING = Packing(pack_part, FileColumns.unpacked)
_SHAPE_KEYS_UM = {"circularity", "solidity", "eccentricity", "max_caliper_um", "min_caliper_um", "major_axis_um", "minor_axis_um"}
_MIN_CAPACITY = 1024


def _check_mpp(mpp: float | None) -> float | None:
    if mpp is None:
        return None
    value = float(mpp)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"mpp must be a positive number of µm per pixel (or None), got {mpp!r}")
    return value


def _frozen(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for values in columns.values():
        values.flags.writeable = False
    return columns


class Nuclei:
    """Segmented nuclei as columns: ``ids``, ``polygons`` (level-0 px), centroids, areas and shape,
    probability, source tile, a stored classification and extra measurement columns. Grows with
    :meth:`append` / :meth:`extend`; rows never change.

    ``ids`` are int64, unique within a container, assigned from a running counter on :meth:`append`
    (they are row identities for the viewer and exports, not GeoJSON UUIDs). ``extra_columns``
    declares extra columns up front, so an empty container already lists them (a layer's features).
    """

    def __init__(self, mpp: float | None = None, *, ihc: IhcOptions | None = None, extra_columns: Iterable[str] = ()) -> None:
        self.mpp: float | None = _check_mpp(mpp)
        #: IHC thresholds: when set, :meth:`classifications` and the "IHC score" column follow them.
        self.ihc: IhcOptions | None = ihc
        self._n = 0
        self._next_id = 0
        self._buf: dict[str, np.ndarray] = {k: np.empty(0, dtype=d) for k, d in _DTYPES.items()}
        self._extra: dict[str, np.ndarray] = {}
        for name in extra_columns:
            self._declare(name)

    # ---- construction -----------------------------------------------------------------------

    @classmethod
    def _from_columns(cls, parent: Nuclei, columns: dict[str, np.ndarray], extra: dict[str, np.ndarray]) -> Nuclei:
        out = cls(parent.mpp, ihc=parent.ihc)
        out._buf = dict(columns)
        out._extra = dict(extra)
        out._n = len(columns["ids"])
        out._next_id = parent._next_id
        return out

    def _declare(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"measurement name {name!r} must be a non-blank string")
        if name in _FIXED or name in (SCORE, CLASSIFICATION):
            raise ValueError(f"{name!r} is a computed column; it cannot be given as a measurement")
        if name not in self._extra:
            self._extra[name] = np.full(len(self._buf["ids"]), np.nan)

    def _extra_batch(self, measurements: Mapping[str, npt.ArrayLike] | None, n: int) -> dict[str, np.ndarray]:
        """A batch's extra columns: every known and new name, NaN where the batch has none."""
        given = {}
        for name, values in (measurements or {}).items():
            self._declare(name)
            given[name] = _per_row(values, n, name, np.float64)
        return {name: given.get(name, np.full(n, np.nan)) for name in self._extra}

    def _push(self, columns: dict[str, np.ndarray], extra: dict[str, np.ndarray]) -> None:
        """Copy a batch's columns into the buffers, doubling their capacity when full."""
        k = len(columns["ids"])
        for name in extra:
            if name not in self._extra:
                self._declare(name)
        if k == 0:
            return
        need = self._n + k
        if need > len(self._buf["ids"]):
            capacity = max(need, 2 * len(self._buf["ids"]), _MIN_CAPACITY)
            for buffers, fill in ((self._buf, None), (self._extra, np.nan)):
                for name, old in buffers.items():
                    new = np.empty(capacity, dtype=old.dtype) if fill is None else np.full(capacity, fill)
                    new[: self._n] = old[: self._n]
                    buffers[name] = new
        for name, values in columns.items():
            self._buf[name][self._n : need] = values
        for name, buf in self._extra.items():
            buf[self._n : need] = extra.get(name, np.nan)
        self._n = need

    def append(self, polygons: Sequence[Polygon] | np.ndarray, probability: npt.ArrayLike, tile: npt.ArrayLike, *,
               measurements: Mapping[str, npt.ArrayLike] | None = None, classification: Any = None) -> Nuclei:
        """Add a batch of nuclei and return it as its own :class:`Nuclei` (same ids, mpp and ihc).

        ``polygons`` are shapely Polygons in level-0 pixels; ``probability`` (mean nucleus probability,
        0..1) and ``tile`` (source tile index) are one value per polygon or a scalar for all.
        ``measurements`` are extra columns by name (one value per polygon, or a scalar);
        ``classification`` a class name per polygon (or one for all; ``None``: unclassified).
        Polygons are stored as given: they should be valid (shapely's area of a self-intersecting
        polygon is meaningless); ``formats.write_geojson`` repairs what QuPath would reject.
        """
        return self._append(polygons, probability, tile, measurements, classification)

    def _append(self, polygons: Sequence[Polygon] | np.ndarray, probability: npt.ArrayLike, tile: npt.ArrayLike,
                measurements: Mapping[str, npt.ArrayLike] | None, classification: Any,
                overrides: Mapping[str, np.ndarray] | None = None) -> Nuclei:
        n = len(polygons)
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        overrides = overrides or {}
        given = {_FIXED[name] for name, values in overrides.items() if len(values) == n and np.isfinite(values).all()}
        shape = not given >= _SHAPE_KEYS_UM
        centroid = (overrides[CENTROID_X], overrides[CENTROID_Y]) if {"centroid_x", "centroid_y"} <= given else None
        columns = computed_columns(polygons, probability, tile, ids, classification, self.mpp, shape=shape,
                                   centroid=centroid)
        for name, values in overrides.items():  # a file's own values win over recomputed ones
            key = _FIXED[name]
            columns[key] = np.where(np.isfinite(values), values, columns[key])
        extra = self._extra_batch(measurements, n)
        self._push(_frozen(columns), _frozen(extra))
        self._next_id += n
        return Nuclei._from_columns(self, columns, extra)

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
            for name in other._extra:
                self._declare(name)
            return
        new_ids = other.ids
        if len(self) and new_ids.min() < self._next_id and np.isin(new_ids, self.ids).any():
            raise ValueError("cannot extend: some ids are already present")
        if len(np.unique(new_ids)) != len(new_ids):  # pragma: no cover - containers keep ids unique
            raise ValueError("cannot extend: duplicate ids")
        self._push({name: other._column(name) for name in _DTYPES}, {name: other._extra_column(name) for name in other._extra})
        self._next_id = max(self._next_id, int(new_ids.max()) + 1)

    @classmethod
    def from_geo_objects(cls, objs: Iterable[GeoObject], mpp: float | None, *, ihc: IhcOptions | None = None) -> Nuclei:
        """Rebuild nuclei from :func:`~napari_hoverfast.core.geojson.read_geojson` objects.

        Every object with an area counts, whatever its type (hand-drawn annotations too); for a cell the
        nucleus geometry is used when present; a MultiPolygon keeps its largest part. The file's
        measurements and classification are kept: a value of a computed column (area, shape,
        centroid; a QuPath export's own "Nucleus: Circularity"…) wins over the one recomputed from
        the geometry, which fills in where the file has none; "Probability" / "Tile" fill those
        columns (else NaN / -1); every other name becomes an extra column. Ids are fresh.
        """
        return cls._from_file(FileColumns.of(objs), mpp, ihc)

    @classmethod
    def read_geojson(cls, path: str | PathLike[str], mpp: float | None, *, ihc: IhcOptions | None = None) -> Nuclei:
        """The nuclei of a QuPath/GeoJSON file, as :meth:`from_geo_objects` of its
        :func:`~napari_hoverfast.core.geojson.read_geojson` objects, but read a piece at a time
        straight into columns (a million nuclei in a few seconds, without a million objects at once)."""
        from .geojson_read import read_parts

        parts = read_parts(path, FileColumns.of, packing=_PACKING)
        return cls._from_file(FileColumns.concat(parts), mpp, ihc)

    @classmethod
    def _from_file(cls, found: FileColumns, mpp: float | None, ihc: IhcOptions | None) -> Nuclei:
        columns = dict(found.measurements)
        n = len(found.polygons)
        probability = columns.pop(PROBABILITY, np.full(n, math.nan))
        tile = columns.pop(TILE, np.full(n, math.nan))
        columns.pop(SCORE, None)  # derived again from the DAB OD mean when ``ihc`` is set
        overrides = {name: columns.pop(name) for name in list(columns) if name in _FIXED}
        out = cls(mpp, ihc=ihc)
        tiles = np.where(np.isfinite(tile), tile, -1).astype(np.int64)
        out._append(found.polygons, probability, tiles, columns, found.classes, overrides)
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

    def _extra_column(self, name: str) -> np.ndarray:
        view = self._extra[name][: self._n]
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

    @property
    def extra_columns(self) -> list[str]:
        """Names of the extra measurement columns, in the order they arrived."""
        return list(self._extra)

    def classifications(self) -> np.ndarray:
        """Object array of class names (``None``: unclassified).

        With ``ihc`` set, nuclei with a DAB OD mean get their IHC class (Negative, 1+, 2+, 3+) from
        the current thresholds; the others keep the stored class (e.g. read from a GeoJSON file).
        """
        stored = self._column("classification")
        values = self._extra_column(self.ihc.measurement) if self.ihc and self.ihc.measurement in self._extra else None
        if values is None:
            return stored
        assert self.ihc is not None
        derived = class_names(self.ihc.score(values))
        unscored = np.fromiter((d is None for d in derived), dtype=bool, count=len(derived))
        derived[unscored] = stored[unscored]
        return derived

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
        columns = _frozen({name: self._column(name)[key] for name in _DTYPES})
        extra = _frozen({name: self._extra_column(name)[key] for name in self._extra})
        return Nuclei._from_columns(self, columns, extra)

    def measurements(self) -> dict[str, np.ndarray]:
        """Per-nucleus measurements by display name, in export order.

        QuPath's shape columns first (µm ones when mpp is known or they hold values, e.g. read from
        a file), then the extra columns (stain ODs…), the IHC score when ``ihc`` is set, then area in
        pixels, probability, centroid and tile.
        """
        out: dict[str, np.ndarray] = {}
        for name, key, micrometres in _SHAPE_COLUMNS:
            column = self._column(key)
            if not micrometres or self.mpp is not None or np.isfinite(column).any():
                out[name] = column
        for name in self._extra:
            out[name] = self._extra_column(name)
        if self.ihc is not None and self.ihc.measurement in self._extra:
            out[SCORE] = self.ihc.score(self._extra_column(self.ihc.measurement))
        for name, key, _ in _TAIL_COLUMNS:
            out[name] = self._column(key)
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
