"""The "HoverFast nuclei" dock widget: segment what you look at, a few rectangles, or the whole slide.

A form (``_form.py``) over the engine: this module turns its settings into the engine's
:class:`~napari_hoverfast.core.job.SlideJob` (regions from ``_scope.py``), hands it to the run
session (``_session.py``: the worker thread, batch coalescing, de-duplication), and keeps one nuclei
display per image (``_display.py``: outlines near the view, an overview zoomed out). The nuclei go
to one Shapes layer per image, "<image> nuclei", which holds level-0 pixels (row, col) shown with the
image's own ``scale`` and ``translate``, so it sits on the image at every zoom.

Changing a threshold re-runs the layer's earlier runs from the tile cache, without the network.
Result controls (colour, legend, the clicked nucleus, overlays, export) are in ``_results.py``.
"""

import contextlib
import os
from pathlib import Path
from typing import Any

import napari
from napari.layers import Image, Shapes
from napari.utils.notifications import show_error

from ._colours import NO_COLOR, SINGLE_COLOURS
from ._display import ALL, OUTLINES, OVERVIEW, DisplayOptions, NucleiDisplay  # noqa: F401 - the display's modes, for users of the widget
from ._displays import Displays
from ._form import (  # noqa: F401
    MODEL_DEFAULT,
    MODEL_FILE,
    SCOPE_RECTANGLES,
    SCOPE_VIEW,
    SCOPE_WHOLE,
    HoverFastForm,
)
from ._ihc import IhcPanel
from ._jobs import WidgetCache, retune_job, run_job, run_options, view_centre
from ._layers import (
    camera_of,
    has_layer,
    layer_mpp,
)
from ._models import ModelControls
from ._novel import novel_nuclei  # noqa: F401 - part of the widget's interface (tests)
from ._overlays import OVERLAY_KEY
from ._results import ResultsPanel
from ._scope import (
    REGIONS_KEY,
    TissueMasks,
    UserError,
    add_nuclei_layer,
    follow_zoom,
    image_mpp,
    image_of,
    nuclei_layer_of,
    pixel_size_hint,
    rectangle_regions,
    region_layers_of,
    regions_layer,
    require_image,
    view_region,
)
from ._session import Job, Run, RunSession
from ._status import ended_text, progress_text
from .core.cache import TileCache
from .core.pipeline import Progress
from .core.tiling import Box

#: Environment switch: run on the main thread (tests; the stardist-napari pattern).
SYNC_ENV = "HOVERFAST_SYNC"
#: The outlines follow the view this long after the camera stops (ms): one rebuild per gesture.
VIEW_SETTLE_MS = 150
#: A threshold change re-thresholds this long after the last change (ms): one run per adjustment.
TUNE_SETTLE_MS = 400


