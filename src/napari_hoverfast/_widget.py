"""The "HoverFast nuclei" dock widget: segment what you look at, a few rectangles, or the whole slide.

A thin layer over :func:`napari_hoverfast.core.pipeline.segment_slide`: the widget turns its settings
into level-0 regions and :class:`RunOptions`, runs the engine's generator in a napari ``thread_worker``
(or drains it on the main thread when ``synchronous`` is set, or ``HOVERFAST_SYNC=1``, for
deterministic tests, as stardist-napari does) and appends each yielded batch of nuclei to one Shapes
layer per image, "<image> nuclei". That layer holds level-0 pixels (row, col) shown with the image's
own ``scale`` and ``translate``, so it sits on the image at every zoom; its ``features`` are the
engine's measurements and its ``metadata`` records the run (parameters, cancelled, error, tiles).

Images without a file behind them (a NumPy array layer) are written once to a temporary TIFF and read
through the same :class:`~napari_hoverfast.core.slide.Slide`; pyramids without a path are refused.

This is the only module of the package that imports Qt (through qtpy and napari's Qt helpers).
"""

import contextlib
import math
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import napari
import numpy as np
import shapely
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Shapes
from napari.utils.notifications import show_error, show_info

from ._display import (
    NO_COLOR,
    OVERVIEW,
    OVERVIEW_KEY,
    PLAIN_EDGE,
    Box4,
    DisplayOptions,
    NucleiDisplay,
)
from ._layers import LEVEL0_PX, find_layer, has_layer, layer_mpp, layer_token, same_layer
from .core.nuclei import AREA_PX, AREA_UM2, PERIMETER_UM, PROBABILITY, TILE, Nuclei
from .core.pipeline import NucleusBatch, Progress, RunOptions, RunResult
from .core.cache import CacheError, TileCache
from .core.duplicates import duplicates_of
from .core.job import SlideJob, run_slide_job
from .core.tiling import Box, TilingOptions

SCOPE_RECTANGLES = "Rectangles in a Shapes layer"
SCOPE_VIEW = "Current view"
SCOPE_WHOLE = "Whole slide"
MODEL_DEFAULT = "Embedded default"
MODEL_FILE = "Checkpoint file (.pth or .safetensors)"
#: Environment switch: run on the main thread (tests; the stardist-napari pattern).
SYNC_ENV = "HOVERFAST_SYNC"
#: Batches are shown together at most every FLUSH_MIN_SECONDS, and no sooner than FLUSH_BUSY_RATIO
#: times the last layer update took (so updates take at most ~1/FLUSH_BUSY_RATIO of the time).
FLUSH_MIN_SECONDS = 0.25
FLUSH_BUSY_RATIO = 4.0
#: The widget's tile cache holds at most this many bytes (least recently used tiles evicted).
WIDGET_CACHE_BYTES = 5 * 10**9
#: The outlines follow the view this long after the camera stops (ms): one rebuild per gesture.
VIEW_SETTLE_MS = 150


class _UserError(ValueError):
    """Something the user can fix; shown in the status line and as a notification."""


# --- what a run needs, prepared on the main thread ------------------------------------------------


@dataclass
class _Job:
    """One run: the engine's :class:`SlideJob` plus what the widget keeps open (model, tile cache)."""

    slide_job: SlideJob
    model: Any
    cache: TileCache | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def regions(self) -> tuple[Box, ...] | None:
        return self.slide_job.regions


def run_job(job: _Job) -> Generator[Progress | NucleusBatch, None, RunResult]:
    """The engine's one runner (``core/job.py``), in the worker thread: same rules as the CLI."""
    done = yield from run_slide_job(job.slide_job, model=job.model, cancel=job.cancel, cache=job.cache)
    return done.run


# --- de-duplication against earlier runs ------------------------------------------------------------


