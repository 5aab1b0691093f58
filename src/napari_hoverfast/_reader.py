"""napari readers: whole-slide images (through tiffslide) and QuPath GeoJSON objects.

Both follow napari's convention: ``get_*_reader(path)`` returns a reader function for files it can
read and ``None`` otherwise, and never raises at drag-and-drop time; why a file was declined is
logged. No Qt here.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._layers import (
    LayerDataTuple,
    axis_kwargs,
    explode_polygons,
    image_layer_data,
    layer_mpp,
    shapes_data_from_polygons,
)
from .core.formats import GEOJSON_SUFFIXES, stem_of

log = logging.getLogger(__name__)

PathOrPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

ReaderFunction = Callable[[PathOrPaths], list[LayerDataTuple] | None]

SLIDE_SUFFIXES = (
    ".svs", ".ndpi", ".tif", ".tiff", ".scn", ".bif", ".svslide", ".mrxs", ".qptiff",
    ".ome.tif", ".ome.tiff",
)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: Scanner formats tiffslide knows by their metadata (tifffile's ``is_<format>`` flags).
_WSI_FLAGS = ("is_svs", "is_ndpi", "is_scn", "is_bif", "is_philips", "is_qpi")
_GEOJSON_TYPE = re.compile(rb'"type"\s*:\s*"(FeatureCollection|Feature|Polygon|MultiPolygon)"')
_SNIFF = 1 << 16
_DEFAULT_EDGE = (1.0, 1.0, 0.0, 1.0)  # yellow, for objects without a colour of their own


def _paths(path: Any) -> list[Path]:
    if isinstance(path, (str, os.PathLike)):
        return [Path(path)]
    return [Path(p) for p in path]


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


# --- slides -------------------------------------------------------------------------------------------


def get_slide_reader(path: PathOrPaths) -> ReaderFunction | None:
    """A reader for whole-slide images (and RGB TIFFs) that tiffslide opens; ``None`` for anything else."""
    try:
        paths = _paths(path)
        if paths and all(_is_slide(p) for p in paths):
            return read_slides
    except Exception:  # a reader must never raise while napari picks one
        log.debug("slide reader declined %r", path, exc_info=True)
    return None


def _is_slide(path: Path) -> bool:
    """A TIFF holding one brightfield image: a scanner's format, or RGB samples."""
    import tifffile

    if not _has_suffix(path, SLIDE_SUFFIXES) or not path.is_file():
        return False
    with path.open("rb") as fh:
        if fh.read(4) not in _TIFF_MAGIC:
            log.warning("%s is not a TIFF-based slide; the HoverFast reader cannot open it", path.name)
            return False
    try:
        with tifffile.TiffFile(path) as tf:
            if any(getattr(tf, flag, False) for flag in _WSI_FLAGS):
                return True
            page = tf.pages.first
            series = tf.series[0]
            rgb = page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
            return rgb and series.ndim == 3 and series.axes in ("YXS", "CYX")
    except Exception as exc:
        log.warning("%s cannot be read as a slide: %s", path.name, exc)
        return False


def read_slides(path: PathOrPaths) -> list[LayerDataTuple] | None:
    """One multiscale RGB image layer per slide, in µm when the slide's mpp is known.

    The slides stay open: their layers read tiles lazily as napari shows them.
    """
    from .core.slide import Slide, SlideError

    layers = []
    for p in _paths(path):
        try:
            slide = Slide(p)
        except SlideError as exc:
            log.warning("cannot open %s: %s", p, exc)
            return None
        except Exception:
            log.exception("unexpected error opening %s", p)
            return None
        if slide.mpp is None:
            log.warning("%s records no pixel size: shown in pixels; give an mpp to segment it", p.name)
        layers.append(image_layer_data(slide))
    return layers


# --- GeoJSON ----------------------------------------------------------------------------------------


