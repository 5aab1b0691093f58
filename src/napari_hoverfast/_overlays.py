"""Rasters laid over a slide: the nuclei overview, the tissue mask and the tiles done.

Each is an image layer whose pixel j covers level-0 ``[j·f, (j+1)·f)`` of the slide (placed by
:func:`~napari_hoverfast._layers.raster_placement`), so its cost follows the slide's area, not the
number of nuclei or tiles. Adding one never takes the user's layer selection: the next rectangle
drawn goes where the user meant it. No Qt here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.colormaps import Colormap

from ._colours import ramp
from ._layers import frame_kwargs, has_layer, layer_token, raster_placement

#: ``metadata`` key of the rasters this plugin lays over a slide (the widget offers none as an image).
OVERLAY_KEY = "hoverfast_overlay"
#: ``metadata`` key of the nuclei overview (its value: the nuclei layer's token).
OVERVIEW_KEY = "hoverfast_overview"
#: Coverage raster values: a tile done (its maps not kept), a tile done with its maps in the cache.
DONE, CACHED = 1, 2


def add_keeping_selection(viewer: Any, add: Callable[[], Any]) -> Any:
    """Add a layer with ``add()`` and give the user their selection and active layer back."""
    selection = list(viewer.layers.selection)
    active = viewer.layers.selection.active
    layer = add()
    viewer.layers.selection.clear()
    viewer.layers.selection.update(selection)
    viewer.layers.selection.active = active
    return layer


def factor_for(size: tuple[int, int], finest: int, max_side: int) -> int:
    """Level-0 px per raster pixel: ``finest``, doubled until the raster's longer side fits ``max_side``."""
    factor = finest
    while max(size) / factor > max_side:
        factor *= 2
    return factor


class RasterOverlay:
    """One raster over ``over`` (a layer on the slide's frame), made when first needed and again if deleted."""

    def __init__(self, viewer: Any, over: Any, size: tuple[int, int], factor: float, name: str,
                 colormap: Colormap, metadata: dict[str, Any], *, opacity: float = 1.0) -> None:
        self.viewer, self.over, self.size, self.factor = viewer, over, size, factor
        self.name, self.colormap, self.metadata, self.opacity = name, colormap, metadata, opacity
        self.layer: Image | None = None
        self.raster: np.ndarray | None = None

    def shape(self) -> tuple[int, int]:
        w, h = self.size
        return max(math.ceil(h / self.factor), 1), max(math.ceil(w / self.factor), 1)

    def exists(self) -> bool:
        return self.layer is not None and has_layer(self.viewer.layers, self.layer)

    def ensure(self, *, visible: bool = False) -> bool:
        """Make the layer if it is missing; True when it was made (its raster is then empty)."""
        if self.exists():
            return False
        self.raster = np.zeros(self.shape(), dtype=np.uint8)
        scale, translate = raster_placement(self.over, self.factor)
        self.layer = add_keeping_selection(self.viewer, lambda: self.viewer.add_image(
            self.raster, name=self.name, scale=scale, translate=translate, colormap=self.colormap,
            contrast_limits=(0, 255), interpolation2d="nearest", blending="translucent", opacity=self.opacity,
            visible=visible, metadata={OVERLAY_KEY: True, **self.metadata}, **frame_kwargs(self.over),
        ))
        return True

    def adopt(self, layer: Image) -> None:
        """Carry on with a layer made earlier (the dock widget was opened again)."""
        self.layer, self.raster = layer, layer.data

    def refresh(self) -> None:
        if self.exists() and self.layer.visible:  # type: ignore[union-attr]
            self.layer.refresh()  # type: ignore[union-attr]

    def show(self, visible: bool) -> None:
        if self.exists():
            self.layer.visible = visible  # type: ignore[union-attr]

    def remove(self) -> None:
        if self.exists():
            self.viewer.layers.remove(self.layer)
        self.layer, self.raster = None, None


# --- the nuclei overview ------------------------------------------------------------------------------


def overview_colormap(single: tuple[float, ...] | np.ndarray | None) -> Colormap:
    """256 colours: 0 transparent (no nucleus), 1–255 the measurement's scale, or all the one colour;
    ``single`` as a (k, 4) array: categories, class i at 1 + i (the IHC classes)."""
    colors = np.zeros((256, 4))
    palette = np.asarray(single) if single is not None else None
    if palette is not None and palette.ndim == 2:
        colors[1:1 + len(palette)] = palette
    else:
        colors[1:] = palette if palette is not None else ramp(255)
    colors[1:, 3] = 1.0
    return Colormap(colors=colors, controls=np.linspace(0.0, 1.0, 257), interpolation="zero", name="hoverfast overview")


