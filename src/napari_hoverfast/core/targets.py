"""Training targets from instance labels: the nucleus mask and HoVer-Net's horizontal/vertical maps.

The same maps are the "oracle" that post-processing must invert, so tests build them here too.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def hv_maps(labels: np.ndarray) -> np.ndarray:
    """Horizontal/vertical distance maps (float32 2×H×W) of an instance label image.

    For each nucleus, across its bounding box, the horizontal map goes linearly from −1 at the left
    edge to +1 at the right edge and the vertical map from −1 at the top to +1 at the bottom, on the
    nucleus's own pixels only; background is 0. A one-pixel-wide extent gets 0.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D image, got shape {labels.shape}")
    out = np.zeros((2,) + labels.shape, dtype=np.float32)
    slices = ndimage.find_objects(labels.astype(np.int64, copy=False))
    for index, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        own = labels[sl] == index
        rows, cols = np.nonzero(own)
        r0, r1 = rows.min(), rows.max()
        c0, c1 = cols.min(), cols.max()
        h = np.zeros(own.shape, np.float32)
        v = np.zeros(own.shape, np.float32)
        if c1 > c0:
            h[rows, cols] = 2.0 * (cols - c0) / (c1 - c0) - 1.0
        if r1 > r0:
            v[rows, cols] = 2.0 * (rows - r0) / (r1 - r0) - 1.0
        out[0][sl][own] = h[own]
        out[1][sl][own] = v[own]
    return out


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Labels 1..N with no gaps (int32), keeping 0 as background."""
    labels = np.asarray(labels)
    uniq, inverse = np.unique(labels, return_inverse=True)
    if uniq[0] != 0:
        uniq = np.concatenate([[0], uniq])
        inverse = inverse + 1
    return inverse.reshape(labels.shape).astype(np.int32)
