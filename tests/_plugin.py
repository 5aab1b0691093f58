"""Open the dock widget as users do: Plugins › HoverFast nuclei, where napari hands it proxies."""

from __future__ import annotations

from napari_hoverfast._widget import HoverFastWidget


def open_widget(viewer) -> HoverFastWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-hoverfast", "HoverFast nuclei")
    assert isinstance(widget, HoverFastWidget)
    return widget
