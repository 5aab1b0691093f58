"""One nuclei display per nuclei layer in the viewer: made on first use, dropped with its layer.

The widget asks here for the display of a layer (its container, outlines and overview), and hands
every camera settle to all of them at once. Displays are keyed by the layer's identity token, not
by ``id()``: napari hands plugins a new proxy of a layer at every access. No Qt here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ._colours import NO_COLOR
from ._display import DisplayOptions, NucleiDisplay
from ._layers import (
    has_layer,
    layer_token,
    same_layer,
    screen_px_per_level0,
    shapes_extent,
    slide_size,
    view_edges,
)
from ._scope import image_of


class Displays:
    """The displays of one viewer's nuclei layers."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self._by_token: dict[str, NucleiDisplay] = {}
        #: Called with a display after each change of its nuclei (the widget's IHC summary listens).
        self.listeners: list[Callable[[NucleiDisplay], None]] = []

    def __iter__(self) -> Iterator[NucleiDisplay]:
        return iter(list(self._by_token.values()))

    def known(self, layer: Any) -> NucleiDisplay | None:
        """The layer's display if one was made already."""
        return self._by_token.get(layer_token(layer))

    def of(self, layer: Any, options: DisplayOptions, feature: str, single: tuple[float, ...]) -> NucleiDisplay:
        """The layer's display, made now (colour settings, the current view and zoom) if it has none."""
        token = layer_token(layer)
        display = self._by_token.get(token)
        if display is None or not same_layer(display.layer, layer):
            image = image_of(self.viewer, layer)
            size = slide_size(image) if image is not None else shapes_extent(layer)
            display = NucleiDisplay(self.viewer, layer, layer.metadata.get("mpp"), size, options)
            if display.feature == NO_COLOR and not layer.metadata.get("color_by"):
                display.feature = feature
            display.single = single  # type: ignore[assignment]
            display.listeners.append(self._changed)
            if image is not None:  # the outlines follow the view from the camera's next move
                display.view = view_edges(self.viewer, image)
                display.set_zoom(screen_px_per_level0(self.viewer, layer))
            self._by_token[token] = display
        return display

    def _changed(self, display: NucleiDisplay) -> None:
        for listener in list(self.listeners):
            listener(display)

    def drop_removed(self) -> None:
        """Forget the displays whose layer left the viewer (and remove their overviews)."""
        for token, display in list(self._by_token.items()):
            if not has_layer(self.viewer.layers, display.layer):
                del self._by_token[token]
                display.close()

    def follow_view(self) -> None:
        """The camera settled: each display's outlines near the view, at a readable width."""
        for display in self:
            image = image_of(self.viewer, display.layer)
            if image is not None and has_layer(self.viewer.layers, display.layer):
                display.set_view(view_edges(self.viewer, image), screen_px_per_level0(self.viewer, display.layer))

    def detach(self) -> None:
        """The widget closed: stop following the layers (a widget opened again adopts their state)."""
        for display in self:
            with contextlib.suppress(RuntimeError):  # the layer is gone along with the viewer
                display.detach()
