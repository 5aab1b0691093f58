"""Which nuclei of a run are new: not in an area an earlier run on the layer finished, not a copy of one.

Each run de-duplicates its own tiles (``core/stages.py``); across runs on one layer (two rectangles
that overlap, the view twice, a resumed slide) the widget does it here. No Qt here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely

from .core.duplicates import duplicates_of
from .core.nuclei import Nuclei

#: Level-0 px around a batch within which earlier nuclei are compared: far beyond a nucleus.
_MARGIN = 200.0


def covered_boxes(layer: Any) -> np.ndarray:
    """Areas finished by earlier runs on this nuclei layer as (x0, y0, x1, y1) rows."""
    boxes = np.asarray(layer.metadata.get("covered") or [], dtype=np.float64).reshape(-1, 4)
    return np.column_stack([boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]])


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
    near = np.flatnonzero(
        (earlier.centroid_x > x0 - _MARGIN) & (earlier.centroid_x < x1 + _MARGIN)
        & (earlier.centroid_y > y0 - _MARGIN) & (earlier.centroid_y < y1 + _MARGIN)
    )
    if not len(near):
        return keep
    candidates = np.flatnonzero(keep)
    keep[candidates[duplicates_of(polygons[candidates], earlier.polygons[near])]] = False
    return keep