class HoverFastWidget(HoverFastForm):
    """Dock widget: image, model, scope and settings; Run, Cancel, progress; colour, tuning and export."""

    def __init__(self, viewer: "napari.viewer.Viewer") -> None:
        from qtpy.QtCore import QTimer

        from .core.default_model import has_default_model

        super().__init__(has_default_model=has_default_model())
        self.viewer = viewer
        self.session = RunSession(self, synchronous=os.environ.get(SYNC_ENV, "").lower() in ("1", "true", "yes"))
        #: Post-processing processes (None: the engine's choice; 0: in the run's own thread).
        self.postprocess_workers: int | None = None
        #: How many outlines napari holds at once (beyond: outlines near the view, overview zoomed out).
        self.display_options = DisplayOptions()
        self.temp_images: dict[str, str] = {}  # image token -> TIFF written for it
        self.tissue_masks = TissueMasks()
        self.displays = Displays(viewer)
        self._models = ModelControls(self)
        self._cache = WidgetCache()
        self._pbar: Any = None
        self._tune_pending = False
        self.image.choices = self._image_choices
        self.shapes_layer.choices = self._shapes_choices
        self.results = ResultsPanel(self)
        self.ihc_panel = IhcPanel(self)

        self.image.changed.connect(self._on_image)
        self.scope.changed.connect(self._on_scope)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.draw_button.changed.connect(self.draw_region)
        self.clear_cache_button.changed.connect(self.clear_cache)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._on_layers_changed)
        self._view_timer = self._timer(QTimer, VIEW_SETTLE_MS, self.update_views)
        self._tune_timer = self._timer(QTimer, TUNE_SETTLE_MS, self.retune)
        for control in (self.min_area, self.max_area, self.threshold):
            control.changed.connect(lambda *_: self._tune_timer.start())  # restarted by every change
        camera = camera_of(viewer)
        camera.events.center.connect(self._on_camera)
        camera.events.zoom.connect(self._on_camera)
        session, displays, results = self.session, self.displays, self.results
        self.native.destroyed.connect(lambda *_: _on_destroyed(session, displays, results))
        self._on_scope(self.scope.value)
        self._select_active_image()
        self._on_image()

    def _timer(self, qtimer: Any, ms: int, slot: Any) -> Any:
        timer = qtimer(self.native)
        timer.setSingleShot(True)
        timer.setInterval(ms)
        timer.timeout.connect(slot)
        return timer

    @property
    def synchronous(self) -> bool:
        """Drain runs on the main thread instead of a worker thread (tests, scripting)."""
        return self.session.synchronous

    @synchronous.setter
    def synchronous(self, value: bool) -> None:
        self.session.synchronous = bool(value)

    @property
    def running(self) -> bool:
        return self.session.running

    # ---- choices ---------------------------------------------------------------------------------

    def _image_choices(self, *_: Any) -> list[tuple[str, Image]]:
        return [(ly.name, ly) for ly in self.viewer.layers if isinstance(ly, Image) and not ly.metadata.get(OVERLAY_KEY)]

    def _shapes_choices(self, *_: Any) -> list[tuple[str, Shapes]]:
        return [(ly.name, ly) for ly in self.viewer.layers if isinstance(ly, Shapes) and not ly.metadata.get("hoverfast")]

    def _on_layers_changed(self, event: Any = None) -> None:
        if self.session.closed:
            return
        run = self.session.run
        if run is not None and not has_layer(self.viewer.layers, run.layer):
            self.session.cancel()  # its layer was deleted, or the viewer is closing
        self.displays.drop_removed()
        self.reset_choices()
        if event is not None and getattr(event, "type", "") == "inserted" and self.image.value is None:
            self._select_active_image()
        self._on_image()

    def _select_active_image(self) -> None:
        active = self.viewer.layers.selection.active
        if isinstance(active, Image) and not active.metadata.get(OVERLAY_KEY):
            self.image.value = active

    def _on_scope(self, scope: str) -> None:
        self.shapes_layer.visible = scope == SCOPE_RECTANGLES

    def _on_image(self, *_: Any) -> None:
        """The pixel-size field (and why it is there) only for an image that does not say its pixel size."""
        image = self.image.value
        missing = image is not None and layer_mpp(image) is None
        self.pixel_size.visible = self.pixel_hint.visible = missing
        if missing:
            self.pixel_hint.value = pixel_size_hint(image)
        self.results.refresh_choices(self.current_display(create=False))
        self.ihc_panel.update()

    def load_model(self) -> Any:
        """Load the chosen model and describe it; ``None`` and the loader's message in the status line if it cannot."""
        return self._models.load_chosen(report=True)

    def _ensure_model(self) -> Any:
        return self._models.load_chosen()

    # ---- what to run -------------------------------------------------------------------------------

    def view_region(self, layer: Image | None = None) -> Box:
        """The part of the image visible on the canvas at the current zoom, in level-0 pixels."""
        return view_region(self.viewer, layer or require_image(self.image.value))

    def rectangle_regions(self, layer: Image | None = None) -> list[Box]:
        """Level-0 boxes of the shapes (their bounding boxes) in the chosen Shapes layer."""
        return rectangle_regions(self.viewer, layer or require_image(self.image.value), self.shapes_layer.value)

    def prepare(self) -> Job:
        """Everything a run needs, checked on the main thread; raises UserError with what to fix."""
        return run_job(self, self.viewer, model=self._ensure_model, cache=self.tile_cache(), tissue=self.tissue_masks,
                       temp_images=self.temp_images, workers=self.postprocess_workers)

    def tile_cache(self) -> TileCache | None:
        """The widget's tile cache (user cache folder, 5 GB, least recently used evicted), if on and usable."""
        return self._cache.get(bool(self.use_cache.value))

    def clear_cache(self, *_: Any) -> int:
        """Remove every cached tile (Clear cache button); returns the bytes freed."""
        freed = self._cache.clear()
        self.status.value = "The cache is empty" if freed is None else f"Cache cleared: {freed / 1e6:,.0f} MB freed"
        return freed or 0

    # ---- running -----------------------------------------------------------------------------------

    def run(self, *_: Any) -> None:
        """Start a run with the current settings (Run button)."""
        if self.running:
            return
        try:
            job = self.prepare()
        except UserError as exc:
            self.report(str(exc))
            self.reset_progress()
            return
        layer = self.nuclei_layer(self.image.value, create=True)
        self._start(job, layer, "Starting…")

    def retune(self) -> bool:
        """Re-run the layer's runs from the tile cache with the thresholds now set (no network); True if started."""
        if self.running:
            self._tune_pending = True  # after this run: it may add tiles the thresholds apply to
            return False
        image = self.image.value
        layer = self.nuclei_layer(image) if image is not None else None
        if layer is None or not layer.metadata.get("jobs"):
            return False
        try:
            job = retune_job(layer, run_options(self, self.postprocess_workers), model=self._ensure_model(),
                             cache=self.tile_cache(), tissue=self.tissue_masks)
        except UserError as exc:
            self.report(str(exc))
            return False
        if isinstance(job, str):
            self.status.value = job or self.status.value
            return False
        self._start(job, layer, "Re-thresholding from the cache…")
        return True

    def _start(self, job: Job, layer: Shapes, text: str) -> None:
        from napari.utils import progress

        self.set_running(True)
        self.progress.value = 0
        self.status.value = text
        self._pbar = progress(total=0, desc="HoverFast: starting")
        self.session.start(job, self.display(layer))

    def cancel(self, *_: Any) -> None:
        """Stop the run after the batch in progress; nuclei found so far stay (Cancel button)."""
        if self.running:
            self.session.cancel()
            self.status.value = "Cancelling after the current batch…"

    def run_progress(self, run: Run, item: Progress) -> None:
        """The session's progress: the bar, the status line and napari's activity bar."""
        self.progress.max = max(item.tiles_total, 1)
        self.progress.value = item.tiles_done
        self.status.value = progress_text(run, item)
        pbar = self._pbar
        if pbar is not None:
            if pbar.total != item.tiles_total:
                pbar.total = item.tiles_total
            if item.tiles_done > pbar.n:
                pbar.update(item.tiles_done - pbar.n)
            pbar.set_description(f"HoverFast: {run.added + run.pending_count:,} nuclei")

    def run_ended(self, run: Run) -> None:
        """The session's run ended (done, cancelled or failed): counts, colours, overlays."""
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.set_running(False)
        display = self.displays.known(run.layer)
        total = len(display.nuclei) if display is not None else 0
        text = ended_text(run, total)
        if display is not None:
            self.ihc_panel.apply()  # the thresholds set now, whatever the run's were
            display.recolor(self.color_by.value, SINGLE_COLOURS[self.single_colour.value])
            if display.mode == OVERVIEW:
                text += " · zoom in to see their outlines"
        if run.error or any(r.error for r in run.results):
            self.report(text)
            self.reset_progress()
        else:
            self.status.value = text
        self.results.refresh_choices(self.current_display())
        self.results.update_coverage()
        if self._tune_pending:
            self._tune_pending = False
            self._tune_timer.start()

    def report(self, message: str) -> None:
        self.status.value = message
        show_error(message)

    # ---- results -------------------------------------------------------------------------------------

    def nuclei_layer(self, image: Image, *, create: bool = False) -> Shapes | None:
        """The "<image> nuclei" layer of ``image`` (made on first use, on the image's frame)."""
        layer = nuclei_layer_of(self.viewer, image)
        if layer is None and create:
            layer = add_nuclei_layer(self.viewer, image, image_mpp(image, self.pixel_size.value),
                                     SINGLE_COLOURS[self.single_colour.value])
        return layer

    def display(self, layer: Shapes) -> NucleiDisplay:
        """What the nuclei layer shows and holds (made on first use, following the current view)."""
        return self.displays.of(layer, self.display_options, self.color_by.value, SINGLE_COLOURS[self.single_colour.value])

    def current_display(self, *, create: bool = True) -> NucleiDisplay | None:
        """The display of the chosen image's nuclei layer, if it has one (made now unless ``create`` is false)."""
        image = self.image.value
        layer = self.nuclei_layer(image) if image is not None else None
        if layer is None:
            return None
        return self.display(layer) if create else self.displays.known(layer)

    def draw_region(self, *_: Any) -> Shapes | None:
        """Add (or select) the image's regions layer, ready to draw a rectangle, and run on its rectangles."""
        try:
            image = require_image(self.image.value)
        except UserError as exc:
            self.report(str(exc))
            return None
        layer = regions_layer(self.viewer, image)
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        self.reset_choices()
        self.shapes_layer.value = layer
        self.scope.value = SCOPE_RECTANGLES
        self.status.value = "Drag a rectangle on the canvas, then press Run"
        return layer

    # ---- following the view ----------------------------------------------------------------------

    def _on_camera(self, *_: Any) -> None:
        if not self.session.closed:
            self._view_timer.start()  # restarted by every move: runs once the camera settles

    def update_views(self) -> None:
        """The camera settled: outlines near the view at a readable width, regions' edges, the run's focus."""
        if self.session.closed:
            return
        self.displays.follow_view()
        for layer in region_layers_of(self.viewer):
            follow_zoom(self.viewer, layer)
        run = self.session.run
        focus = run.job.focus if run is not None and run.job is not None else None
        image = image_of(self.viewer, run.layer) if focus is not None and run is not None else None
        if focus is not None and image is not None:
            focus.set(*view_centre(self.viewer, image))  # the tiles left are read nearest to where the user looks

    def export(self, path: str | os.PathLike[str], layer: Shapes | None = None) -> list[Path]:
        """QuPath GeoJSON of the nuclei layer, a CSV of the measurements and the run's parameters (``.run.json``)."""
        return self.results.export(path, layer)


def _on_destroyed(session: RunSession, displays: Displays, results: ResultsPanel) -> None:
    """The widget (or its viewer) closed: stop the run so no thread outlives it for long."""
    session.close()
    with contextlib.suppress(RuntimeError, AttributeError):  # the viewer may be gone already
        results.close()
    displays.detach()


__all__ = ["MODEL_DEFAULT", "MODEL_FILE", "NO_COLOR", "SCOPE_RECTANGLES", "SCOPE_VIEW", "SCOPE_WHOLE", "HoverFastWidget",
           "REGIONS_KEY"]