def _boxes_contain(boxes: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points lie in any of the (x0, y0, x1, y1) boxes (half-open)."""
    inside = np.zeros(len(x), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside |= (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    return inside


def novel_nuclei(batch: Nuclei, earlier: Nuclei, covered: np.ndarray) -> np.ndarray:
    """Mask of the batch's nuclei that an earlier run on the same layer did not already find.

    A nucleus is old when its centroid lies in an area an earlier run finished (``covered``: level-0
    boxes x0, y0, x1, y1), or when it overlaps an earlier nucleus with IoU above 0.5 (seams of
    different tilings place the same nucleus on either side of an area's edge).
    """
    keep = np.ones(len(batch), dtype=bool)
    if not len(batch):
        return keep
    if len(covered):
        keep &= ~_boxes_contain(covered, batch.centroid_x, batch.centroid_y)
    if not len(earlier) or not keep.any():
        return keep
    polygons = batch.polygons
    x0, y0, x1, y1 = shapely.total_bounds(polygons[keep])
    margin = 200.0  # level-0 px: far beyond a nucleus
    near = np.flatnonzero(
        (earlier.centroid_x > x0 - margin) & (earlier.centroid_x < x1 + margin)
        & (earlier.centroid_y > y0 - margin) & (earlier.centroid_y < y1 + margin)
    )
    if not len(near):
        return keep
    candidates = np.flatnonzero(keep)
    keep[candidates[duplicates_of(polygons[candidates], earlier.polygons[near])]] = False
    return keep


# --- the widget ------------------------------------------------------------------------------------


class HoverFastWidget(Container):
    """Dock widget: image, model, scope and settings; Run, Cancel, progress; colour and export."""

    def __init__(self, viewer: "napari.viewer.Viewer") -> None:
        super().__init__(scrollable=False)
        from .core.default_model import has_default_model

        self._viewer = viewer
        #: Drain runs on the main thread instead of a worker thread (tests, scripting).
        self.synchronous = os.environ.get(SYNC_ENV, "").lower() in ("1", "true", "yes")
        #: Post-processing processes (None: the engine's choice; 0: in the run's own thread).
        self.postprocess_workers: int | None = None

        self.image = ComboBox(label="Image", choices=self._image_choices)
        has_default = has_default_model()
        self.model_choice = ComboBox(
            label="Model", choices=[MODEL_DEFAULT, MODEL_FILE] if has_default else [MODEL_FILE],
            value=MODEL_DEFAULT if has_default else MODEL_FILE,
        )
        self.model_path = FileEdit(label="Checkpoint", mode="r", filter="*.pth *.safetensors", nullable=True)
        self.model_info = Label(label="", value="")
        self.scope = ComboBox(label="Scope", choices=[SCOPE_VIEW, SCOPE_RECTANGLES, SCOPE_WHOLE], value=SCOPE_VIEW)
        self.shapes_layer = ComboBox(label="Rectangles", choices=self._shapes_choices, nullable=True)
        self.stain = ComboBox(label="Stain", choices=[("H&E", "he"), ("IHC (DAB)", "ihc_dab")], value="he")
        self.min_area = FloatSpinBox(label="Min area (µm²)", value=5.0, min=0.0, max=1000.0, step=0.5)
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.batch_size = SpinBox(label="Batch size (0: auto)", value=0, min=0, max=256)
        self.tile_size = SpinBox(label="Tile size (px)", value=2048, min=128, max=4096, step=64)
        self.pixel_size = FloatSpinBox(label="Pixel size (µm, 0: the image's)", value=0.0, min=0.0, max=20.0, step=0.001)
        self.use_cache = CheckBox(text="Keep the network's output (resume, re-threshold)", value=True)
        self.clear_cache_button = PushButton(text="Clear cache")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="", value=0, min=0, max=1, visible=False)
        self.status = Label(label="", value="")
        self.color_by = ComboBox(
            label="Colour by", choices=[NO_COLOR, AREA_UM2, PERIMETER_UM, PROBABILITY, AREA_PX, TILE], value=AREA_UM2
        )
        self.export_button = PushButton(text="Export GeoJSON + CSV…")
        self.extend([
            self.image, self.model_choice, self.model_path, self.model_info, self.scope, self.shapes_layer,
            self.stain, self.min_area, self.device, self.batch_size, self.tile_size, self.pixel_size,
            self.use_cache, self.clear_cache_button, self.run_button,
            self.cancel_button, self.progress, self.status, self.color_by, self.export_button,
        ])
        for widget in (self.model_info, self.status):
            widget.native.setWordWrap(True)

        self._model: Any = None
        self._model_key: tuple[str | None, str] | None = None
        #: How many outlines napari holds at once (beyond: outlines near the view, overview zoomed out).
        self.display_options = DisplayOptions()
        self._displays: dict[str, NucleiDisplay] = {}  # by layer token
        self._temp_images: dict[str, str] = {}  # image token -> TIFF written for it
        self._job: _Job | None = None
        self._worker: Any = None
        self._pbar: Any = None
        self._run: _RunState | None = None
        # shared with callbacks that may outlive the widget (worker signals, Qt's destroyed)
        self._alive: dict[str, Any] = {"closed": False, "cancel": None, "displays": self._displays}

        self.model_choice.changed.connect(self._on_model_choice)
        self.model_path.changed.connect(self._on_model_path)
        self.device.changed.connect(self._forget_model)
        self.scope.changed.connect(self._on_scope)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.color_by.changed.connect(self._on_color_by)
        self.export_button.changed.connect(self._on_export_clicked)
        self.clear_cache_button.changed.connect(self.clear_cache)
        self._cache: TileCache | None = None
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._on_layers_changed)
        from qtpy.QtCore import QTimer

        self._view_timer = QTimer(self.native)
        self._view_timer.setSingleShot(True)
        self._view_timer.setInterval(VIEW_SETTLE_MS)
        self._view_timer.timeout.connect(self.update_views)
        camera = self._camera()
        camera.events.center.connect(self._on_camera)
        camera.events.zoom.connect(self._on_camera)
        alive = self._alive
        self.native.destroyed.connect(lambda *_: _on_destroyed(alive))
        self._on_model_choice(self.model_choice.value)
        self._on_scope(self.scope.value)
        self._select_active_image()

    # ---- choices ---------------------------------------------------------------------------------

    def _image_choices(self, *_: Any) -> list[tuple[str, Image]]:
        return [
            (layer.name, layer) for layer in self._viewer.layers
            if isinstance(layer, Image) and not layer.metadata.get(OVERVIEW_KEY)
        ]

    def _shapes_choices(self, *_: Any) -> list[tuple[str, Shapes]]:
        return [
            (layer.name, layer) for layer in self._viewer.layers
            if isinstance(layer, Shapes) and not layer.metadata.get("hoverfast")
        ]

    def _on_layers_changed(self, event: Any = None) -> None:
        if self._alive["closed"]:
            return
        run = self._run
        if run is not None and not has_layer(self._viewer.layers, run.layer):
            run.job.cancel.set()  # its layer was deleted, or the viewer is closing
        for key, display in list(self._displays.items()):
            if not has_layer(self._viewer.layers, display.layer):
                del self._displays[key]
                display.close()
        self.reset_choices()
        if event is not None and getattr(event, "type", "") == "inserted" and self.image.value is None:
            self._select_active_image()

    def _select_active_image(self) -> None:
        active = self._viewer.layers.selection.active
        if isinstance(active, Image):
            self.image.value = active

    def _on_scope(self, scope: str) -> None:
        self.shapes_layer.visible = scope == SCOPE_RECTANGLES

    # ---- model -----------------------------------------------------------------------------------

    def _on_model_choice(self, choice: str) -> None:
        self.model_path.visible = choice == MODEL_FILE
        self._forget_model()
        if choice == MODEL_DEFAULT:
            self.model_info.value = "Embedded default model (loads on first run)"
        elif self.model_path.value is not None and Path(self.model_path.value).is_file():
            self.load_model()
        else:
            self.model_info.value = "Choose a HoverFast checkpoint (.pth or .safetensors)"

    def _on_model_path(self, path: Any) -> None:
        self._forget_model()
        if path is not None and str(path) not in ("", "."):
            self.load_model()

    def _forget_model(self, *_: Any) -> None:
        self._model = None
        self._model_key = None

    def _model_source(self) -> str | None:
        if self.model_choice.value == MODEL_DEFAULT:
            return None
        path = self.model_path.value
        if path is None or str(path) in ("", "."):
            raise _UserError("Choose a HoverFast checkpoint (.pth or .safetensors) first")
        return str(path)

    def load_model(self) -> Any:
        """Load the chosen model (cached per file and device) and describe it; ``None`` and the
        loader's message in the status line when it cannot be loaded."""
        try:
            return self._ensure_model()
        except _UserError as exc:
            self._report(str(exc))
            return None

    def _ensure_model(self) -> Any:
        from .core.default_model import load_model
        from .core.device import DeviceError
        from .core.model import CheckpointError

        source = self._model_source()
        key = (source, str(self.device.value))
        if self._model is None or self._model_key != key:
            self._forget_model()
            try:
                self._model = load_model(source, device=str(self.device.value))
            except (CheckpointError, DeviceError, OSError) as exc:
                self.model_info.value = "No model loaded"
                raise _UserError(str(exc)) from None
            self._model_key = key
        model = self._model
        c = model.config
        self.model_info.value = (
            f"{Path(model.source).name}: depth {c.depth}, width {2 ** c.wf} channels (wf {c.wf}), "
            f"{model.parameter_count:,} parameters, on {model.device.type}"
        )
        return model

    # ---- regions ---------------------------------------------------------------------------------

    def _slide_size(self, layer: Image) -> tuple[int, int]:
        """(width, height) of the image's level 0."""
        dims = layer.metadata.get("level_dimensions")
        if dims:
            return int(dims[0][0]), int(dims[0][1])
        data = layer.data[0] if layer.multiscale else layer.data
        shape = data.shape[:2] if layer.rgb else data.shape[-2:]
        return int(shape[1]), int(shape[0])

    def _level0_box(self, layer: Image, world_points: np.ndarray) -> Box | None:
        """The level-0 box (clipped to the slide) around world points (row, col), or None if outside."""
        return _clip_box(self._level0_edges(layer, world_points), self._slide_size(layer))

    @staticmethod
    def _level0_edges(layer: Image, world_points: np.ndarray) -> Box4:
        """Level-0 (x0, y0, x1, y1) spanned by world points (row, col), unclipped."""
        data = np.array([layer.world_to_data(tuple(p)) for p in world_points], dtype=np.float64)[:, -2:]
        data += 0.5  # data (row, col) puts a pixel's centre at its index: its edges are ±0.5
        (r0, c0), (r1, c1) = data.min(axis=0), data.max(axis=0)
        return float(c0), float(r0), float(c1), float(r1)

    def view_region(self, layer: Image | None = None) -> Box:
        """The part of the image visible on the canvas at the current zoom, in level-0 pixels."""
        layer = layer or self._require_image()
        view = self._view_box(layer)
        box = _clip_box(view, self._slide_size(layer)) if view is not None else None
        if box is None:
            raise _UserError(f"{layer.name} is not in view: pan to it or choose another scope")
        return box

    def _camera(self) -> Any:
        scene = getattr(self._viewer, "scene", None)  # napari ≥ 0.9 (viewer.camera before)
        return scene.camera if scene is not None else self._viewer.camera

    def view_centre(self, layer: Image) -> tuple[float, float]:
        """The canvas centre in level-0 pixels (x, y), where a whole-slide run starts."""
        point = self._world_points(layer, [tuple(self._camera().center[-2:])])[0]
        row, col = np.asarray(layer.world_to_data(tuple(point)), dtype=np.float64)[-2:]
        return float(col + 0.5), float(row + 0.5)

    def _world_points(self, layer: Image, points: Sequence[Sequence[float]]) -> np.ndarray:
        """2-D (row, col) points padded with the viewer's other world coordinates to the layer's ndim."""
        pts = np.asarray(points, dtype=np.float64)
        extra = layer.ndim - 2
        if extra > 0:
            lead = np.asarray(self._viewer.dims.point[: extra], dtype=np.float64)
            pts = np.hstack([np.tile(lead, (len(pts), 1)), pts])
        return pts

    def rectangle_regions(self, layer: Image | None = None) -> list[Box]:
        """Level-0 boxes of the shapes (their bounding boxes) in the chosen Shapes layer."""
        layer = layer or self._require_image()
        shapes = self.shapes_layer.value
        if shapes is None:
            raise _UserError("Choose a Shapes layer with rectangles (or add one and draw)")
        boxes = []
        for vertices in shapes.data:
            world = np.array([shapes.data_to_world(v) for v in np.asarray(vertices)], dtype=np.float64)[:, -2:]
            box = self._level0_box(layer, self._world_points(layer, world))
            if box is not None:
                boxes.append(box)
        if not boxes:
            raise _UserError(f"No shape of {shapes.name} lies on {layer.name}: draw rectangles over the image")
        return boxes

    # ---- running ---------------------------------------------------------------------------------

    def _require_image(self) -> Image:
        layer = self.image.value
        if layer is None:
            raise _UserError("Open an image first (File › Open, or File › Open Sample › HoverFast nuclei)")
        if layer.ndim != 2:
            raise _UserError(f"{layer.name} is not a 2-D image (HoverFast segments 2-D brightfield slides)")
        return layer

    def _slide_source(self, layer: Image) -> tuple[str, float | None]:
        """A file the engine can open for this layer, and its µm per pixel."""
        mpp = layer_mpp(layer)
        path = layer.metadata.get("path")
        if path:
            return str(path), mpp
        cached = self._temp_images.get(layer_token(layer))
        if cached is not None:
            return cached, mpp
        if layer.multiscale:
            raise _UserError(f"{layer.name} is a pyramid without a file: open the slide with File › Open")
        import tifffile

        pixels = np.asarray(layer.data)
        if pixels.dtype != np.uint8:
            raise _UserError(f"{layer.name} has {pixels.dtype} pixels: HoverFast needs 8-bit RGB brightfield images")
        folder = tempfile.mkdtemp(prefix="hoverfast-")
        path = str(Path(folder) / "image.tif")
        tifffile.imwrite(path, pixels, photometric="rgb" if pixels.ndim == 3 else "minisblack", tile=(256, 256))
        self._temp_images[layer_token(layer)] = path
        return path, mpp

    def _options(self) -> RunOptions:
        from .core.pipeline import RunError

        tile = int(self.tile_size.value)
        try:
            return RunOptions(
                tiling=TilingOptions(tile=tile),
                batch_size=int(self.batch_size.value) or None,
                stain=self.stain.value,
                min_area_um2=float(self.min_area.value),
                workers=self.postprocess_workers,
            )
        except (RunError, ValueError) as exc:
            raise _UserError(str(exc)) from None

    def prepare(self) -> _Job:
        """Everything a run needs, checked on the main thread; raises _UserError with what to fix."""
        layer = self._require_image()
        model = self._ensure_model()
        path, mpp = self._slide_source(layer)
        scope = self.scope.value
        regions: list[Box] | None
        priority = None
        if scope == SCOPE_VIEW:
            regions = [self.view_region(layer)]
        elif scope == SCOPE_RECTANGLES:
            regions = self.rectangle_regions(layer)
        else:
            if mpp is None:
                raise _UserError(f"{layer.name} has no pixel size (µm per pixel): a whole-slide run needs one")
            regions = None
            priority = self.view_centre(layer)
        if self.pixel_size.value > 0:
            mpp = float(self.pixel_size.value)
        if mpp is None:
            raise _UserError(f"{layer.name} has no pixel size (µm per pixel): set Pixel size (µm) to the scan's")
        slide_job = SlideJob(slide=path, mpp=mpp, regions=tuple(regions) if regions else None,
                             options=self._options(), priority=priority)
        return _Job(slide_job=slide_job, model=model, cache=self.tile_cache())

    def tile_cache(self) -> TileCache | None:
        """The widget's tile cache (user cache folder, 5 GB, least recently used evicted), if on and usable."""
        if not self.use_cache.value:
            return None
        if self._cache is None:
            from ._sample_data import tile_cache_dir

            try:
                self._cache = TileCache(tile_cache_dir(), max_bytes=WIDGET_CACHE_BYTES)
            except CacheError as exc:
                show_info(f"{exc}; running without the cache")
                return None
        return self._cache

    def clear_cache(self, *_: Any) -> int:
        """Remove every cached tile (Clear cache button); returns the bytes freed."""
        cache = self._cache
        if cache is None:
            from ._sample_data import tile_cache_dir

            folder = tile_cache_dir()
            if not folder.is_dir():
                self.status.value = "The cache is empty"
                return 0
            cache = TileCache(folder, max_bytes=WIDGET_CACHE_BYTES)
        freed = cache.clear()
        self.status.value = f"Cache cleared: {freed / 1e6:,.0f} MB freed"
        return freed

    @property
    def running(self) -> bool:
        return self._run is not None

    def run(self, *_: Any) -> None:
        """Start a run with the current settings (Run button)."""
        if self.running:
            return
        try:
            job = self.prepare()
        except _UserError as exc:
            self._report(str(exc))
            return
        layer = self.image.value
        self._run = self._begin(job, self.nuclei_layer(layer, create=True))
        self._alive["cancel"] = job.cancel
        self._set_running(True)
        self.status.value = "Starting…"
        from napari.utils import progress

        self._pbar = progress(total=0, desc="HoverFast: starting")
        if self.synchronous:
            self._run_synchronously(job)
        else:
            self._start_worker(job)

    def _run_synchronously(self, job: _Job) -> None:
        generator = run_job(job)
        try:
            while True:
                self._on_yielded(next(generator))
        except StopIteration as stop:
            self._on_returned(stop.value)
        except Exception as exc:  # the worker path reports these through `errored`
            self._on_errored(exc)
        finally:
            self._on_finished()

    def _start_worker(self, job: _Job) -> None:
        from napari.qt.threading import create_worker

        generator = run_job(job)
        worker = create_worker(_drive, generator, _ignore_errors=True)
        alive = self._alive
        # plain functions holding the widget weakly: signals may arrive after the viewer closed
        me = weakref.ref(self)

        def call(name: str) -> Any:
            def handler(*args: Any) -> None:
                widget = me()
                if widget is not None and not alive["closed"]:
                    getattr(widget, name)(*args)
            return handler

        worker.yielded.connect(call("_on_yielded"))
        worker.returned.connect(call("_on_returned"))
        worker.errored.connect(call("_on_errored"))
        worker.aborted.connect(lambda: job.cancel.set())
        worker.finished.connect(lambda: _close_generator(generator))
        worker.finished.connect(call("_on_finished"))
        self._worker = worker
        worker.start()

    def cancel(self, *_: Any) -> None:
        """Stop the run after the batch in progress; nuclei found so far stay (Cancel button)."""
        if self._run is not None:
            self._run.job.cancel.set()
            self.status.value = "Cancelling after the current batch…"

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        self.progress.visible = True

    # ---- results ---------------------------------------------------------------------------------

    def nuclei_layer(self, image: Image, *, create: bool = False) -> Shapes | None:
        """The "<image> nuclei" layer of ``image`` (made on first use, on the image's frame)."""
        for layer in self._viewer.layers:
            if isinstance(layer, Shapes) and layer.metadata.get("hoverfast") and layer.metadata.get("image_token") == layer_token(image):
                return layer
        if not create:
            return None
        name = f"{image.name} nuclei"
        mpp = layer_mpp(image)
        selection = self._viewer.layers.selection
        active = selection.active  # kept: the next rectangle the user draws must not land in the nuclei
        layer = self._viewer.add_shapes(
            ndim=2, name=name, scale=tuple(image.scale[-2:]), translate=tuple(image.translate[-2:]),
            units=tuple(image.units[-2:]), axis_labels=("y", "x"),
            features={k: np.empty(0, dtype=np.int64 if k == TILE else np.float64) for k in _columns(mpp)},
            edge_width=1.0, edge_color=np.asarray(PLAIN_EDGE), face_color="transparent", blending="translucent",
            metadata={
                "hoverfast": True, "image": image.name, "image_token": layer_token(image), "slide": image.metadata.get("path"),
                "mpp": mpp, "data_units": LEVEL0_PX, "covered": [], "runs": [],
            },
        )
        if active is not None:
            selection.active = find_layer(self._viewer.layers, layer_token(active))
        return layer

    def display(self, layer: Shapes) -> NucleiDisplay:
        """What the nuclei layer shows and holds (made on first use, following the current view)."""
        token = layer_token(layer)
        display = self._displays.get(token)
        if display is None or not same_layer(display.layer, layer):
            image = self._image_of(layer)
            size = self._slide_size(image) if image is not None else _extent_of(layer)
            display = NucleiDisplay(self._viewer, layer, layer.metadata.get("mpp"), size, self.display_options)
            display.feature = self.color_by.value
            display.view = self._view_box(image) if image is not None else None
            self._displays[token] = display
        return display

    def _image_of(self, layer: Shapes) -> Image | None:
        image = find_layer(self._viewer.layers, layer.metadata.get("image_token"))
        return image if isinstance(image, Image) else None

    def _begin(self, job: _Job | None, layer: Shapes) -> "_RunState":
        """A run's state: new nuclei go to ``layer``, checked against what earlier runs found there."""
        display = self.display(layer)
        return _RunState(job=job, layer=layer, display=display, first_id=display.nuclei.next_id,  # type: ignore[arg-type]
                         covered=_covered_boxes(layer), started=time.perf_counter())

    # ---- following the view ----------------------------------------------------------------------

    def _on_camera(self, *_: Any) -> None:
        if not self._alive["closed"]:
            self._view_timer.start()  # restarted by every move: runs once the camera settles

    def update_views(self) -> None:
        """Give each nuclei layer the area now on screen: large results show outlines only near it."""
        if self._alive["closed"]:
            return
        for display in list(self._displays.values()):
            image = self._image_of(display.layer)
            if image is not None and has_layer(self._viewer.layers, display.layer):
                display.set_view(self._view_box(image))

    def _view_box(self, image: Image) -> Box4 | None:
        """The level-0 area (x0, y0, x1, y1) on the canvas, unclipped; None before the canvas has a size."""
        rows, cols = self._viewer.canvas.size
        camera = self._camera()
        zoom = camera.zoom
        if not zoom or rows <= 0 or cols <= 0:
            return None
        cy, cx = camera.center[-2:]
        hr, hc = rows / (2 * zoom), cols / (2 * zoom)
        return self._level0_edges(image, self._world_points(image, [(cy - hr, cx - hc), (cy + hr, cx + hc)]))

    def _on_yielded(self, item: Progress | NucleusBatch) -> None:
        run = self._run
        if run is None:
            return
        if isinstance(item, NucleusBatch):
            if run.pending is None:
                run.pending = Nuclei(item.nuclei.mpp)
            run.pending.extend(item.nuclei)  # a run's batches have unique ids: columns copied, not recomputed
            # Adding to a Shapes layer costs time in proportion to the layer's size (napari rebuilds
            # its mesh), so batches are coalesced: the layer is updated at most once per
            # FLUSH_BUSY_RATIO × the last update's cost, keeping the viewer idle most of the time.
            if time.perf_counter() - run.flushed_at >= max(FLUSH_MIN_SECONDS, FLUSH_BUSY_RATIO * run.flush_cost):
                self._flush(run)
        else:
            self._show_progress(item, run)

    def _flush(self, run: "_RunState") -> None:
        """Add the batches received since the last update to the layer (if it is still shown)."""
        pending, run.pending = run.pending, None
        start = time.perf_counter()
        if pending is not None and len(pending) and has_layer(self._viewer.layers, run.layer):
            self._add_batch(run, pending)
        run.flushed_at = time.perf_counter()
        run.flush_cost = run.flushed_at - start

    def _add_batch(self, run: "_RunState", batch: Nuclei) -> None:
        nuclei = run.display.nuclei
        earlier = nuclei.select(nuclei.ids < run.first_id) if run.first_id else Nuclei(nuclei.mpp)
        keep = novel_nuclei(batch, earlier, run.covered)
        run.duplicates += int((~keep).sum())
        if keep.any():
            run.added += len(run.display.add(batch.select(keep)))

    def _show_progress(self, item: Progress, run: "_RunState") -> None:
        self.progress.max = max(item.tiles_total, 1)
        self.progress.value = item.tiles_done
        eta = item.eta
        left = "" if eta is None else f" · {_duration(eta)} left"
        found = run.added + (len(run.pending) if run.pending is not None else 0)
        text = f"{item.tiles_done}/{item.tiles_total} tiles · {found:,} nuclei{left}"
        self.status.value = text
        pbar = self._pbar
        if pbar is not None:
            if pbar.total != item.tiles_total:
                pbar.total = item.tiles_total
            if item.tiles_done > pbar.n:
                pbar.update(item.tiles_done - pbar.n)
            pbar.set_description(f"HoverFast: {found:,} nuclei")

    def _on_returned(self, result: RunResult) -> None:
        run = self._run
        if run is None:
            return
        self._flush(run)
        run.result = result
        layer = run.layer
        finished = set(result.tiles_done)
        done = [t for t in result.tiles if t.index in finished]
        boxes = [[t.owned.x / result.scale, t.owned.y / result.scale, t.owned.w / result.scale, t.owned.h / result.scale]
                 for t in done]
        summary = {
            "run": dict(result.parameters), "cancelled": result.cancelled, "error": result.error,
            "tiles_done": list(result.tiles_done), "tiles_done_level0": boxes, "tiles_total": len(result.tiles),
            "tiles_cached": result.tiles_cached,
            "nuclei_found": len(result.nuclei), "nuclei_added": run.added, "duplicates_skipped": run.duplicates,
            "seconds": round(result.seconds, 3),
        }
        metadata = layer.metadata
        metadata.update(summary)
        metadata["covered"] = list(metadata.get("covered", [])) + boxes
        metadata["runs"] = list(metadata.get("runs", [])) + [{k: v for k, v in summary.items() if k != "run"}]
        run.display.recolor(self.color_by.value)
        if result.error:
            self._report(f"Run stopped: {result.error}. The {run.added:,} nuclei found so far are kept.")
        elif result.cancelled:
            self.status.value = (f"Cancelled: {len(result.tiles_done)}/{len(result.tiles)} tiles, "
                                 f"{run.added:,} nuclei kept")
        else:
            extra = f" ({run.duplicates:,} already found)" if run.duplicates else ""
            cached = f" ({result.tiles_cached} from the cache)" if result.tiles_cached else ""
            tiles = f"{len(result.tiles)} tile{'s' if len(result.tiles) != 1 else ''}"
            self.status.value = (f"Done: {tiles}{cached}, {run.added:,} nuclei{extra} "
                                 f"in {_duration(result.seconds)}")
        if run.display.mode == OVERVIEW:
            self.status.value += f" · {len(run.display.nuclei):,} in all: zoom in to see their outlines"

    def _on_errored(self, exc: BaseException) -> None:
        run = self._run
        message = str(exc) or type(exc).__name__
        if run is not None:
            self._flush(run)
            run.layer.metadata.update({"error": message, "cancelled": False})
            kept = f" The {run.added:,} nuclei found so far are kept." if run.added else ""
        else:
            kept = ""
        self._report(f"Run failed: {message}.{kept}")

    def _on_finished(self, *_: Any) -> None:
        self._run = None
        self._worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if not self._alive["closed"]:
            self._set_running(False)

    def _report(self, message: str) -> None:
        self.status.value = message
        show_error(message)

    # ---- colour ----------------------------------------------------------------------------------

    def _on_color_by(self, *_: Any) -> None:
        image = self.image.value
        layer = self.nuclei_layer(image) if image is not None else None
        if layer is not None and not self.running:
            self.display(layer).recolor(self.color_by.value)

    # ---- export ----------------------------------------------------------------------------------

    def _on_export_clicked(self, *_: Any) -> None:
        from qtpy.QtWidgets import QFileDialog

        layer = self._export_layer()
        if layer is None:
            return
        start = str(Path(layer.metadata.get("slide") or Path.home() / "nuclei").with_suffix("")) + "_nuclei.geojson"
        from .core.formats import GEOJSON_SUFFIXES

        patterns = " ".join(f"*{s}" for s in GEOJSON_SUFFIXES)
        path, _ = QFileDialog.getSaveFileName(self.native, "Export nuclei", start, f"QuPath GeoJSON ({patterns})")
        if path:
            self.export(path)

    def _export_layer(self) -> Shapes | None:
        image = self.image.value
        layer = self.nuclei_layer(image) if image is not None else None
        if layer is None:
            active = self._viewer.layers.selection.active
            layer = active if isinstance(active, Shapes) and active.metadata.get("hoverfast") else None
        if layer is None or not len(self.display(layer).nuclei):
            self._report("Nothing to export yet: run HoverFast first")
            return None
        return layer

    def export(self, path: str | os.PathLike[str], layer: Shapes | None = None) -> list[Path]:
        """QuPath GeoJSON of the nuclei layer, the run's parameters beside it (``.run.json``) and a CSV
        of the measurements (same name, ``.csv``). Returns the files written."""
        from .core.formats import GEOJSON_SUFFIXES, find_format, stem_of
        from .core.outputs import OutputSet, write_outputs

        layer = layer or self._export_layer()
        if layer is None:
            return []
        path = Path(path)
        if find_format(path, "geojson") is None:
            path = path.with_name(path.name + GEOJSON_SUFFIXES[0])
        csv_path = path.with_name(stem_of(path) + ".csv")
        nuclei = self.display(layer).nuclei
        parameters = {
            "run": layer.metadata.get("run"), "runs": layer.metadata.get("runs"),
            "model_sha256": (layer.metadata.get("run") or {}).get("model_sha256"),
            "cancelled": layer.metadata.get("cancelled"), "error": layer.metadata.get("error"),
            "image": layer.metadata.get("image"), "slide": layer.metadata.get("slide"),
        }
        try:
            written = write_outputs(nuclei, OutputSet(path, csv_path), complete=True, sidecar=parameters)
        except (OSError, ValueError) as exc:
            self._report(f"Export failed: {exc}")
            return []
        self.status.value = f"Exported {len(nuclei):,} nuclei to {path.name}, {csv_path.name} and {written[-1].name}"
        show_info(self.status.value)
        return written


@dataclass
class _RunState:
    job: _Job
    layer: Shapes
    display: NucleiDisplay
    first_id: int  # nuclei with smaller ids were found before this run (de-duplication)
    covered: np.ndarray
    started: float
    added: int = 0
    duplicates: int = 0
    result: RunResult | None = None
    pending: Nuclei | None = None  # batches received but not yet shown
    flushed_at: float = -math.inf  # the first batch is shown at once
    flush_cost: float = 0.0


def _columns(mpp: float | None) -> list[str]:
    return list(Nuclei(mpp).measurements())


def _covered_boxes(layer: Shapes) -> np.ndarray:
    """Areas finished by earlier runs on this layer as (x0, y0, x1, y1) rows."""
    boxes = np.asarray(layer.metadata.get("covered") or [], dtype=np.float64).reshape(-1, 4)
    return np.column_stack([boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]])


def _clip_box(edges: Box4, size: tuple[int, int]) -> Box | None:
    """Whole level-0 pixels covering ``edges`` (x0, y0, x1, y1) within a slide of ``size`` (w, h)."""
    x0, y0 = max(math.floor(edges[0]), 0), max(math.floor(edges[1]), 0)
    x1, y1 = min(math.ceil(edges[2]), size[0]), min(math.ceil(edges[3]), size[1])
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(x0, y0, x1 - x0, y1 - y0)


def _extent_of(layer: Shapes) -> tuple[int, int]:
    """(width, height) in level-0 px covering a nuclei layer whose image is gone."""
    if not layer.nshapes:
        return 1, 1
    corner = np.max([np.asarray(v)[:, -2:].max(axis=0) for v in layer.data], axis=0)
    return int(corner[1]) + 2, int(corner[0]) + 2


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _on_destroyed(alive: dict[str, Any]) -> None:
    """The widget (or its viewer) closed: stop the run so no thread outlives it for long."""
    alive["closed"] = True
    if alive.get("cancel") is not None:
        alive["cancel"].set()
    for display in alive.get("displays", {}).values():
        with contextlib.suppress(RuntimeError):  # the layer is gone along with the viewer
            display.detach()


def _drive(generator: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    """The worker's generator: ours, so it can be closed (slide and pool freed) after an abort."""
    return (yield from generator)


def _close_generator(generator: Generator[Any, None, Any]) -> None:
    with contextlib.suppress(Exception):  # already reported through the worker's signals
        generator.close()
