"""The runs the widget asks of the engine: a run of the form's settings, or a re-threshold from the cache.

Both are :class:`~napari_hoverfast._session.Job` values built on the main thread from what the form
says; everything the user can fix is a :class:`~napari_hoverfast._scope.UserError` raised here,
before a layer is made or a thread started. Also the widget's tile cache (resume, re-threshold).
No Qt here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from napari.layers import Image, Shapes
from napari.utils.notifications import show_info

from ._form import SCOPE_RECTANGLES, SCOPE_VIEW, SCOPE_WHOLE
from ._ihc import ihc_options
from ._layers import camera_of, level0_point
from ._scope import (
    TissueMasks,
    UserError,
    image_mpp,
    rectangle_regions,
    require_image,
    slide_source,
    view_region,
    whole_image,
)
from ._session import Job
from .core.cache import CacheError, TileCache
from .core.focus import Focus
from .core.job import SlideJob
from .core.pipeline import RunOptions
from .core.tiling import TilingOptions

#: The widget's tile cache holds at most this many bytes (least recently used tiles evicted).
WIDGET_CACHE_BYTES = 5 * 10**9


def run_options(form: Any, workers: int | None) -> RunOptions:
    """The engine's options from the form's fields (``workers``: post-processing processes)."""
    from .core.pipeline import RunError

    ihc = ihc_options(form)  # a UserError when the thresholds do not increase
    try:
        return RunOptions(
            tiling=TilingOptions(tile=int(form.tile_size.value)), memory_gb=float(form.memory_gb.value),
            batch_size=int(form.batch_size.value) or None,
            stain=form.stain.value, min_area_um2=float(form.min_area.value),
            max_area_um2=float(form.max_area.value) or None, mask_threshold=float(form.threshold.value),
            workers=workers, ihc=ihc,
        )
    except (RunError, ValueError) as exc:
        raise UserError(str(exc)) from None


def view_centre(viewer: Any, image: Image) -> tuple[float, float]:
    """The canvas centre in level-0 pixels (x, y): where a run starts and a large run follows the user."""
    return level0_point(viewer, image, camera_of(viewer).center[-2:])


def run_job(form: Any, viewer: Any, *, model: Callable[[], Any], cache: TileCache | None, tissue: TissueMasks,
            temp_images: dict[str, str], workers: int | None) -> Job:
    """A run of the form's scope and settings; raises UserError with what to fix.

    ``model`` loads the model, once the settings are known to be complete (no wait for a refused run).
    """
    image = require_image(form.image.value)
    mpp = image_mpp(image, form.pixel_size.value)
    if mpp is None:  # every scope alike: areas and the working resolution follow from it
        raise UserError(f"{image.name} has no pixel size: enter the scan's µm per pixel in Pixel size (µm/px)")
    options = run_options(form, workers)
    loaded = model()
    path = slide_source(image, temp_images)
    scope = form.scope.value
    if scope == SCOPE_VIEW:
        regions = [view_region(viewer, image)]
    elif scope == SCOPE_RECTANGLES:
        regions = rectangle_regions(viewer, image, form.shapes_layer.value)
    else:
        regions = [whole_image(image)]
    centre = view_centre(viewer, image)
    slide_job = SlideJob(slide=path, mpp=mpp, regions=tuple(regions), options=options, priority=centre,
                         skip_glass=bool(form.skip_glass.value))
    focus = Focus(centre) if scope == SCOPE_WHOLE else None
    return Job(slide_jobs=(slide_job,), model=loaded, cache=cache, tissue=tissue, focus=focus)


def retune_job(layer: Shapes | None, options: RunOptions, *, model: Any, cache: TileCache | None,
               tissue: TissueMasks) -> Job | str:
    """The layer's earlier runs again, from the cache only, with the new thresholds; or why there is none."""
    jobs = layer.metadata.get("jobs") if layer is not None else None
    if not jobs:
        return ""
    if cache is None:
        return "The new thresholds apply at the next Run (re-thresholding needs the cache: Advanced settings)"
    if (layer.metadata.get("run") or {}).get("model_sha256") != model.sha256:  # type: ignore[union-attr]
        return "The new thresholds apply at the next Run (another model made these nuclei)"
    changed = {"min_area_um2": options.min_area_um2, "max_area_um2": options.max_area_um2,
               "mask_threshold": options.mask_threshold, "ihc": options.ihc}
    slide_jobs = tuple(replace(j, options=replace(j.options, **changed), priority=None) for j in jobs)
    return Job(slide_jobs=slide_jobs, model=model, cache=cache, tissue=tissue, cache_only=True, retune=True)


class WidgetCache:
    """The widget's tile cache in the user cache folder: opened on first use, None when off or unusable."""

    def __init__(self) -> None:
        self._cache: TileCache | None = None

    def get(self, enabled: bool) -> TileCache | None:
        if not enabled:
            return None
        if self._cache is None:
            from ._sample_data import tile_cache_dir

            try:
                self._cache = TileCache(tile_cache_dir(), max_bytes=WIDGET_CACHE_BYTES)
            except CacheError as exc:
                show_info(f"{exc}; running without the cache")
                return None
        return self._cache

    def clear(self) -> int | None:
        """Remove every cached tile; the bytes freed (None: there was no cache folder)."""
        cache = self._cache
        if cache is None:
            from ._sample_data import tile_cache_dir

            folder = tile_cache_dir()
            if not folder.is_dir():
                return None
            cache = TileCache(folder, max_bytes=WIDGET_CACHE_BYTES)
        return cache.clear()
