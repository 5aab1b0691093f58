"""What a run segments: which file, at which pixel size, and which level-0 regions of it.

The widget's three scopes become level-0 boxes here (the view on the canvas, the rectangles of a
Shapes layer, the whole image), through the coordinate functions of ``_layers.py``. An image without
a file behind it (a NumPy array layer) is written once to a temporary TIFF and read through the same
engine; a layer that napari's own reader opened is read from its file again, so the engine sees the
slide's real pyramid. The tissue mask of each slide is found once and kept. No Qt here.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Shapes

from ._colours import SINGLE_COLOURS
from ._layers import (
    camera_of,
    clip_box,
    find_layer,
    frame_kwargs,
    layer_mpp,
    layer_token,
    shape_boxes,
    slide_size,
    view_edges,
)
from ._overlays import add_keeping_selection
from .core.tiling import Box
from .core.tissue import TissueMask

#: ``metadata`` key of the rectangles layer "Draw region" adds (its value: the image's token).
REGIONS_KEY = "hoverfast_regions"
#: Edge colour of drawn regions (not the nuclei's colour).
REGION_EDGE = SINGLE_COLOURS["cyan"]
PLUGIN = "napari-hoverfast"


class UserError(ValueError):
    """Something the user can fix; shown in the status line and as a notification."""


def require_image(layer: Image | None) -> Image:
    if layer is None:
        raise UserError("Open an image first (File › Open, or File › Open Sample › HoverFast nuclei)")
    if layer.ndim != 2:
        raise UserError(f"{layer.name} is not a 2-D image (HoverFast segments 2-D brightfield slides)")
    return layer


def _source_file(layer: Image) -> str | None:
    """The file napari read the layer from, when the layer holds that file's level 0."""
    source = getattr(layer, "source", None)
    path = getattr(source, "path", None)
    return str(path) if path and Path(path).is_file() else None


def _readable_mpp(path: str) -> tuple[float | None, tuple[int, int]] | None:
    """(µm per pixel, level-0 size) as the plugin's reader finds them in ``path``, or None if it cannot open it."""
    from .core.slide import Slide

    try:
        with Slide(path) as slide:
            return slide.mpp, tuple(slide.dimensions)  # type: ignore[return-value]
    except Exception:  # any file napari opened but tiffslide cannot: no hint, no source
        return None


def pixel_size_hint(layer: Image) -> str:
    """Why the image has no pixel size, and what to do (the plugin's reader may find it in the file)."""
    path = _source_file(layer)
    reader = getattr(getattr(layer, "source", None), "reader_plugin", None)
    if path and reader != PLUGIN:
        found = _readable_mpp(path)
        if found is not None and found[0]:
            who = "napari's own reader" if reader in (None, "napari") else f"The {reader} reader"
            return (f"{who} opened {Path(path).name} without its pixel size; HoverFast's reader finds "
                    f"{found[0]:.4g} µm/px in it. Open the file with File › Open with Plugin › HoverFast nuclei, "
                    "or enter the pixel size here.")
    if path:
        return f"{Path(path).name} does not say its pixel size: enter the scan's µm per pixel (0.25 at 40×, 0.5 at 20×)."
    return "This image has no pixel size: enter the scan's µm per pixel (0.25 at 40×, 0.5 at 20×)."


def slide_source(layer: Image, temp_images: dict[str, str]) -> str:
    """A file the engine can open for this layer (its own, the one napari read, or a TIFF written once)."""
    path = layer.metadata.get("path")
    if path:
        return str(path)
    source = _source_file(layer)
    if source is not None:
        found = _readable_mpp(source)
        if found is not None and found[1] == slide_size(layer):
            return source
    cached = temp_images.get(layer_token(layer))
    if cached is not None:
        return cached
    if layer.multiscale:
        raise UserError(f"{layer.name} is a pyramid without a file: open the slide with File › Open")
    import tifffile

    pixels = np.asarray(layer.data)
    if pixels.dtype != np.uint8:
        raise UserError(f"{layer.name} has {pixels.dtype} pixels: HoverFast needs 8-bit RGB brightfield images")
    folder = tempfile.mkdtemp(prefix="hoverfast-")
    written = str(Path(folder) / "image.tif")
    tifffile.imwrite(written, pixels, photometric="rgb" if pixels.ndim == 3 else "minisblack", tile=(256, 256))
    temp_images[layer_token(layer)] = written
    return written


def image_mpp(layer: Image, typed: float) -> float | None:
    """The pixel size a run uses: the image's own, else the one typed in the widget (0: none)."""
    return layer_mpp(layer) or (float(typed) if typed > 0 else None)


# --- regions ---------------------------------------------------------------------------------------------


