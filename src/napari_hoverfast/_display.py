"""All the nuclei of one image, shown in napari as outlines where the user looks and as an overview elsewhere.

A whole slide holds 10⁵–10⁶ nuclei, but napari's Shapes layer costs time and memory in proportion to
its size: adding 10k polygons takes about 1 s here, one update of a 100k layer blocks the viewer for
~10 s, and a million shapes do not fit in memory. So the result lives in one
:class:`~napari_hoverfast.core.nuclei.Nuclei` container (export, de-duplication, colours, Save
Selected Layers), and napari is given at most :attr:`DisplayOptions.max_outlines` polygons:

- ``all``: while the image has that few nuclei, the Shapes layer holds all of them;
- ``outlines``: beyond that, it holds the nuclei whose centroid lies in the view grown by a margin,
  chosen again when the view leaves that window (:meth:`NucleiDisplay.set_view`);
- ``overview``: when even the view holds too many (zoomed out), the Shapes layer is empty and an
  image layer "<nuclei layer> (overview)" shows one pixel per nucleus, coloured like the outlines.

Outlines are drawn about :attr:`DisplayOptions.edge_px` screen pixels wide at every zoom (napari's
edge width is in data units, so it is set again when the zoom settles), and the layer's own
controls show the colour and width drawn. Edits the user makes in the Shapes layer are carried into
the container by ``_edits.py``; ``listeners`` hear of every change of the container (the IHC
summary follows edits that way). No Qt here: the widget debounces camera moves and calls ``set_view``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Shapes

from ._colours import (
    IHC_CLASS,
    NO_COLOR,
    PLAIN_EDGE,
    Legend,
    class_colours,
    class_index,
    class_legend,
    class_palette,
    colormap,
    data_limits,
    default_limits,
    ramp,
    unit_scale,
)
from ._edits import EditFollower, append_copy, empty_like
from ._layers import Box4, box_contains, points_in_box, shapes_data_from_polygons
from ._overlays import factor_for, overview_colormap, overview_of, paint_points
from .core.nuclei import Nuclei

#: Display modes (``metadata["display"]`` of the nuclei layer).
ALL, OUTLINES, OVERVIEW = "all", "outlines", "overview"


@dataclass(frozen=True)
class DisplayOptions:
    """How many outlines napari holds at once, how wide they are drawn, and the overview's resolution.

    ``max_outlines``: 10k polygons take ~1 s to (re)build here, about the longest the viewer should
    block when the view moves, and fill a ~1 mm field of dense tissue; ``margin``: the outline window
    is the view grown by this fraction of its size on each side, so panning a little needs no
    rebuild; ``edge_px``: outline width in screen pixels (readable, not hiding the nucleus);
    ``overview_px``: level-0 pixels per overview pixel (16 = 4 µm at 40×, about one nucleus),
    doubled until the overview's longer side is at most ``overview_max_side`` (a GL texture).
    """

    max_outlines: int = 10_000
    margin: float = 0.25
    edge_px: float = 1.75
    overview_px: int = 16
    overview_max_side: int = 8192

    def __post_init__(self) -> None:
        if self.max_outlines < 1:
            raise ValueError(f"max_outlines must be at least 1, got {self.max_outlines}")
        if not 0 <= self.margin <= 4:
            raise ValueError(f"margin must be in [0, 4], got {self.margin}")
        if not 0.25 <= self.edge_px <= 10:
            raise ValueError(f"edge_px must be in [0.25, 10], got {self.edge_px}")
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
        self.single = PLAIN_EDGE
        self.edge_width = 1.0  # level-0 px; set from the zoom by set_zoom
        self._ours = False  # set while this class changes the layer: its events are not user edits
        #: Called with this display after each change of ``nuclei`` (a batch, a re-threshold, an edit).
        self.listeners: list[Callable[[NucleiDisplay], None]] = []
        factor = factor_for(self.slide_size, self.options.overview_px, self.options.overview_max_side)
        self.sheet = overview_of(viewer, layer, self.slide_size, factor)  # the overview raster
        self.edits = EditFollower(self)
        if not self._adopt() and layer.nshapes:  # a layer from elsewhere: its shapes are the nuclei
            self.edits.rebuild_from_layer()
        layer.events.data.connect(self.edits.on_data)
        layer.events.visible.connect(self._show_overview)
        self.publish()

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
        self.single = tuple(metadata.get("single_colour", PLAIN_EDGE))  # type: ignore[assignment]
        if len(self.shown) != self.layer.nshapes:  # edited while no display followed it
            self.edits.rebuild_from_layer()
        return True

    # ---- adding and replacing ------------------------------------------------------------------

    def add(self, batch: Nuclei) -> Nuclei:
        """Append a batch (fresh ids) and show it as the current mode says; returns the rows added."""
        if not len(self.nuclei) and len(batch):
            self.nuclei = empty_like(batch)  # the engine's columns (stain measurements, IHC) and pixel size
            self.layer.metadata["mpp"] = batch.mpp
        new = append_copy(self.nuclei, batch)
        if not len(new):
            return new
        self.paint(new)
        if self.mode == ALL:
            if len(self.nuclei) <= self.options.max_outlines:
                self._append_outlines(new)
            else:
                self._rewindow(force=True)
        elif self.mode == OUTLINES:
            inside = points_in_box(self.window, new.centroid_x, new.centroid_y)
            if len(self.shown) + int(inside.sum()) <= self.options.max_outlines:
                self._append_outlines(new.select(inside))
            else:  # the window filled up: choose it again around the view
                self._rewindow(force=True)
        self.sheet.refresh()
        self.publish()
        return new

    def replace(self, keep: np.ndarray, new: Nuclei) -> None:
        """Keep the rows of ``keep`` (a mask), drop the rest and add ``new`` (a re-threshold's nuclei)."""
        kept = self.nuclei.select(keep)
        self.nuclei = empty_like(new if len(new) else kept)
        append_copy(self.nuclei, kept)
        append_copy(self.nuclei, new)
        if self.sheet.raster is not None:
            self.sheet.raster[:] = 0
            self.paint(self.nuclei)
        self.mode, self.window = ALL, None
        if len(self.nuclei) <= self.options.max_outlines:
            self.fill(self.nuclei)
            self._show_overview()
        else:
            self._rewindow(force=True)
        self.sheet.refresh()
        self.publish()

    def _append_outlines(self, new: Nuclei) -> None:
        if not len(new):
            return
        layer = self.layer
        with self.own_changes():
            layer.add(shapes_data_from_polygons(new.polygons, None), shape_type="polygon",
                      edge_color=self.colors(new), edge_width=self.edge_width, face_color="transparent")
        self.shown = np.concatenate([self.shown, new.ids])
        features, columns = layer.features, new.measurements()
        if list(features.columns) != list(columns):  # the results brought columns the layer lacks: all again
            with self.own_changes():
                layer.features = self.nuclei.select(self.rows(self.shown)).measurements()
            return
        k = len(new)
        for name, values in columns.items():
            features.iloc[-k:, features.columns.get_loc(name)] = values

    # ---- the view --------------------------------------------------------------------------------

    def set_view(self, view: Box4 | None, screen_px_per_level0: float | None = None) -> None:
        """The level-0 area on screen (None: unknown) and the zoom; outlines follow both."""
        self.view = view
        if screen_px_per_level0:
            self.set_zoom(screen_px_per_level0)
        if self.mode != ALL:
            self._rewindow(force=False)
        elif len(self.nuclei) > self.options.max_outlines:  # the limit was lowered since (options changed)
            self._rewindow(force=True)

    def set_zoom(self, screen_px_per_level0: float) -> None:
        """Outlines about ``edge_px`` screen pixels wide at this zoom (in steps of 2^¼: few rebuilds)."""
        wanted = self.options.edge_px / max(screen_px_per_level0, 1e-9)
        width = float(2 ** (round(4 * math.log2(wanted)) / 4))
        if math.isclose(width, self.edge_width, rel_tol=1e-6):
            return
        self.edge_width = width
        if self.layer.nshapes:
            with self.own_changes():
                self.layer.edge_width = width
        self._current_controls()

    def _rewindow(self, *, force: bool) -> None:
        """Choose what the Shapes layer holds for the current view: outlines around it, or nothing."""
        view = self.view or (0.0, 0.0, float(self.slide_size[0]), float(self.slide_size[1]))
        if not force and self.mode == OUTLINES and self.window is not None and box_contains(self.window, view):
            return
        if self.sheet.ensure():  # windowed from now on (made again if the user deleted it)
            self.sheet.layer.colormap = overview_colormap(self._overview_colours())  # type: ignore[union-attr]
            self.paint(self.nuclei)
        x0, y0, x1, y1 = view
        mx, my = (x1 - x0) * self.options.margin, (y1 - y0) * self.options.margin
        window = (x0 - mx, y0 - my, x1 + mx, y1 + my)
        inside = points_in_box(window, self.nuclei.centroid_x, self.nuclei.centroid_y)
        if int(inside.sum()) <= self.options.max_outlines:
            self.mode, self.window = OUTLINES, window
            self.fill(self.nuclei.select(inside))
        else:
            self.mode, self.window = OVERVIEW, None
            if len(self.shown):
                self.fill(Nuclei(self.nuclei.mpp))
        self._show_overview()
        self.publish()

    def fill(self, nuclei: Nuclei) -> None:
        """Replace the Shapes layer's content by ``nuclei`` (one rebuild of napari's mesh)."""
        layer = self.layer
        with self.own_changes():
            layer.selected_data = set()
            layer.data = []
            if len(nuclei):
                layer.add(shapes_data_from_polygons(nuclei.polygons, None), shape_type="polygon",
                          edge_color=self.colors(nuclei), edge_width=self.edge_width, face_color="transparent")
                layer.features = nuclei.measurements()
        self.shown = nuclei.ids.copy()

    # ---- colour ------------------------------------------------------------------------------

    def limits(self, feature: str) -> tuple[float, float]:
        """The colour scale of ``feature``: set from the data by :meth:`recolor`, else a default."""
        stored = self.layer.metadata.get("color_limits", {}).get(feature)
        return tuple(stored) if stored else default_limits(feature, self.nuclei.mpp)  # type: ignore[return-value]

    def _values(self, nuclei: Nuclei) -> np.ndarray | None:
        values = nuclei.measurements().get(self.feature)
        if values is None or not np.issubdtype(np.asarray(values).dtype, np.number):
            return None
        return values

    @property
    def by_class(self) -> bool:
        """Coloured by IHC class (categorical: QuPath's class colours, no scale)."""
        return self.feature == IHC_CLASS

    def _overview_colours(self) -> tuple[float, ...] | np.ndarray | None:
        """The overview's colours: the class palette, the one colour, or None for the measurement's scale."""
        if self.by_class:
            return class_palette()
        return self.single if self._values(self.nuclei) is None else None

    def colors(self, nuclei: Nuclei) -> np.ndarray:
        """RGBA edge colours of ``nuclei`` for the chosen feature (its current scale, or its class), or the one colour."""
        if self.by_class:
            return class_colours(nuclei.classifications())
        values = self._values(nuclei)
        if values is None:
            return np.tile(np.asarray(self.single, dtype=np.float32), (len(nuclei), 1))
        return colormap(values, self.limits(self.feature))

    def recolor(self, feature: str | None = None, single: tuple[float, ...] | None = None) -> None:
        """Colour every nucleus by ``feature`` (its scale set from the data) or in the ``single`` colour."""
        if feature is not None:
            self.feature = feature
        if single is not None:
            self.single = tuple(single)  # type: ignore[assignment]
        metadata = self.layer.metadata
        values = self._values(self.nuclei)
        if values is not None and len(values):
            limits = data_limits(values)
            if limits is not None:
                metadata.setdefault("color_limits", {})[self.feature] = limits
        metadata["color_by"], metadata["single_colour"] = self.feature, list(self.single)
        if len(self.shown):
            with self.own_changes():
                self.layer.edge_color = self.colors(self.nuclei.select(self.rows(self.shown)))
        self._current_controls()
        if self.sheet.raster is not None:
            self.sheet.raster[:] = 0
            self.paint(self.nuclei)
            if self.sheet.exists():
                self.sheet.layer.colormap = overview_colormap(self._overview_colours())  # type: ignore[union-attr]
            self.sheet.refresh()

    def legend(self) -> Legend:
        """The colour map, measurement and scale now drawn (the classes' colours, or the one colour)."""
        if self.by_class:
            return class_legend(self.feature, self.nuclei.classifications())
        if self._values(self.nuclei) is None:
            return Legend(self.feature, 0.0, 0.0, np.asarray([self.single], dtype=np.float32))
        low, high = self.limits(self.feature)
        return Legend(self.feature, low, high, ramp(64))

    def _current_controls(self) -> None:
        """The layer's controls show what is drawn: this edge colour and width, no fill."""
        layer = self.layer
        selected = set(layer.selected_data)
        with self.own_changes():
            if selected:  # napari applies "current" properties to the selected shapes
                layer.selected_data = set()
            colour = tuple(class_palette()[0]) if self.by_class else \
                self.single if self._values(self.nuclei) is None else tuple(ramp(3)[1])
            layer.current_edge_color = colour
            layer.current_face_color = "transparent"
            layer.current_edge_width = self.edge_width
            if selected:
                layer.selected_data = selected

    # ---- the overview ------------------------------------------------------------------------

    @property
    def overview(self) -> Any:
        """The overview image layer (None until the nuclei outgrow the outlines, or after the user deleted it)."""
        return self.sheet.layer if self.sheet.exists() else None

    def paint(self, nuclei: Nuclei, *, erase: bool = False) -> None:
        """Write ``nuclei`` into the overview raster (one pixel at each centroid), or erase them."""
        raster = self.sheet.raster
        if raster is None or not len(nuclei):
            return
        f = self.sheet.factor
        if erase:
            paint_points(raster, f, nuclei.centroid_x, nuclei.centroid_y, 0)
            return
        values = self._values(nuclei)
        shade: np.ndarray | int = (1 + class_index(nuclei.classifications())).astype(np.uint8) if self.by_class else \
            255 if values is None else 1 + np.round(254 * unit_scale(values, self.limits(self.feature))).astype(np.uint8)
        paint_points(raster, f, nuclei.centroid_x, nuclei.centroid_y, shade)

    def _show_overview(self, *_: Any) -> None:
        self.sheet.show(self.mode == OVERVIEW and self.layer.visible)

    # ---- helpers ---------------------------------------------------------------------------------

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``nuclei`` holding ``ids`` (ids are ascending: appends take ever larger ones)."""
        return np.searchsorted(self.nuclei.ids, np.asarray(ids, dtype=np.int64))

    def publish(self) -> None:
        metadata = self.layer.metadata
        metadata["nuclei"] = self.nuclei
        metadata["nuclei_shown"] = self.shown
        metadata["nuclei_total"] = len(self.nuclei)
        metadata["display"] = self.mode
        metadata["window"] = self.window
        for listener in list(self.listeners):
            listener(self)

    @contextmanager
    def own_changes(self) -> Iterator[None]:
        """Layer events raised inside are this class's own changes, not the user's edits."""
        self._ours, before = True, self._ours
        try:
            yield
        finally:
            self._ours = before

    @property
    def changing(self) -> bool:
        """Whether the layer's events now come from this class (not from the user)."""
        return self._ours

    def detach(self) -> None:
        """Stop following the layer's edits (the widget closed: a new one adopts the layer's state)."""
        for emitter, callback in ((self.layer.events.data, self.edits.on_data), (self.layer.events.visible, self._show_overview)):
            emitter.disconnect(callback)

    def close(self) -> None:
        """Stop following the layer (it was deleted) and remove the overview."""
        self.detach()
        self.sheet.remove()

