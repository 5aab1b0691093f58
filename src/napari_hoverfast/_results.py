"""The widget's result controls: colour and legend, a clicked nucleus's measurements, overlays, export.

Everything here works from the nuclei display of the chosen image, so it is generic over whatever
:meth:`~napari_hoverfast.core.nuclei.Nuclei.measurements` holds: every numeric column can colour
the outlines, and a clicked nucleus lists every column (and its class when it has one).
"""

from __future__ import annotations

import math
import os
import tempfile
import weakref
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from napari.layers import Shapes
from napari.utils.notifications import show_info

from ._colours import NO_COLOR, SINGLE_COLOURS, colour_choices
from ._display import NucleiDisplay
from ._layers import level0_point, slide_size
from ._legend import show_legend
from ._overlays import coverage_overlay, factor_for, fill_boxes, fill_tissue, tissue_overlay
from ._scope import UserError, image_mpp, slide_source
from .core.nuclei import Nuclei

if TYPE_CHECKING:
    from ._widget import HoverFastWidget

#: Level-0 px around a click within which nuclei centroids are tried (far beyond a nucleus's radius).
_PICK_REACH = 120.0


class ResultsPanel:
    """Colour by, single colour, legend, the clicked nucleus, tissue and coverage overlays, export."""

    def __init__(self, widget: HoverFastWidget) -> None:
        self.widget = widget
        self.overlays: dict[tuple[str, str], Any] = {}  # (image token, kind) -> RasterOverlay
        w = widget
        w.color_by.choices = self.colour_choices  # a callable: napari's reset_choices asks it again
        w.color_by.changed.connect(self.recolour)
        w.single_colour.changed.connect(self.recolour)
        w.export_button.changed.connect(self.export_clicked)
        w.show_tissue.changed.connect(self.show_tissue)
        w.show_coverage.changed.connect(self.show_coverage)
        me = weakref.ref(self)

        def on_click(viewer: Any, event: Any) -> Generator[None, None, None]:
            """A click without a drag (any layer, any mode) shows the nucleus under it."""
            if event.type != "mouse_press" or getattr(event, "button", 1) != 1:
                return
            yield
            moved = False
            while event.type == "mouse_move":
                moved = True
                yield
            panel = me()
            if not moved and panel is not None and not panel.widget.session.closed:
                panel.pick(event.position)

        self._on_click = on_click
        w.viewer.mouse_drag_callbacks.append(on_click)

    def close(self) -> None:
        callbacks = self.widget.viewer.mouse_drag_callbacks
        if self._on_click in callbacks:
            callbacks.remove(self._on_click)

    # ---- colour and legend -------------------------------------------------------------------------

    def colour_choices(self, *_: Any) -> list[str]:
        """What "Colour by" offers now: every numeric measurement of the chosen image's nuclei (their columns
        change with the engine: stain measurements, IHC scores), or the base columns before a run."""
        display = self.widget.current_display(create=False)
        return colour_choices(display.nuclei.measurements() if display is not None else Nuclei(0.25).measurements())

    def refresh_choices(self, display: NucleiDisplay | None) -> None:
        """Offer the columns the results have now, keeping the user's choice when it is still there."""
        w = self.widget
        if list(w.color_by.choices) != self.colour_choices():
            current = w.color_by.value
            w.color_by.changed.disconnect(self.recolour)  # the choices changed, not the user's choice
            try:
                w.color_by.choices = ()  # emptied first: the combo box keeps old items in place otherwise
                w.color_by.reset_choices()
                w.color_by.value = current if current in w.color_by.choices else w.color_by.choices[0]
            finally:
                w.color_by.changed.connect(self.recolour)
        w.single_colour.visible = w.color_by.value == NO_COLOR
        self.update_legend(display)

    def recolour(self, *_: Any) -> None:
        w = self.widget
        w.single_colour.visible = w.color_by.value == NO_COLOR
        display = w.current_display()
        if display is not None and not w.running:
            display.recolor(w.color_by.value, SINGLE_COLOURS[w.single_colour.value])
        self.update_legend(display)

    def update_legend(self, display: NucleiDisplay | None) -> None:
        w = self.widget
        show_legend(w.legend_bar, w.legend_text, display.legend() if display is not None and len(display.nuclei) else None)

    # ---- a clicked nucleus ---------------------------------------------------------------------------

    def pick(self, world_position: Any) -> int | None:
        """Show the measurements of the nucleus at a world (row, col) position; its row, or None."""
        w = self.widget
        display = w.current_display()
        image = w.image.value
        if display is None or image is None or not len(display.nuclei):
            return None
        x, y = level0_point(w.viewer, image, world_position)
        nuclei = display.nuclei
        near = np.flatnonzero((np.abs(nuclei.centroid_x - x) < _PICK_REACH) & (np.abs(nuclei.centroid_y - y) < _PICK_REACH))
        hit = [int(i) for i in near if shapely.contains_xy(nuclei.polygons[i], x, y)]
        if not hit:
            return None
        row = min(hit, key=lambda i: nuclei.polygons[i].area)  # the innermost when drawn ones overlap
        w.nucleus_info.value = nucleus_text(nuclei, row)
        columns = nuclei.measurements()
        names = [name.removeprefix("Nucleus: ") for name in columns]  # QuPath's prefix, the same on every row
        w.nucleus_table.value = {"Measurement": names, "Value": [_value(v[row]) for v in columns.values()]}
        w.nucleus_table.visible = True
        w.nucleus_table.native.resizeColumnToContents(0)
        shown = np.flatnonzero(display.shown == nuclei.ids[row])
        if len(shown):
            with display.own_changes():
                display.layer.selected_data = {int(shown[0])}
        return row

    # ---- overlays --------------------------------------------------------------------------------------

    def _overlay(self, kind: str) -> Any:
        w = self.widget
        image = w.image.value
        if image is None:
            return None
        from ._layers import layer_token

        key = (layer_token(image), kind)
        overlay = self.overlays.get(key)
        if overlay is None:
            size = slide_size(image)
            if kind == "tissue":
                path = slide_source(image, w.temp_images)
                mask = w.tissue_masks(path, image_mpp(image, w.pixel_size.value))
                overlay = tissue_overlay(w.viewer, image, size, mask)
                overlay.mask = mask
            else:
                factor = factor_for(size, 16, 4096)
                overlay = coverage_overlay(w.viewer, image, size, factor)
            self.overlays[key] = overlay
        return overlay

    def show_tissue(self, on: bool) -> None:
        try:
            overlay = self._overlay("tissue")
        except (UserError, OSError, ValueError) as exc:
            self.widget.report(f"No tissue mask: {exc}")
            return
        if overlay is None:
            return
        if on and overlay.ensure(visible=True):
            fill_tissue(overlay, overlay.mask)
        overlay.show(bool(on))

    def show_coverage(self, on: bool) -> None:
        overlay = self._overlay("coverage")
        if overlay is None:
            return
        if on:
            overlay.ensure(visible=True)
            self.update_coverage()
        overlay.show(bool(on))

    def update_coverage(self) -> None:
        """Paint the tiles done by the runs on the chosen image's nuclei layer."""
        w = self.widget
        if not w.show_coverage.value:
            return
        overlay = self._overlay("coverage")
        image = w.image.value
        layer = w.nuclei_layer(image) if image is not None else None
        if overlay is None or not overlay.exists():
            return
        boxes = [(b[:4], int(b[4])) for b in (layer.metadata.get("coverage", []) if layer is not None else [])]
        fill_boxes(overlay, boxes)

    # ---- export ------------------------------------------------------------------------------------------

    def export_clicked(self, *_: Any) -> None:
        from qtpy.QtWidgets import QFileDialog

        from .core.formats import GEOJSON_SUFFIXES

        layer = self.export_layer()
        if layer is None:
            return
        start = str(export_folder(layer.metadata.get("slide")) / export_name(layer.metadata.get("slide")))
        patterns = " ".join(f"*{s}" for s in GEOJSON_SUFFIXES)
        path, _ = QFileDialog.getSaveFileName(self.widget.native, "Export nuclei", start, f"QuPath GeoJSON ({patterns})")
        if path:
            self.export(path, layer)


    def export_layer(self) -> Shapes | None:
        """The nuclei layer to export (the chosen image's, or the active one), or None and why."""
        w = self.widget
        image = w.image.value
        layer = w.nuclei_layer(image) if image is not None else None
        if layer is None:
            active = w.viewer.layers.selection.active
            layer = active if isinstance(active, Shapes) and active.metadata.get("hoverfast") else None
        if layer is None or not len(w.display(layer).nuclei):
            w.report("Nothing to export yet: run HoverFast first")
            return None
        return layer

    def export(self, path: str | os.PathLike[str], layer: Shapes | None = None) -> list[Path]:
        """QuPath GeoJSON of the nuclei layer, the run's parameters beside it (``.run.json``) and a CSV
        of the measurements (same name, ``.csv``). Returns the files written."""
        from .core.formats import GEOJSON_SUFFIXES, find_format, stem_of
        from .core.outputs import OutputSet, write_outputs

        w = self.widget
        layer = layer or self.export_layer()
        if layer is None:
            return []
        path = Path(path)
        if find_format(path, "geojson") is None:
            path = path.with_name(path.name + GEOJSON_SUFFIXES[0])
        csv_path = path.with_name(stem_of(path) + ".csv")
        display = w.display(layer)
        nuclei = display.nuclei
        meta = layer.metadata
        parameters = {
            "run": meta.get("run"), "runs": meta.get("runs"), "model_sha256": (meta.get("run") or {}).get("model_sha256"),
            "cancelled": meta.get("cancelled"), "error": meta.get("error"), "image": meta.get("image"), "slide": meta.get("slide"),
        }
        try:
            written = write_outputs(nuclei, OutputSet(path, csv_path), complete=True, sidecar=parameters)
        except (OSError, ValueError) as exc:
            w.report(f"Export failed: {exc}")
            return []
        drawn = f" (the layer draws the {layer.nshapes:,} near the view)" if layer.nshapes < len(nuclei) else ""
        w.status.value = (f"Exported all {len(nuclei):,} nuclei of {layer.name}{drawn} to {path.name}, "
                             f"{csv_path.name} and {written[-1].name}")
        show_info(w.status.value)
        return written


def nucleus_text(nuclei: Nuclei, row: int) -> str:
    """One nucleus in a line: its id, class (when it has one), area and where it is (level-0 px)."""
    parts = [f"Nucleus {int(nuclei.ids[row])}"]
    classes = nuclei.classifications() if callable(getattr(nuclei, "classifications", None)) else None
    if classes is not None and classes[row] is not None:
        parts.append(f"class {classes[row]}")
    parts.append(f"at x {nuclei.centroid_x[row]:,.0f}, y {nuclei.centroid_y[row]:,.0f} px")
    return " · ".join(parts)


def _value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return "–"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


def export_name(slide: str | None) -> str:
    return f"{Path(slide).stem if slide else 'nuclei'}_nuclei.geojson"


def export_folder(slide: str | None) -> Path:
    """Where the export dialog starts: the slide's folder when it can be written to, else home, else temp."""
    candidates = [Path(slide).parent] if slide else []
    candidates += [Path.home(), Path(tempfile.gettempdir())]
    for folder in candidates:
        if folder.is_dir() and os.access(folder, os.W_OK) and "hoverfast-" not in folder.name:
            return folder
    return Path.cwd()


def notify(message: str) -> None:
    show_info(message)