def view_region(viewer: Any, image: Image) -> Box:
    """The part of the image visible on the canvas at the current zoom, in level-0 pixels."""
    view = view_edges(viewer, image)
    box = clip_box(view, slide_size(image)) if view is not None else None
    if box is None:
        raise UserError(f"{image.name} is not in view: pan to it or choose another scope")
    return box


def rectangle_regions(viewer: Any, image: Image, shapes: Shapes | None) -> list[Box]:
    """Level-0 boxes around the shapes of the chosen Shapes layer that lie on the image."""
    if shapes is None:
        raise UserError("Draw a region first (Draw region), or choose a Shapes layer with rectangles")
    boxes = shape_boxes(viewer, image, shapes)
    if not boxes:
        raise UserError(f"No shape of {shapes.name} lies on {image.name}: draw rectangles over the image")
    return boxes


def whole_image(image: Image) -> Box:
    return Box(0, 0, *slide_size(image))


def regions_layer(viewer: Any, image: Image) -> Shapes:
    """The image's "regions" layer (made on first use): rectangles in µm, no fill, a cyan edge."""
    token = layer_token(image)
    layer = next((ly for ly in viewer.layers if isinstance(ly, Shapes) and ly.metadata.get(REGIONS_KEY) == token), None)
    if layer is None:
        mpp = layer_mpp(image)
        scale = (1.0, 1.0) if mpp else tuple(image.scale[-2:])  # the world is µm when the image knows its pixel size
        layer = add_keeping_selection(viewer, lambda: viewer.add_shapes(
            ndim=2, name=f"{image.name} regions", scale=scale, translate=tuple(image.translate[-2:]),
            face_color="transparent", edge_color=np.asarray(REGION_EDGE), blending="translucent",
            metadata={REGIONS_KEY: token}, **frame_kwargs(image),
        ))
    follow_zoom(viewer, layer)
    layer.current_face_color = "transparent"
    layer.current_edge_color = REGION_EDGE
    return layer


def follow_zoom(viewer: Any, layer: Shapes, screen_px: float = 2.0) -> None:
    """A regions layer's edges about ``screen_px`` wide at the current zoom (its drawn shapes and the next)."""
    zoom = float(camera_of(viewer).zoom) * float(abs(layer.scale[-1]))
    if zoom <= 0:
        return
    width = screen_px / zoom
    if layer.nshapes and not np.allclose(layer.edge_width, width, rtol=0.2):
        layer.edge_width = width
    layer.current_edge_width = width


def region_layers_of(viewer: Any) -> list[Shapes]:
    return [ly for ly in viewer.layers if isinstance(ly, Shapes) and ly.metadata.get(REGIONS_KEY)]


def image_of(viewer: Any, layer: Any) -> Image | None:
    """The image a nuclei or regions layer belongs to, if it is still open."""
    token = layer.metadata.get("image_token") or layer.metadata.get(REGIONS_KEY)
    image = find_layer(viewer.layers, token)
    return image if isinstance(image, Image) else None


class TissueMasks:
    """Each slide's tissue mask, found once (in whichever thread asks first) and kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._masks: dict[tuple[str, float | None], TissueMask] = {}

    def __call__(self, path: str, mpp: float | None) -> TissueMask:
        from .core.slide import Slide
        from .core.tissue import tissue_mask

        key = (str(path), mpp)
        with self._lock:
            known = self._masks.get(key)
        if known is not None:
            return known
        with Slide(path, mpp=mpp) as slide:
            mask = tissue_mask(slide)
        with self._lock:
            return self._masks.setdefault(key, mask)


def nuclei_layer_of(viewer: Any, image: Image) -> Shapes | None:
    """The image's "<image> nuclei" layer, if it has one."""
    token = layer_token(image)
    return next((ly for ly in viewer.layers if isinstance(ly, Shapes) and ly.metadata.get("hoverfast")
                 and ly.metadata.get("image_token") == token), None)


def add_nuclei_layer(viewer: Any, image: Image, mpp: float | None, colour: tuple[float, ...]) -> Shapes:
    """A new "<image> nuclei" layer: level-0 px on the image's frame, its units, no fill; the user's layer stays active."""
    from ._layers import LEVEL0_PX
    from .core.nuclei import TILE, Nuclei

    token = layer_token(image)
    return add_keeping_selection(viewer, lambda: viewer.add_shapes(
        ndim=2, name=f"{image.name} nuclei", scale=tuple(image.scale[-2:]), translate=tuple(image.translate[-2:]),
        features={k: np.empty(0, dtype=np.int64 if k == TILE else np.float64) for k in Nuclei(mpp).measurements()},
        edge_width=1.0, edge_color=np.asarray(colour), face_color="transparent", blending="translucent",
        metadata={"hoverfast": True, "image": image.name, "image_token": token, "slide": image.metadata.get("path"),
                  "mpp": mpp, "data_units": LEVEL0_PX, "covered": [], "runs": []},
        **frame_kwargs(image),
    ))