def overview_of(viewer: Any, nuclei_layer: Any, size: tuple[int, int], factor: int) -> RasterOverlay:
    """The overview raster of a nuclei layer (one pixel per nucleus), adopting one already in the viewer."""
    token = layer_token(nuclei_layer)
    overlay = RasterOverlay(viewer, nuclei_layer, size, factor, f"{nuclei_layer.name} (overview)", overview_colormap(None),
                            {OVERVIEW_KEY: token, "nuclei_layer": nuclei_layer.name})
    existing = next((im for im in viewer.layers if isinstance(im, Image) and im.metadata.get(OVERVIEW_KEY) == token), None)
    if existing is not None:
        overlay.adopt(existing)
    return overlay


def paint_points(raster: np.ndarray, factor: float, x: np.ndarray, y: np.ndarray, values: np.ndarray | int) -> None:
    """Write ``values`` at the raster pixels holding level-0 points (x, y)."""
    if not len(x):
        return
    rows = np.clip((np.asarray(y) // factor).astype(np.int64), 0, raster.shape[0] - 1)
    cols = np.clip((np.asarray(x) // factor).astype(np.int64), 0, raster.shape[1] - 1)
    raster[rows, cols] = values


# --- the tissue mask and the tiles done -----------------------------------------------------------------

TISSUE_COLOUR = (0.1, 0.9, 0.3, 1.0)
#: Tiles done: a faint fill (blue; cyan where the maps are cached) inside a clear border (what a tile covers).
DONE_COLOUR = (0.3, 0.6, 1.0, 0.18)
CACHED_COLOUR = (0.1, 0.9, 0.9, 0.18)
BORDER_COLOUR = (0.1, 0.9, 0.9, 0.9)
BORDER = 3  # raster value of a tile's border


def _steps(*colours: tuple[float, ...]) -> Colormap:
    """Value 0 transparent, then one colour per value 1, 2, … (the rest of 0–255 the last one)."""
    table = np.zeros((256, 4))
    for value, colour in enumerate(colours, start=1):
        table[value:] = colour
    return Colormap(colors=table, controls=np.linspace(0.0, 1.0, 257), interpolation="zero", name="hoverfast steps")


def tissue_overlay(viewer: Any, image: Any, size: tuple[int, int], mask: Any) -> RasterOverlay:
    """The tissue mask found on the slide, green over tissue (what "Skip glass" keeps)."""
    overlay = RasterOverlay(viewer, image, size, float(mask.downsample), f"{image.name} tissue", _steps(TISSUE_COLOUR),
                            {"hoverfast_tissue": layer_token(image)}, opacity=0.35)
    return overlay


def fill_tissue(overlay: RasterOverlay, mask: Any) -> None:
    raster = overlay.raster
    if raster is None:
        return
    rows, cols = min(raster.shape[0], mask.mask.shape[0]), min(raster.shape[1], mask.mask.shape[1])
    raster[:] = 0
    raster[:rows, :cols] = mask.mask[:rows, :cols].astype(np.uint8)
    overlay.refresh()


def coverage_overlay(viewer: Any, image: Any, size: tuple[int, int], factor: int) -> RasterOverlay:
    """The tiles done on the slide: blue, or cyan where their maps are in the cache (re-thresholds use them)."""
    return RasterOverlay(viewer, image, size, factor, f"{image.name} tiles done",
                         _steps(DONE_COLOUR, CACHED_COLOUR, BORDER_COLOUR), {"hoverfast_coverage": layer_token(image)})


def fill_boxes(overlay: RasterOverlay, boxes: list[tuple[list[float], int]]) -> None:
    """Paint level-0 boxes ``([x, y, w, h], value)`` into the raster, each inside a border (all redrawn)."""
    raster = overlay.raster
    if raster is None:
        return
    raster[:] = 0
    f = overlay.factor
    cells = []
    for (x, y, w, h), value in boxes:
        r0, c0 = int(y // f), int(x // f)
        r1, c1 = max(math.ceil((y + h) / f), r0 + 1), max(math.ceil((x + w) / f), c0 + 1)
        raster[r0:r1, c0:c1] = np.maximum(raster[r0:r1, c0:c1], value)
        cells.append((r0, c0, r1, c1))
    for r0, c0, r1, c1 in cells:  # borders last: a neighbour's fill does not cover them
        raster[r0, c0:c1] = raster[r1 - 1, c0:c1] = BORDER
        raster[r0:r1, c0] = raster[r0:r1, c1 - 1] = BORDER
    overlay.refresh()
