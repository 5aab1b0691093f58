"""Instance-segmentation scores on label images (int arrays, 0 = background).

Matching uses IoU > 0.5 by default, where a true instance can overlap at most one predicted instance
that much (and vice versa), so the matching is unique without any assignment solver. IoUs come from
a sparse contingency of the overlapping pixels only, which stays fast for thousands of instances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

__all__ = [
    "Matching",
    "Scores",
    "best_match_iou",
    "detection_f1",
    "dice",
    "match_instances",
    "panoptic_quality",
    "pixel_dice",
    "rasterize",
    "score",
]


@dataclass(frozen=True)
class Matching:
    """One-to-one matched instances: ``true_ids[i]`` <-> ``pred_ids[i]`` with IoU ``ious[i]``."""

    true_ids: np.ndarray
    pred_ids: np.ndarray
    ious: np.ndarray
    n_true: int
    n_pred: int

    @property
    def tp(self) -> int:
        return len(self.ious)

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_true - self.tp


@dataclass(frozen=True)
class Scores:
    """Detection F1, panoptic quality (PQ = DQ * SQ) and foreground pixel Dice of one image."""

    f1: float
    pq: float
    dq: float
    sq: float
    dice: float
    n_true: int
    n_pred: int
    tp: int


def _labels(x: np.ndarray, name: str) -> np.ndarray:
    """Flat non-negative integer labels with a small maximum (``bincount`` allocates max + 1)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer) and x.dtype != bool:
        raise ValueError(f"{name} must be an integer label image, got dtype {x.dtype}")
    flat = x.ravel()
    if flat.size == 0:
        return flat.astype(np.int64)
    if flat.min() < 0:
        raise ValueError(f"{name} has negative labels; 0 is background, instances are > 0")
    if flat.max() > 4 * flat.size + 16:
        # sparse huge ids: compress to 0..K, keeping 0 as 0
        uniq, inverse = np.unique(flat, return_inverse=True)
        return inverse.astype(np.int64) + (0 if uniq[0] == 0 else 1)
    return flat.astype(np.int64, copy=False)


