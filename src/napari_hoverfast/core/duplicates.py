"""One rule for "the same nucleus twice": two outlines that overlap with IoU above 0.5.

Ownership by centroid (``tiling.py``) already gives every nucleus one tile, but each tile normalises
its own maps, so a nucleus on a seam can come out shaped differently in the two tiles and have its
centroid in each one's own cell. The run (between neighbouring tiles) and the widget (between runs
on the same image) both drop such a second copy with this test.
"""

from __future__ import annotations

import numpy as np
import shapely

#: Two nuclei overlapping by more than this IoU are one nucleus (the detection-matching threshold).
DUPLICATE_IOU = 0.5


def duplicates_of(new: np.ndarray, old: np.ndarray, iou: float = DUPLICATE_IOU) -> np.ndarray:
    """Boolean mask over ``new`` polygons: True where one overlaps a polygon of ``old`` with IoU > ``iou``."""
    new = np.asarray(new, dtype=object)
    old = np.asarray(old, dtype=object)
    out = np.zeros(len(new), dtype=bool)
    if not len(new) or not len(old):
        return out
    tree = shapely.STRtree(old)
    new_idx, old_idx = tree.query(new, predicate="intersects")
    if not len(new_idx):
        return out
    a, b = new[new_idx], old[old_idx]
    inter = shapely.area(shapely.intersection(a, b))
    overlap = inter / np.maximum(shapely.area(a) + shapely.area(b) - inter, 1e-12)
    out[new_idx[overlap > iou]] = True
    return out


def overlaps_any(new: np.ndarray, old: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask over ``new``: True where a polygon of ``old`` covers more than ``fraction`` of its area."""
    new = np.asarray(new, dtype=object)
    old = np.asarray(old, dtype=object)
    out = np.zeros(len(new), dtype=bool)
    if not len(new) or not len(old):
        return out
    new_idx, old_idx = shapely.STRtree(old).query(new, predicate="intersects")
    if len(new_idx):
        covered = shapely.area(shapely.intersection(new[new_idx], old[old_idx])) / np.maximum(shapely.area(new[new_idx]), 1e-12)
        out[new_idx[covered > fraction]] = True
    return out
