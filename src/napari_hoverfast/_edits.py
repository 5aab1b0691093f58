"""The user's edits of a nuclei layer (delete, move, draw), carried into the display's container.

napari tells what changed through the Shapes layer's ``data`` event (action and shape indices); a
change it does not detail rebuilds the shown part from the layer. Hand-drawn nuclei get NaN
probability and tile −1, so a re-threshold keeps them. Also here: copying rows between containers
under fresh ids with every column (the engine's stain measurements and classes too). No Qt here.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely

from ._layers import polygons_from_shapes_data
from .core.nuclei import PROBABILITY, TILE, Nuclei

if TYPE_CHECKING:
    from ._display import NucleiDisplay


@lru_cache(maxsize=1)
def _append_takes_columns() -> bool:
    """Whether ``Nuclei.append`` takes extra measurement columns and classes (the container grew them)."""
    return "measurements" in inspect.signature(Nuclei.append).parameters


def _extra_names(rows: Nuclei) -> list[str]:
    names = getattr(rows, "extra_columns", ())
    return list(names() if callable(names) else names)


def empty_like(rows: Nuclei) -> Nuclei:
    """An empty container with the columns and settings (pixel size, IHC) of ``rows``."""
    return rows.select(np.zeros(len(rows), dtype=bool))


def append_copy(target: Nuclei, rows: Nuclei) -> Nuclei:
    """``rows`` appended to ``target`` under fresh ids (each run numbers its nuclei from 0), every column kept."""
    if not _append_takes_columns():
        return target.append(list(rows.polygons), rows.probability, rows.tile)
    columns = rows.measurements()
    extra = {name: columns[name] for name in _extra_names(rows) if name in columns}
    classes = rows.classifications() if callable(getattr(rows, "classifications", None)) else None
    return target.append(list(rows.polygons), rows.probability, rows.tile, measurements=extra or None, classification=classes)


def valid(polygon: Any) -> Any:
    """A user-drawn polygon made valid (its largest part when the repair splits it)."""
    if polygon.is_valid:
        return polygon
    repaired = shapely.make_valid(polygon)
    parts = [g for g in getattr(repaired, "geoms", [repaired]) if g.geom_type == "Polygon"]
    return max(parts, key=lambda g: g.area) if parts else shapely.Polygon()


class EditFollower:
    """Follows one display's Shapes layer: what the user changes there changes in the container."""

    def __init__(self, display: NucleiDisplay) -> None:
        self.display = display

    def on_data(self, event: Any) -> None:
        """Carry the user's edits of the Shapes layer into the container (by the event's action)."""
        d = self.display
        if d.changing:
            return
        action = str(getattr(event, "action", "changed"))
        if action.endswith("ing"):  # "removing", "adding", "changing": the change has not happened yet
            return
        n = d.layer.nshapes
        indices = [i for i in (getattr(event, "data_indices", None) or ()) if isinstance(i, (int, np.integer))]
        if action.endswith("removed") and indices and n == len(d.shown) - len(indices):
            gone = d.shown[indices]
            d.shown = np.delete(d.shown, indices)
            self.remove(gone)
        elif action.endswith("added") and n > len(d.shown):
            k = n - len(d.shown)
            new = self.append_from_layer(np.arange(n - k, n), probability=np.nan, tile=-1)
            d.shown = np.concatenate([d.shown, new.ids])
        elif action.endswith("changed") and n == len(d.shown) and indices and min(indices) >= 0:
            positions = np.asarray(sorted(set(indices)), dtype=np.int64)
            old = d.nuclei.select(d.rows(d.shown[positions]))
            self.remove(old.ids)
            new = self.append_from_layer(positions, probability=old.probability, tile=old.tile)
            d.shown[positions] = new.ids
        else:
            self.rebuild_from_layer()
        d.sheet.refresh()
        d.publish()

    def append_from_layer(self, positions: np.ndarray, *, probability: Any, tile: Any) -> Nuclei:
        """Shapes at ``positions`` of the layer as new nuclei; their features updated to match."""
        d = self.display
        data = d.layer.data
        polygons = [valid(p) for p in polygons_from_shapes_data([data[i] for i in positions], None)]
        new = d.nuclei.append(polygons, probability, tile)
        d.paint(new)
        features = d.layer.features
        for name, values in new.measurements().items():
            if name in features:
                features.iloc[positions, features.columns.get_loc(name)] = values
        return new

    def rebuild_from_layer(self) -> None:
        """The layer's shapes replace the nuclei it held (an edit whose details the event did not say)."""
        d = self.display
        self.remove(d.shown)
        layer = d.layer
        n = layer.nshapes
        features = layer.features
        probability = features[PROBABILITY].to_numpy(dtype=np.float64) if PROBABILITY in features else np.nan
        tile = np.nan_to_num(features[TILE].to_numpy(dtype=np.float64), nan=-1).astype(np.int64) if TILE in features else -1
        polygons = [valid(p) for p in polygons_from_shapes_data(layer.data, None)] if n else []
        new = d.nuclei.append(polygons, probability, tile)
        d.paint(new)
        d.shown = new.ids.copy()

    def remove(self, ids: np.ndarray) -> None:
        d = self.display
        if not len(ids):
            return
        rows = d.rows(ids)
        d.paint(d.nuclei.select(rows), erase=True)
        keep = np.ones(len(d.nuclei), dtype=bool)
        keep[rows] = False
        d.nuclei = d.nuclei.select(keep)