def get_geojson_reader(path: PathOrPaths) -> ReaderFunction | None:
    """A reader for QuPath GeoJSON (``.geojson``, ``.geojson.gz``, ``.json`` with GeoJSON inside)."""
    try:
        paths = _paths(path)
        if paths and all(_is_geojson(p) for p in paths):
            return read_geojson_layers
    except Exception:
        log.debug("GeoJSON reader declined %r", path, exc_info=True)
    return None


def _is_geojson(path: Path) -> bool:
    """A GeoJSON name whose first 64 kB (decompressed, when gzip) name a GeoJSON type. Reads no more
    than that, so a gzip bomb costs nothing here (read_geojson refuses it); a corrupt gzip stream
    raises, which get_geojson_reader turns into ``None``."""
    if not _has_suffix(path, GEOJSON_SUFFIXES) or not path.is_file():
        return False
    with path.open("rb") as fh:
        head = fh.read(_SNIFF)
    if head[:2] == b"\x1f\x8b":
        with gzip.open(path, "rb") as gz:
            head = gz.read(_SNIFF)
    return _GEOJSON_TYPE.search(head) is not None


def _reference_mpp() -> tuple[float | None, str | None]:
    """µm per level-0 pixel of the image the objects belong to: the current viewer's selected image
    layer with a pixel size, else its first one; ``None`` (pixels) without a viewer or such a layer."""
    try:
        import napari
        from napari.layers import Image
    except ImportError:
        return None, None
    try:
        viewer = napari.current_viewer()
    except Exception:
        return None, None
    if viewer is None:
        return None, None
    images = [layer for layer in viewer.layers if isinstance(layer, Image)]
    active = viewer.layers.selection.active
    if isinstance(active, Image):
        images.insert(0, active)
    for layer in images:
        mpp = layer_mpp(layer)
        if mpp:
            return mpp, layer.name
    return None, None


def read_geojson_layers(path: PathOrPaths) -> list[LayerDataTuple] | None:
    """QuPath objects → a Shapes layer per file, in the µm frame of the viewer's slide layer.

    Never raises (napari's reader convention): a file that cannot be read — malformed, hostile (a
    gzip bomb, JSON nested thousands deep, numbers of thousands of digits), or too large for memory —
    is logged and the reader returns ``None``, so napari reports that no reader could open it.
    """
    from .core.geojson import GeoJSONError, read_geojson

    try:
        mpp, image_name = _reference_mpp()
        layers = []
        for p in _paths(path):
            try:
                objects = read_geojson(p)
            except GeoJSONError as exc:  # its message names the file
                log.warning("%s", exc)
                return None
            except OSError as exc:
                log.warning("cannot read %s: %s", p, exc)
                return None
            layers.append(_shapes_layer(p, objects, mpp, image_name))
        return layers
    except Exception:  # a bug of ours or a case nobody foresaw: still no traceback into napari
        log.exception("cannot read %s", path)
        return None


def _shapes_layer(path: Path, objects: Sequence[Any], mpp: float | None, image_name: str | None) -> LayerDataTuple:
    import numpy as np

    parts, owners = explode_polygons([o.geometry for o in objects])
    data = shapes_data_from_polygons(parts, mpp)
    measurement_names = sorted({k for o in objects for k in o.measurements})
    features: dict[str, Any] = {
        "object_type": [objects[i].object_type for i in owners],
        "classification": [objects[i].classification or "" for i in owners],
        "name": [objects[i].name or "" for i in owners],
    }
    for key in measurement_names:
        features[key] = np.array([objects[i].measurements.get(key, np.nan) for i in owners], dtype=float)
    colors = np.array(
        [
            (*(c / 255 for c in objects[i].color), 1.0) if objects[i].color else _DEFAULT_EDGE
            for i in owners
        ],
        dtype=float,
    ).reshape(-1, 4)
    name = stem_of(path)
    kwargs: dict[str, Any] = {
        "name": name,
        "shape_type": "polygon",
        "features": features,
        "edge_color": colors,
        "face_color": "transparent",
        "edge_width": mpp or 1.0,  # one level-0 pixel
        "metadata": {"path": str(path), "mpp": mpp, "image": image_name},
        **axis_kwargs(mpp),
    }
    return (data, kwargs, "shapes")
