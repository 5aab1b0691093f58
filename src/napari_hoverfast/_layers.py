"""Slides, polygons and the view as napari layer data: the one place where (x, y) becomes (row, col).

The core speaks level-0 pixels with x right and y down, and pixel (row r, col c) covers the square
``[c, c+1] × [r, r+1]`` (QuPath's convention). napari speaks (row, col) and puts a pixel's *centre* at
its index. Over an image layer of ``scale = (mpp, mpp)``, the level-0 point (x, y) is therefore the
world point ``((y - 0.5)·mpp, (x - 0.5)·mpp)`` in µm; without a pixel size, mpp counts as 1 and the
world is in pixels. Everything that crosses between the two (polygons, the area on screen, drawn
rectangles, rasters laid over the slide) goes through the functions here. No Qt here.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

if TYPE_CHECKING:
    import numpy.typing as npt

    from .core.slide import Slide
    from .core.tiling import Box

__all__ = [
    "LayerDataTuple",
    "UM",
    "axis_kwargs",
    "explode_polygons",
    "image_layer_data",
    "layer_mpp",
    "layer_scale",
    "polygons_from_shapes_data",
    "shapes_data_from_polygons",
    "slide_metadata",
]

LayerDataTuple = tuple[Any, dict[str, Any], str]

#: napari's unit name for µm (pint reads "µm").
UM = "µm"
_MICROMETRE_NAMES = {"µm", "um", "micrometer", "micrometre", "micron"}


@lru_cache(maxsize=1)
def _napari_has_units() -> bool:
    """napari >= 0.6 takes ``units`` (and ``axis_labels``); older versions reject unknown keywords."""
    import inspect

    try:
        from napari.layers import Image
    except ImportError:
        return True  # no napari here: the layer data are for a newer one, or for tests
    return "units" in inspect.signature(Image.__init__).parameters


def axis_kwargs(mpp: float | None) -> dict[str, Any]:
    """``axis_labels`` and, when the pixel size is known, µm ``units``, if this napari takes them."""
    if not _napari_has_units():
        return {}
    kwargs: dict[str, Any] = {"axis_labels": ("y", "x")}
    if mpp:
        kwargs["units"] = (UM, UM)
    return kwargs


def layer_scale(mpp: float | None) -> tuple[float, float]:
    """napari ``scale`` (row, col) for a layer whose data are level-0 pixels."""
    return (float(mpp), float(mpp)) if mpp else (1.0, 1.0)


def slide_metadata(slide: Slide) -> dict[str, Any]:
    """What the widget needs to read full-resolution pixels again: path, mpp and the pyramid."""
    return {
        "path": str(slide.path),
        "mpp": slide.mpp,
        "level_dimensions": [list(d) for d in slide.level_dimensions],
        "level_downsamples": list(slide.level_downsamples),
        "objective_power": slide.objective_power,
        "vendor": slide.vendor,
    }


def image_layer_data(
    slide: Slide, *, name: str | None = None, in_memory: bool = False
) -> LayerDataTuple:
    """An RGB image layer of ``slide``: its lazy pyramid (multiscale), in µm when its mpp is known.

    ``in_memory`` reads a one-level slide (a picture) into a NumPy array instead.
    """
    kwargs: dict[str, Any] = {
        "name": name or slide.name,
        "rgb": True,
        "scale": layer_scale(slide.mpp),
        "contrast_limits": (0, 255),
        "metadata": slide_metadata(slide),
        **axis_kwargs(slide.mpp),
    }
    if in_memory and slide.level_count == 1:
        w, h = slide.dimensions
        data: Any = slide.read_region(0, 0, w, h)
        kwargs["multiscale"] = False
    else:
        data = slide.to_dask()
        kwargs["multiscale"] = True
    return (data, kwargs, "image")


def layer_mpp(layer: Any) -> float | None:
    """µm per level-0 pixel of a layer: its ``metadata["mpp"]``, else its scale when its unit is µm."""
    metadata = getattr(layer, "metadata", None) or {}
    mpp = metadata.get("mpp")
    if isinstance(mpp, (int, float)) and mpp > 0:
        return float(mpp)
    units = getattr(layer, "units", None)
    scale = getattr(layer, "scale", None)
    if units is not None and scale is not None and len(scale) >= 2:
        unit = str(units[-1]).lower()
        if unit in _MICROMETRE_NAMES and scale[-1] > 0 and abs(scale[-1] - scale[-2]) < 1e-9 * scale[-1]:
            return float(scale[-1])
    return None


def explode_polygons(geometries: Iterable[Any]) -> tuple[list[Any], list[int]]:
    """MultiPolygons split into their parts: ``(parts, index of the geometry each part came from)``."""
    parts: list[Any] = []
    owners: list[int] = []
    for index, geom in enumerate(geometries):
        pieces = list(geom.geoms) if isinstance(geom, MultiPolygon) else [geom]
        parts.extend(pieces)
        owners.extend([index] * len(pieces))
    return parts, owners


def _exterior_xy(polygon: Any) -> npt.NDArray[np.float64]:
    if isinstance(polygon, MultiPolygon):
        raise TypeError("split MultiPolygons first (explode_polygons)")
    if isinstance(polygon, Polygon):
        xy = np.asarray(polygon.exterior.coords, dtype=np.float64)
    elif isinstance(polygon, BaseGeometry):
        raise TypeError(f"expected a polygon, got a {polygon.geom_type}")
    else:
        xy = np.asarray(polygon, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"expected an N × 2 array of (x, y) vertices, got shape {xy.shape}")
    if len(xy) > 1 and np.array_equal(xy[0], xy[-1]):
        xy = xy[:-1]  # napari closes polygons itself
    return xy


def shapes_data_from_polygons(polygons: Iterable[Any], mpp: float | None) -> list[npt.NDArray[np.float64]]:
    """Level-0 polygons (shapely, or N × 2 arrays of x, y) → napari Shapes data: N × 2 (row, col) in µm.

    Exterior rings only (napari shapes have no holes); split MultiPolygons with
    :func:`explode_polygons` first. ``mpp=None`` keeps pixels.
    """
    scale = float(mpp) if mpp else 1.0
    out = []
    for polygon in polygons:
        xy = _exterior_xy(polygon)
        out.append((xy[:, ::-1] - 0.5) * scale)
    return out


def polygons_from_shapes_data(data: Sequence[Any], mpp: float | None) -> list[Polygon]:
    """napari Shapes data (N × 2 or N × D (…, row, col), in µm) → level-0 shapely polygons (x, y)."""
    scale = float(mpp) if mpp else 1.0
    out = []
    for index, vertices in enumerate(data):
        rc = np.asarray(vertices, dtype=np.float64)
        if rc.ndim != 2 or rc.shape[1] < 2:
            raise ValueError(f"shape {index}: expected an N × 2 array of (row, col), got shape {rc.shape}")
        if len(rc) < 3:
            raise ValueError(f"shape {index} has {len(rc)} vertices; a polygon needs at least 3")
        xy = rc[:, -2:][:, ::-1] / scale + 0.5
        out.append(Polygon(xy))
    return out


# --- nuclei layers of the dock widget and the GeoJSON writer (added for _widget.py / _writer.py) --------

#: ``metadata["data_units"]`` of a Shapes layer whose data are level-0 pixels (row, col), shown with the
#: image's own ``scale`` and ``translate`` (the dock widget's nuclei layers).
LEVEL0_PX = "level-0 px"


def shapes_data_mpp(metadata: Any, scale: Sequence[float] | None) -> float | None:
    """The ``mpp`` argument of :func:`polygons_from_shapes_data` for a Shapes layer's own data.

    Nuclei layers of the widget hold level-0 pixels (→ ``None``); layers from the GeoJSON reader hold µm
    at scale 1 (→ their ``metadata["mpp"]``). A layer in µm drawn at another scale counts its data as
    ``mpp / scale`` µm per unit; without a known mpp the data are taken as pixels.
    """
    metadata = metadata if isinstance(metadata, dict) else {}
    if metadata.get("data_units") == LEVEL0_PX:
        return None
    mpp = metadata.get("mpp")
    if not (isinstance(mpp, (int, float)) and mpp > 0):
        return None
    step = float(scale[-1]) if scale is not None and len(scale) else 1.0
    return float(mpp) / step if step > 0 else float(mpp)


def ellipse_vertices(corners: npt.ArrayLike, n: int = 32) -> npt.NDArray[np.float64]:
    """napari's ellipse data (4 corners of its bounding box, rows × cols) → an ``n``-gon on its outline."""
    c = np.asarray(corners, dtype=np.float64)[:, -2:]
    centre = c.mean(axis=0)
    half_a = (c[1] - c[0]) / 2  # napari orders corners around the box: 0→1 and 1→2 are its two axes
    half_b = (c[2] - c[1]) / 2
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)[:, None]
    return centre + np.cos(t) * half_a + np.sin(t) * half_b


