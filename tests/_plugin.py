"""Open the dock widget as users do: Plugins › HoverFast nuclei, where napari hands it proxies."""

from __future__ import annotations

from napari_hoverfast._widget import HoverFastWidget


def open_widget(viewer) -> HoverFastWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-hoverfast", "HoverFast nuclei")
    assert isinstance(widget, HoverFastWidget)
    return widget


def configure(widget: HoverFastWidget, checkpoint, *, synchronous: bool | None = True) -> HoverFastWidget:
    """Small, quick runs for tests: 256 px tiles on the CPU, post-processing in the run's thread
    (``synchronous=None`` keeps the widget's own threading)."""
    from napari_hoverfast._widget import MODEL_FILE

    if synchronous is not None:
        widget.synchronous = synchronous
    widget.postprocess_workers = 0
    widget.tile_size.value = 256
    widget.device.value = "cpu"
    widget.model_choice.value = MODEL_FILE
    widget.model_path.value = checkpoint
    return widget
