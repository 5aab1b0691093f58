"""Slides and polygons as napari layer data, in µm: the one place where (x, y) becomes (row, col).

The core speaks level-0 pixels with x right and y down, and pixel (row r, col c) covers the square
``[c, c+1] × [r, r+1]`` (QuPath's convention). napari speaks (row, col) and puts a pixel's *centre* at
its index. Over an image layer of ``scale = (mpp, mpp)``, the level-0 point (x, y) is therefore the
world point ``((y - 0.5)·mpp, (x - 0.5)·mpp)`` in µm; without a pixel size, mpp counts as 1 and the
world is in pixels. No Qt here.
"""

from __future__ import annotations

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