def _check_pair(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true = np.asarray(true)
    pred = np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(
            f"true and pred must have the same shape, got {true.shape} and {pred.shape}"
        )
    return _labels(true, "true"), _labels(pred, "pred")


def _pairs(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Overlapping (true, pred) pairs with their IoU, plus the instance counts."""
    area_t = np.bincount(t)
    area_p = np.bincount(p)
    n_true = int(np.count_nonzero(area_t[1:]))
    n_pred = int(np.count_nonzero(area_p[1:]))
    both = (t > 0) & (p > 0)
    width = len(area_p)
    keys, inter = np.unique(t[both] * width + p[both], return_counts=True)
    ti = keys // width
    pi = keys % width
    union = area_t[ti] + area_p[pi] - inter
    return ti, pi, inter / union, n_true, n_pred


def match_instances(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> Matching:
    """Match instances whose IoU is above ``iou_threshold`` (strictly), one to one.

    Above 0.5 every candidate pair is already unique. Below it, pairs are taken greedily by
    decreasing IoU, a common convention that is not an optimal assignment.
    """
    if not 0 <= iou_threshold < 1:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    t, p = _check_pair(true, pred)
    ti, pi, iou, n_true, n_pred = _pairs(t, p)
    keep = iou > iou_threshold
    ti, pi, iou = ti[keep], pi[keep], iou[keep]
    if iou_threshold < 0.5 and len(iou):
        order = np.argsort(-iou, kind="stable")
        used_t: set[int] = set()
        used_p: set[int] = set()
        chosen = []
        for k in order:
            a, b = int(ti[k]), int(pi[k])
            if a in used_t or b in used_p:
                continue
            used_t.add(a)
            used_p.add(b)
            chosen.append(k)
        sel = np.asarray(chosen, dtype=np.intp)
        ti, pi, iou = ti[sel], pi[sel], iou[sel]
    return Matching(true_ids=ti, pred_ids=pi, ious=iou, n_true=n_true, n_pred=n_pred)


def _f1(m: Matching) -> float:
    if m.n_true == 0 and m.n_pred == 0:
        return 1.0  # nothing to find, nothing found
    return 2.0 * m.tp / (m.n_true + m.n_pred)


def detection_f1(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> float:
    """2 TP / (2 TP + FP + FN); 1.0 when both images are empty."""
    return _f1(match_instances(true, pred, iou_threshold))


def _pq(m: Matching) -> tuple[float, float, float]:
    dq = _f1(m)
    if m.n_true == 0 and m.n_pred == 0:
        return 1.0, 1.0, 1.0
    sq = float(m.ious.mean()) if m.tp else 0.0
    return dq * sq, dq, sq


def panoptic_quality(
    true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5
) -> tuple[float, float, float]:
    """(PQ, DQ, SQ): DQ is the detection F1, SQ the mean IoU of matched pairs, PQ = DQ * SQ."""
    return _pq(match_instances(true, pred, iou_threshold))


def pixel_dice(true: np.ndarray, pred: np.ndarray) -> float:
    """Foreground Dice 2|T ∩ P| / (|T| + |P|), instances ignored; 1.0 when both are empty."""
    true = np.asarray(true)
    pred = np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(
            f"true and pred must have the same shape, got {true.shape} and {pred.shape}"
        )
    ft = true > 0
    fp = pred > 0
    total = int(ft.sum()) + int(fp.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(ft & fp)) / total


dice = pixel_dice


def score(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> Scores:
    """All scores of one prediction against its ground truth."""
    m = match_instances(true, pred, iou_threshold)
    pq, dq, sq = _pq(m)
    return Scores(
        f1=_f1(m),
        pq=pq,
        dq=dq,
        sq=sq,
        dice=pixel_dice(true, pred),
        n_true=m.n_true,
        n_pred=m.n_pred,
        tp=m.tp,
    )


def rasterize(geometry: BaseGeometry, shape: tuple[int, int]) -> np.ndarray:
    """Boolean H×W mask of the pixels whose centre lies inside ``geometry`` (x, y pixel coords).

    Pixel (r, c) covers [c, c+1] x [r, r+1], so its centre is (c + 0.5, r + 0.5), QuPath's
    convention; holes and multi-part geometries are honoured.
    """
    h, w = shape
    out = np.zeros((h, w), dtype=bool)
    if geometry.is_empty:
        return out
    x0, y0, x1, y1 = geometry.bounds
    c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), w)
    r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), h)
    if c0 >= c1 or r0 >= r1:
        return out
    ys, xs = np.mgrid[r0:r1, c0:c1]
    shapely.prepare(geometry)
    out[r0:r1, c0:c1] = shapely.contains_xy(geometry, xs + 0.5, ys + 0.5)
    return out


def best_match_iou(reference: np.ndarray | BaseGeometry, pred_labels: np.ndarray) -> float:
    """IoU of the predicted instance that best matches one reference nucleus (0.0 if none).

    ``reference`` is a boolean mask of ``pred_labels``' shape or a shapely geometry in (x, y)
    pixel coordinates (e.g. a hand-drawn nucleus), rasterised by pixel centres.
    """
    pred = np.asarray(pred_labels)
    if pred.ndim != 2:
        raise ValueError(f"pred_labels must be a 2-D label image, got shape {pred.shape}")
    if isinstance(reference, BaseGeometry):
        ref = rasterize(reference, pred.shape)
    else:
        ref = np.asarray(reference, dtype=bool)
        if ref.shape != pred.shape:
            raise ValueError(
                f"reference mask {ref.shape} and pred_labels {pred.shape} differ in shape"
            )
    area_ref = int(ref.sum())
    if area_ref == 0:
        return 0.0
    p = _labels(pred, "pred_labels")
    inside = p[ref.ravel()]
    inside = inside[inside > 0]
    if inside.size == 0:
        return 0.0
    inter = np.bincount(inside, minlength=int(p.max()) + 1)
    area_p = np.bincount(p, minlength=len(inter))
    cand = np.nonzero(inter)[0]
    iou = inter[cand] / (area_ref + area_p[cand] - inter[cand])
    return float(iou.max())
