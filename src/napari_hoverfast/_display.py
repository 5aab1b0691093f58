"""All the nuclei of one image, shown in napari as outlines where the user looks and as an overview elsewhere.

A whole slide holds 10⁵–10⁶ nuclei, but napari's Shapes layer costs time and memory in proportion to
its size: adding 10k polygons takes about 1 s here, one update of a 100k layer blocks the viewer for
~10 s, and a million shapes do not fit in memory. So the result lives in one
:class:`~napari_hoverfast.core.nuclei.Nuclei` container (export, de-duplication, colours, Save
Selected Layers), and napari is given at most :attr:`DisplayOptions.max_outlines` polygons:

- ``all``: while the image has that few nuclei, the Shapes layer holds all of them (a tile, a few
  regions), exactly as the engine made them;
- ``outlines``: beyond that, it holds the nuclei whose centroid lies in the view grown by a margin,
  chosen again when the view leaves that window (:meth:`NucleiDisplay.set_view`);
- ``overview``: when even the view holds too many (zoomed out), the Shapes layer is empty and an
  image layer "<nuclei layer> (overview)" shows one pixel per nucleus (4 µm at 40×), coloured like the
  outlines. Its cost follows the slide's area, not the number of nuclei.

Edits the user makes in the Shapes layer (delete, move, draw) are carried into the container through
the layer's data events. No Qt here: the widget debounces camera moves and calls ``set_view``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from napari.layers import Image, Shapes
from napari.utils.colormaps import Colormap, ensure_colormap

from ._layers import has_layer, layer_token, polygons_from_shapes_data, shapes_data_from_polygons
from .core.nuclei import AREA_PX, AREA_UM2, PERIMETER_UM, PROBABILITY, TILE, Nuclei

#: "Colour by" choice for one colour.
NO_COLOR = "(single colour)"
#: Edge colour when not coloured by a feature.
PLAIN_EDGE = (1.0, 0.85, 0.0, 1.0)
#: Colour scales before the data set their own: (low, high) per feature, µm² / µm / 0..1.
_DEFAULT_LIMITS = {AREA_UM2: (10.0, 80.0), PERIMETER_UM: (10.0, 40.0), PROBABILITY: (0.5, 1.0)}
#: Display modes (``metadata["display"]`` of the nuclei layer).
ALL, OUTLINES, OVERVIEW = "all", "outlines", "overview"
#: ``metadata`` key of the overview image layer (so the widget does not offer it as an image).
OVERVIEW_KEY = "hoverfast_overview"

#: Level-0 box (x0, y0, x1, y1), half-open.
Box4 = tuple[float, float, float, float]


@dataclass(frozen=True)
class DisplayOptions:
    """How many outlines napari holds at once, and the overview's resolution.

    ``max_outlines``: 10k polygons take ~1 s to (re)build here (20k: 2.1 s), about the longest the
    viewer should block when the view moves; 10k outlines fill a ~1 mm field of dense tissue; ``margin``: the outline window is the view grown by this fraction of its size
    on each side, so panning a little needs no rebuild; ``overview_px``: level-0 pixels per overview
    pixel (16 = 4 µm at 40×, about one nucleus), doubled until the overview's longer side is at most
    ``overview_max_side`` (a GL texture, uploaded whole on each update).
    """

    max_outlines: int = 10_000
    margin: float = 0.25
    overview_px: int = 16
    overview_max_side: int = 8192

    def __post_init__(self) -> None:
        if self.max_outlines < 1:
            raise ValueError(f"max_outlines must be at least 1, got {self.max_outlines}")
        if not 0 <= self.margin <= 4:
            raise ValueError(f"margin must be in [0, 4], got {self.margin}")
        if self.overview_px < 1 or self.overview_max_side < 16:
            raise ValueError("overview_px must be ≥ 1 and overview_max_side ≥ 16")


class NucleiDisplay:
    """The nuclei of one image: the container, its Shapes layer and (for large results) the overview.

    ``nuclei`` is the single source of truth (level-0 pixels, ids ascending); ``shown`` lists the ids
    of the Shapes layer's shapes in layer order. The layer's ``metadata["nuclei"]`` always points at
    the container, so File › Save Selected Layers writes every nucleus, not only those on screen.
    """

    def __init__(self, viewer: Any, layer: Shapes, mpp: float | None, slide_size: tuple[int, int],
                 options: DisplayOptions | None = None) -> None:
        self.viewer = viewer
        self.layer = layer
        self.slide_size = (int(slide_size[0]), int(slide_size[1]))
        self.options = options or DisplayOptions()
        self.nuclei = Nuclei(mpp)
        self.shown = np.empty(0, dtype=np.int64)
        self.mode = ALL
        self.window: Box4 | None = None  # level-0 area whose nuclei the layer holds (mode outlines)
        self.view: Box4 | None = None
        self.feature = NO_COLOR
        self.overview: Image | None = None
        self._raster: np.ndarray | None = None
        self._factor = self._overview_factor()
        self._ours = False  # set while this class changes the layer: its events are not user edits
        if not self._adopt() and layer.nshapes:  # a layer from elsewhere: its shapes are the nuclei
            self._rebuild_from_layer()
        layer.events.data.connect(self._on_data)
        layer.events.visible.connect(self._show_overview)
        self._publish()

    def _adopt(self) -> bool:
        """Carry on from an earlier display of this layer (the dock widget was closed and opened again)."""
        metadata = self.layer.metadata
        nuclei, shown = metadata.get("nuclei"), metadata.get("nuclei_shown")
        if not (isinstance(nuclei, Nuclei) and isinstance(shown, np.ndarray)):
            return False
        self.nuclei, self.shown = nuclei, shown.copy()
        self.mode = metadata.get("display", ALL)
        window = metadata.get("window")
        self.window = tuple(window) if window is not None else None  # type: ignore[assignment]
        self.feature = metadata.get("color_by", NO_COLOR)
        self.overview = next(
            (im for im in self.viewer.layers if isinstance(im, Image) and im.metadata.get(OVERVIEW_KEY) == layer_token(self.layer)),
            None,
        )
        if self.overview is not None:
            self._raster = self.overview.data
        if len(self.shown) != self.layer.nshapes:  # edited while no display followed it
            self._rebuild_from_layer()
        return True

    # ---- adding ------------------------------------------------------------------------------

    def add(self, batch: Nuclei) -> Nuclei:
        """Append a batch (fresh ids) and show it as the current mode says; returns the rows added."""
        new = self.nuclei.append(list(batch.polygons), batch.probability, batch.tile)
        if not len(new):
            return new
        self._paint(new)
        if self.mode == ALL:
            if len(self.nuclei) <= self.options.max_outlines:
                self._append_outlines(new)
            else:
                self._rewindow(force=True)
        elif self.mode == OUTLINES:
            inside = _inside(self.window, new.centroid_x, new.centroid_y)
            if len(self.shown) + int(inside.sum()) <= self.options.max_outlines:
                self._append_outlines(new.select(inside))
            else:  # the window filled up: choose it again around the view
                self._rewindow(force=True)
        self._refresh_overview()
        self._publish()
        return new

    def _append_outlines(self, new: Nuclei) -> None:
        if not len(new):
            return
        layer = self.layer
        with self._own_changes():
            layer.add(shapes_data_from_polygons(new.polygons, None), shape_type="polygon",
                      edge_color=self.colors(new), edge_width=1.0, face_color="transparent")
        features = layer.features
        k = len(new)
        for name, values in new.measurements().items():
            if name in features:
                features.iloc[-k:, features.columns.get_loc(name)] = values
        self.shown = np.concatenate([self.shown, new.ids])

    # ---- the view --------------------------------------------------------------------------------

    def set_view(self, view: Box4 | None) -> None:
        """The level-0 area on screen (None: unknown); outlines follow it when there are many nuclei."""
        self.view = view
        if self.mode != ALL:
            self._rewindow(force=False)

    def _rewindow(self, *, force: bool) -> None:
        """Choose what the Shapes layer holds for the current view: outlines around it, or nothing."""
        view = self.view or (0.0, 0.0, float(self.slide_size[0]), float(self.slide_size[1]))
        if not force and self.mode == OUTLINES and self.window is not None and _contains(self.window, view):
            return
        self._ensure_overview()  # windowed from now on (made again if the user deleted it)
        x0, y0, x1, y1 = view
        mx, my = (x1 - x0) * self.options.margin, (y1 - y0) * self.options.margin
        window = (x0 - mx, y0 - my, x1 + mx, y1 + my)
        inside = _inside(window, self.nuclei.centroid_x, self.nuclei.centroid_y)
        if int(inside.sum()) <= self.options.max_outlines:
            self.mode, self.window = OUTLINES, window
            self._fill(self.nuclei.select(inside))
        else:
            self.mode, self.window = OVERVIEW, None
            if len(self.shown):
                self._fill(Nuclei(self.nuclei.mpp))
        self._show_overview()
        self._publish()

    def _fill(self, nuclei: Nuclei) -> None:
        """Replace the Shapes layer's content by ``nuclei`` (one rebuild of napari's mesh)."""
        layer = self.layer
        with self._own_changes():
            layer.selected_data = set()
            layer.data = []
            if len(nuclei):
                layer.add(shapes_data_from_polygons(nuclei.polygons, None), shape_type="polygon",
                          edge_color=self.colors(nuclei), edge_width=1.0, face_color="transparent")
                layer.features = nuclei.measurements()
        self.shown = nuclei.ids.copy()

    # ---- colour ------------------------------------------------------------------------------

    def limits(self, feature: str) -> tuple[float, float]:
        """The colour scale of ``feature``: set from the data by :meth:`recolor`, else a default."""
        stored = self.layer.metadata.get("color_limits", {}).get(feature)
        return tuple(stored) if stored else _default_limits(feature, self.nuclei.mpp)  # type: ignore[return-value]

    def colors(self, nuclei: Nuclei) -> np.ndarray:
        """RGBA edge colours of ``nuclei`` for the chosen feature (its current scale)."""
        values = nuclei.measurements().get(self.feature)
        if values is None:
            return np.tile(np.asarray(PLAIN_EDGE), (len(nuclei), 1))
        return colormap(values, self.limits(self.feature))

    def recolor(self, feature: str) -> None:
        """Colour every nucleus by ``feature``, its scale set from the data (2nd–98th percentile)."""
        self.feature = feature
        values = self.nuclei.measurements().get(feature)
        if values is not None and len(values):
            finite = values[np.isfinite(values)]
            limits = (float(np.percentile(finite, 2)), float(np.percentile(finite, 98))) if len(finite) else (0.0, 1.0)
            self.layer.metadata.setdefault("color_limits", {})[feature] = limits
            self.layer.metadata["color_by"] = feature
        if len(self.shown):
            with self._own_changes():
                self.layer.edge_color = self.colors(self.nuclei.select(self._rows(self.shown)))
        if self._raster is not None:
            self._raster[:] = 0
            self._paint(self.nuclei)
            self.overview.colormap = self._overview_colormap()  # type: ignore[union-attr]
            self._refresh_overview()

    # ---- the overview ------------------------------------------------------------------------

    def _overview_factor(self) -> int:
        factor = self.options.overview_px
        while max(self.slide_size) / factor > self.options.overview_max_side:
            factor *= 2
        return factor

    def _ensure_overview(self) -> None:
        """Make the overview layer (once, or again if the user deleted it) and paint every nucleus."""
        if self.overview is not None and has_layer(self.viewer.layers, self.overview):
            return
        w, h = self.slide_size
        f = self._factor
        self._raster = np.zeros((max(math.ceil(h / f), 1), max(math.ceil(w / f), 1)), dtype=np.uint8)
        layer = self.layer
        scale = np.asarray(layer.scale[-2:], dtype=np.float64)
        # overview pixel j covers level-0 [j·f, (j+1)·f): its centre (j + ½)·f is data index (j + ½)·f − ½
        translate = np.asarray(layer.translate[-2:], dtype=np.float64) + scale * (f / 2 - 0.5)
        extra: dict[str, Any] = {}
        units = getattr(layer, "units", None)
        if units is not None:
            extra = {"units": tuple(units[-2:]), "axis_labels": tuple(layer.axis_labels[-2:])}
        selection = list(self.viewer.layers.selection)
        active = self.viewer.layers.selection.active
        self.overview = self.viewer.add_image(
            self._raster, name=f"{layer.name} (overview)", scale=tuple(scale * f), translate=tuple(translate),
            colormap=self._overview_colormap(), contrast_limits=(0, 255), interpolation2d="nearest",
            blending="translucent", visible=False, metadata={OVERVIEW_KEY: layer_token(layer), "nuclei_layer": layer.name},
            **extra,
        )
        self.viewer.layers.selection.clear()  # adding selects the new layer: give the user theirs back
        self.viewer.layers.selection.update(selection)
        self.viewer.layers.selection.active = active
        self._paint(self.nuclei)

    def _overview_colormap(self) -> Colormap:
        """256 colours: 0 is transparent (no nucleus), 1–255 the feature's scale (or the plain colour)."""
        colors = np.zeros((256, 4))
        if self.feature in self.nuclei.measurements():
            colors[1:] = ensure_colormap("turbo").map(np.linspace(0.0, 1.0, 255))
            colors[1:, 3] = 1.0
        else:
            colors[1:] = PLAIN_EDGE
        return Colormap(colors=colors, controls=np.linspace(0.0, 1.0, 257), interpolation="zero",
                        name=f"hoverfast {self.feature}")

    def _paint(self, nuclei: Nuclei, *, erase: bool = False) -> None:
        """Write ``nuclei`` into the overview raster (one pixel at each centroid), or erase them."""
        raster = self._raster
        if raster is None or not len(nuclei):
            return
        f = self._factor
        rows = np.clip((nuclei.centroid_y // f).astype(np.int64), 0, raster.shape[0] - 1)
        cols = np.clip((nuclei.centroid_x // f).astype(np.int64), 0, raster.shape[1] - 1)
        if erase:
            raster[rows, cols] = 0
            return
        values = nuclei.measurements().get(self.feature)
        if values is None:
            raster[rows, cols] = 255
            return
        raster[rows, cols] = 1 + np.round(254 * _unit_scale(values, self.limits(self.feature))).astype(np.uint8)

    def _show_overview(self, *_: Any) -> None:
        overview = self.overview
        if overview is not None and has_layer(self.viewer.layers, overview):
            overview.visible = self.mode == OVERVIEW and self.layer.visible

    def _refresh_overview(self) -> None:
        if self.overview is not None and self.overview.visible:
            self.overview.refresh()

    # ---- user edits ----------------------------------------------------------------------------

    def _on_data(self, event: Any) -> None:
        """Carry the user's edits of the Shapes layer into the container (by the event's action)."""
        if self._ours:
            return
        action = str(getattr(event, "action", "changed"))
        if action.endswith("ing"):  # "removing", "adding", "changing": the change has not happened yet
            return
        n = self.layer.nshapes
        indices = [i for i in (getattr(event, "data_indices", None) or ()) if isinstance(i, (int, np.integer))]
        if action.endswith("removed") and indices and n == len(self.shown) - len(indices):
            gone = self.shown[indices]
            self.shown = np.delete(self.shown, indices)
            self._remove(gone)
        elif action.endswith("added") and n > len(self.shown):
            k = n - len(self.shown)
            new = self._append_from_layer(np.arange(n - k, n), probability=np.nan, tile=-1)
            self.shown = np.concatenate([self.shown, new.ids])
        elif action.endswith("changed") and n == len(self.shown) and indices and min(indices) >= 0:
            positions = np.asarray(sorted(set(indices)), dtype=np.int64)
            old = self.nuclei.select(self._rows(self.shown[positions]))
            self._remove(old.ids)
            new = self._append_from_layer(positions, probability=old.probability, tile=old.tile)
            self.shown[positions] = new.ids
        else:
            self._rebuild_from_layer()
        self._refresh_overview()
        self._publish()

    def _append_from_layer(self, positions: np.ndarray, *, probability: Any, tile: Any) -> Nuclei:
        """Shapes at ``positions`` of the layer as new nuclei; their features updated to match."""
        data = self.layer.data
        polygons = [_valid(p) for p in polygons_from_shapes_data([data[i] for i in positions], None)]
        new = self.nuclei.append(polygons, probability, tile)
        self._paint(new)
        features = self.layer.features
        for name, values in new.measurements().items():
            if name in features:
                features.iloc[positions, features.columns.get_loc(name)] = values
        return new

    def _rebuild_from_layer(self) -> None:
        """The layer's shapes replace the nuclei it held (an edit whose details the event did not say)."""
        self._remove(self.shown)
        layer = self.layer
        n = layer.nshapes
        features = layer.features
        probability = features[PROBABILITY].to_numpy(dtype=np.float64) if PROBABILITY in features else np.nan
        tile = np.nan_to_num(features[TILE].to_numpy(dtype=np.float64), nan=-1).astype(np.int64) if TILE in features else -1
        data = layer.data
        polygons = [_valid(p) for p in polygons_from_shapes_data(data, None)] if n else []
        new = self.nuclei.append(polygons, probability, tile)
        self._paint(new)
        self.shown = new.ids.copy()

    def _remove(self, ids: np.ndarray) -> None:
        if not len(ids):
            return
        rows = self._rows(ids)
        self._paint(self.nuclei.select(rows), erase=True)
        keep = np.ones(len(self.nuclei), dtype=bool)
        keep[rows] = False
        self.nuclei = self.nuclei.select(keep)

    # ---- helpers ---------------------------------------------------------------------------------

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``nuclei`` holding ``ids`` (ids are ascending: appends take ever larger ones)."""
        return np.searchsorted(self.nuclei.ids, np.asarray(ids, dtype=np.int64))

    def _publish(self) -> None:
        metadata = self.layer.metadata
        metadata["nuclei"] = self.nuclei
        metadata["nuclei_shown"] = self.shown
        metadata["nuclei_total"] = len(self.nuclei)
        metadata["display"] = self.mode
        metadata["window"] = self.window

    @contextmanager
    def _own_changes(self) -> Iterator[None]:
        """Layer events raised inside are this class's own changes, not the user's edits."""
        self._ours = True
        try:
            yield
        finally:
            self._ours = False

    def detach(self) -> None:
        """Stop following the layer's edits (the widget closed: a new one adopts the layer's state)."""
        for emitter, callback in ((self.layer.events.data, self._on_data), (self.layer.events.visible, self._show_overview)):
            emitter.disconnect(callback)

    def close(self) -> None:
        """Stop following the layer (it was deleted) and remove the overview."""
        self.detach()
        if self.overview is not None and has_layer(self.viewer.layers, self.overview):
            self.viewer.layers.remove(self.overview)
        self.overview = None
        self._raster = None


def _inside(box: Box4 | None, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if box is None:
        return np.zeros(len(x), dtype=bool)
    x0, y0, x1, y1 = box
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


def _contains(outer: Box4, inner: Box4) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def _valid(polygon: Any) -> Any:
    """A user-drawn polygon made valid (its largest part when the repair splits it)."""
    if polygon.is_valid:
        return polygon
    repaired = shapely.make_valid(polygon)
    parts = [g for g in getattr(repaired, "geoms", [repaired]) if g.geom_type == "Polygon"]
    return max(parts, key=lambda g: g.area) if parts else shapely.Polygon()


def _default_limits(feature: str, mpp: float | None) -> tuple[float, float]:
    if feature in _DEFAULT_LIMITS:
        return _DEFAULT_LIMITS[feature]
    if feature == AREA_PX:
        lo, hi = _DEFAULT_LIMITS[AREA_UM2]
        px = (mpp or 0.25) ** 2
        return lo / px, hi / px
    return 0.0, 100.0


def _unit_scale(values: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """``values`` mapped to 0..1 between ``limits``, clipped; NaN counts as the low end."""
    lo, hi = limits
    scaled = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo if hi > lo else 1.0)
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 1.0)


def colormap(values: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """RGBA colours of ``values`` on the turbo scale between ``limits`` (NaN: the low end)."""
    colors = np.asarray(ensure_colormap("turbo").map(_unit_scale(values, limits)), dtype=np.float32)
    colors[:, 3] = 1.0
    return colors
