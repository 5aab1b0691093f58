"""napari writer (File › Save Selected Layers): a Shapes layer → QuPath GeoJSON detections.

Coordinates go back to level-0 pixels (x right, y down) through :mod:`._layers`, the one place of the
(row, col) ↔ (x, y) flip: the dock widget's nuclei layers hold level-0 pixels at the image's scale, the
GeoJSON reader's layers hold µm. Numeric columns of ``features`` become QuPath measurements.
No Qt here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ._layers import ellipse_vertices, polygons_from_shapes_data, shapes_data_mpp

log = logging.getLogger(__name__)

_AREA_TYPES = {"polygon", "rectangle", "ellipse"}


def write_shapes_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one Shapes layer as QuPath detections to ``path`` (``.geojson`` or ``.geojson.gz``).

    npe2 single-layer writer: ``data`` is the layer's list of vertex arrays and ``attributes`` its state
    (``scale``, ``metadata``, ``features``, ``shape_type``…). Lines and paths enclose no area and are
    left out (logged). A nuclei layer of the dock widget that shows only part of a large result
    (``metadata["display"]`` other than "all") writes every nucleus of ``metadata["nuclei"]``.
    Returns ``[path]``.
    """
    from .core.formats import write_geojson
    from .core.geojson import write_detections
    from .core.nuclei import Nuclei

    metadata = attributes.get("metadata") or {}
    nuclei = metadata.get("nuclei")
    if metadata.get("display", "all") != "all" and isinstance(nuclei, Nuclei):
        # a large result: the layer holds only the outlines near the view, the container all of them
        write_geojson(nuclei, path)
        return [path]
    polygons, rows = shapes_to_polygons(data, attributes)
    measurements = _measurement_rows(attributes.get("features"), rows)
    write_detections(path, polygons, measurements)
    return [path]


def shapes_to_polygons(data: Sequence[Any], attributes: Mapping[str, Any]) -> tuple[list[Any], np.ndarray]:
    """Level-0 shapely polygons of a Shapes layer's area shapes, and the layer rows they came from."""
    shape_types = attributes.get("shape_type") or ["polygon"] * len(data)
    if isinstance(shape_types, str):
        shape_types = [shape_types] * len(data)
    vertices: list[np.ndarray] = []
    rows: list[int] = []
    skipped = 0
    for row, (verts, kind) in enumerate(zip(data, shape_types, strict=False)):
        if kind not in _AREA_TYPES:
            skipped += 1
            continue
        arr = np.asarray(verts, dtype=np.float64)[:, -2:]
        vertices.append(ellipse_vertices(arr) if kind == "ellipse" else arr)
        rows.append(row)
    if skipped:
        log.warning("%d line/path shape(s) enclose no area and were not written", skipped)
    mpp = shapes_data_mpp(attributes.get("metadata"), attributes.get("scale"))
    return polygons_from_shapes_data(vertices, mpp), np.asarray(rows, dtype=np.int64)


def _measurement_rows(features: Any, rows: np.ndarray) -> Iterator[dict[str, float]] | None:
    """One ``{name: value}`` per written shape from the numeric feature columns (NaN left out)."""
    if features is None or len(features) == 0:
        return None
    columns = {}
    for name in features:
        values = np.asarray(features[name])
        if values.dtype.kind in "biuf" and len(values) > int(rows.max(initial=-1)):
            columns[str(name)] = values[rows].astype(np.float64).tolist()
    if not columns:
        return None
    names = list(columns)

    def generate() -> Iterator[dict[str, float]]:
        for values in zip(*(columns[n] for n in names), strict=True):
            yield {n: v for n, v in zip(names, values, strict=True) if math.isfinite(v)}

    return generate()