#: Metadata key of a layer's identity token. napari hands plugin widgets proxies of its layers, a new
#: proxy object at every access, so ``id()`` and ``is`` cannot tell whether two are the same layer;
#: a token in the layer's metadata (one dict, shared by every proxy) can.
LAYER_TOKEN = "hoverfast_token"


def layer_token(layer: Any) -> str:
    """The layer's identity token, given to it on first use."""
    metadata = layer.metadata
    token = metadata.get(LAYER_TOKEN)
    if not isinstance(token, str):
        token = uuid.uuid4().hex
        metadata[LAYER_TOKEN] = token
    return token


def _unproxied(layer: Any) -> Any:
    """The layer behind napari's proxies (wrapt object proxies expose it as ``__wrapped__``)."""
    inner = getattr(layer, "__wrapped__", None)
    while inner is not None and inner is not layer:
        layer, inner = inner, getattr(inner, "__wrapped__", None)
    return layer


def same_layer(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same layer (either may be a proxy, or ``None``)."""
    if a is None or b is None:
        return False
    return _unproxied(a) is _unproxied(b)


def find_layer(layers: Iterable[Any], token: str | None) -> Any | None:
    """The layer of ``layers`` holding ``token``, or ``None``."""
    if token is None:
        return None
    return next((layer for layer in layers if layer.metadata.get(LAYER_TOKEN) == token), None)


def has_layer(layers: Iterable[Any], layer: Any) -> bool:
    """Whether ``layer`` (or another proxy of it) is among ``layers``."""
    return any(same_layer(layer, other) for other in layers)


# --- the view and the slide's frame (the widget's regions, outlines, overlays) ------------------------

#: Level-0 box (x0, y0, x1, y1), half-open.
Box4 = tuple[float, float, float, float]


def points_in_box(box: Box4 | None, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points (x, y) lie in the half-open ``box``; none when there is no box."""
    if box is None:
        return np.zeros(len(x), dtype=bool)
    x0, y0, x1, y1 = box
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


def box_contains(outer: Box4, inner: Box4) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def camera_of(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` in napari ≥ 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def slide_size(layer: Any) -> tuple[int, int]:
    """(width, height) of an image layer's level 0."""
    dims = layer.metadata.get("level_dimensions")
    if dims:
        return int(dims[0][0]), int(dims[0][1])
    data = layer.data[0] if layer.multiscale else layer.data
    shape = data.shape[:2] if layer.rgb else data.shape[-2:]
    return int(shape[1]), int(shape[0])


def _padded(viewer: Any, layer: Any, points: Any) -> npt.NDArray[np.float64]:
    """2-D world (row, col) points padded with the viewer's other world coordinates to the layer's ndim."""
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))[:, -2:]
    extra = layer.ndim - 2
    if extra > 0:
        lead = np.asarray(viewer.dims.point[:extra], dtype=np.float64)
        pts = np.hstack([np.tile(lead, (len(pts), 1)), pts])
    return pts


def level0_edges(viewer: Any, layer: Any, world_points: Any) -> Box4:
    """Level-0 (x0, y0, x1, y1) spanned by world (row, col) points over the image ``layer``, unclipped."""
    data = np.array([layer.world_to_data(tuple(p)) for p in _padded(viewer, layer, world_points)], dtype=np.float64)[:, -2:]
    data += 0.5  # data (row, col) puts a pixel's centre at its index: its edges are ±0.5
    (r0, c0), (r1, c1) = data.min(axis=0), data.max(axis=0)
    return float(c0), float(r0), float(c1), float(r1)


def level0_point(viewer: Any, layer: Any, world_point: Any) -> tuple[float, float]:
    """The level-0 point (x, y) at world (row, col) ``world_point`` over the image ``layer``."""
    x0, y0, _, _ = level0_edges(viewer, layer, [world_point])
    return x0, y0


def world_point(layer: Any, x: float, y: float) -> tuple[float, float]:
    """The world (row, col) of level-0 point (x, y) over the image ``layer`` (its last two axes)."""
    data = np.zeros(layer.ndim)
    data[-2:] = (y - 0.5, x - 0.5)
    row, col = np.asarray(layer.data_to_world(tuple(data)), dtype=np.float64)[-2:]
    return float(row), float(col)


def view_edges(viewer: Any, layer: Any) -> Box4 | None:
    """The level-0 area (x0, y0, x1, y1) on the canvas over ``layer``, unclipped; None before the canvas has a size."""
    rows, cols = viewer.canvas.size
    camera = camera_of(viewer)
    zoom = camera.zoom
    if not zoom or rows <= 0 or cols <= 0:
        return None
    cy, cx = camera.center[-2:]
    hr, hc = rows / (2 * zoom), cols / (2 * zoom)
    return level0_edges(viewer, layer, [(cy - hr, cx - hc), (cy + hr, cx + hc)])


def clip_box(edges: Box4, size: tuple[int, int]) -> Box | None:
    """Whole level-0 pixels covering ``edges`` (x0, y0, x1, y1) within a slide of ``size`` (w, h), or None."""
    from .core.tiling import Box

    x0, y0 = max(math.floor(edges[0]), 0), max(math.floor(edges[1]), 0)
    x1, y1 = min(math.ceil(edges[2]), size[0]), min(math.ceil(edges[3]), size[1])
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(x0, y0, x1 - x0, y1 - y0)


def shape_boxes(viewer: Any, image: Any, shapes: Any) -> list[Box]:
    """Level-0 boxes (clipped to the slide) around each shape of a Shapes layer that lies on ``image``."""
    size = slide_size(image)
    boxes = []
    for vertices in shapes.data:
        world = np.array([shapes.data_to_world(v) for v in np.asarray(vertices)], dtype=np.float64)
        box = clip_box(level0_edges(viewer, image, world), size)
        if box is not None:
            boxes.append(box)
    return boxes


def screen_px_per_level0(viewer: Any, layer: Any) -> float:
    """How many screen pixels one level-0 pixel of ``layer`` spans at the current zoom."""
    return float(camera_of(viewer).zoom) * float(abs(layer.scale[-1]))


def raster_placement(layer: Any, factor: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """``scale`` and ``translate`` of an image whose pixel j covers level-0 ``[j·f, (j+1)·f)`` over ``layer``.

    Its centre (j + ½)·f is data index (j + ½)·f − ½ of ``layer``.
    """
    scale = np.asarray(layer.scale[-2:], dtype=np.float64)
    translate = np.asarray(layer.translate[-2:], dtype=np.float64) + scale * (factor / 2 - 0.5)
    return (float(scale[0] * factor), float(scale[1] * factor)), (float(translate[0]), float(translate[1]))


def shapes_extent(layer: Any) -> tuple[int, int]:
    """(width, height) in level-0 px covering a Shapes layer of level-0 (row, col) data."""
    if not layer.nshapes:
        return 1, 1
    corner = np.max([np.asarray(v)[:, -2:].max(axis=0) for v in layer.data], axis=0)
    return int(corner[1]) + 2, int(corner[0]) + 2


def frame_kwargs(layer: Any) -> dict[str, Any]:
    """``units`` and ``axis_labels`` of ``layer``'s last two axes, for a layer laid over it (napari
    warns when the layers of a viewer disagree on units)."""
    units = getattr(layer, "units", None)
    if units is None or not _napari_has_units():
        return {}
    return {"units": tuple(units[-2:]), "axis_labels": tuple(layer.axis_labels[-2:])}
