"""Instance-segmentation scores on small cases that can be checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from napari_hoverfast.core.metrics import (
    Scores,
    best_match_iou,
    detection_f1,
    dice,
    match_instances,
    panoptic_quality,
    pixel_dice,
    rasterize,
    score,
)


def _squares(shape=(40, 40), boxes=()):
    """Label image with label i+1 on rows r0:r1, cols c0:c1 for each box."""
    out = np.zeros(shape, np.int32)
    for i, (r0, r1, c0, c1) in enumerate(boxes, start=1):
        out[r0:r1, c0:c1] = i
    return out


TRUE = _squares(boxes=[(0, 10, 0, 10), (20, 30, 20, 30)])


def test_perfect_prediction_scores_one_even_with_other_ids():
    pred = np.where(TRUE == 1, 7, np.where(TRUE == 2, 3, 0))
    s = score(TRUE, pred)
    assert s == Scores(f1=1.0, pq=1.0, dq=1.0, sq=1.0, dice=1.0, n_true=2, n_pred=2, tp=2)
    m = match_instances(TRUE, pred)
    assert sorted(zip(m.true_ids.tolist(), m.pred_ids.tolist(), strict=True)) == [(1, 7), (2, 3)]


def test_both_empty_is_perfect_and_one_empty_is_zero():
    empty = np.zeros((5, 5), np.int32)
    assert score(empty, empty) == Scores(1.0, 1.0, 1.0, 1.0, 1.0, 0, 0, 0)
    one = empty.copy()
    one[1:3, 1:3] = 1
    assert detection_f1(one, empty) == 0.0
    assert panoptic_quality(empty, one) == (0.0, 0.0, 0.0)
    assert pixel_dice(one, empty) == 0.0


def test_missed_nucleus():
    pred = _squares(boxes=[(0, 10, 0, 10)])
    s = score(TRUE, pred)
    assert (s.tp, s.n_true, s.n_pred) == (1, 2, 1)
    assert s.f1 == pytest.approx(2 / 3)
    assert (s.pq, s.dq, s.sq) == pytest.approx((2 / 3, 2 / 3, 1.0))
    assert s.dice == pytest.approx(2 * 100 / 300)


def test_false_positive():
    pred = _squares(boxes=[(0, 10, 0, 10), (20, 30, 20, 30), (0, 5, 30, 35)])
    s = score(TRUE, pred)
    assert (s.tp, s.n_pred) == (2, 3)
    assert s.f1 == pytest.approx(4 / 5)


def test_even_split_matches_nothing():
    # each half has IoU exactly 0.5 with the true square: not > 0.5
    true = _squares(boxes=[(0, 10, 0, 10)])
    pred = _squares(boxes=[(0, 10, 0, 5), (0, 10, 5, 10)])
    s = score(true, pred)
    assert (s.tp, s.n_true, s.n_pred) == (0, 1, 2)
    assert s.f1 == 0.0 and s.pq == 0.0
    assert s.dice == 1.0  # the foreground is perfect


def test_uneven_split_matches_the_larger_part():
    true = _squares(boxes=[(0, 10, 0, 10)])
    pred = _squares(boxes=[(0, 10, 0, 6), (0, 10, 6, 10)])
    m = match_instances(true, pred)
    assert m.true_ids.tolist() == [1] and m.pred_ids.tolist() == [1]
    assert m.ious.tolist() == pytest.approx([0.6])
    pq, dq, sq = panoptic_quality(true, pred)
    assert dq == pytest.approx(2 / 3)
    assert sq == pytest.approx(0.6)
    assert pq == pytest.approx(0.4)


def test_merged_pair_matches_at_most_one():
    true = _squares(boxes=[(0, 10, 0, 7), (0, 10, 7, 10)])
    pred = _squares(boxes=[(0, 10, 0, 10)])
    m = match_instances(true, pred)
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)
    assert m.ious.tolist() == pytest.approx([0.7])


def test_shifted_square_iou():
    true = _squares(boxes=[(0, 10, 0, 10)])
    pred = _squares(boxes=[(0, 10, 2, 12)])  # overlap 80, union 120
    pq, dq, sq = panoptic_quality(true, pred)
    assert (pq, dq, sq) == pytest.approx((2 / 3, 1.0, 2 / 3))
    assert pixel_dice(true, pred) == pytest.approx(160 / 200)
    assert dice is pixel_dice


def test_threshold_below_half_is_greedy_one_to_one():
    true = _squares(boxes=[(0, 10, 0, 10)])
    pred = _squares(boxes=[(0, 10, 0, 5), (0, 10, 5, 10)])
    m = match_instances(true, pred, iou_threshold=0.3)
    assert m.tp == 1 and m.fp == 1 and m.fn == 0
    with pytest.raises(ValueError, match="iou_threshold"):
        match_instances(true, pred, iou_threshold=1.0)


def test_huge_sparse_ids_are_fine():
    pred = np.where(TRUE == 1, 2_000_000_000, np.where(TRUE == 2, 5, 0)).astype(np.int64)
    assert detection_f1(TRUE, pred) == 1.0
    big = np.where(TRUE == 1, np.uint64(2**63 + 5), np.uint64(0)).astype(np.uint64)
    assert score(TRUE == 1, big).pq == 1.0


def test_many_instances_contingency():
    # 400 tiles of 5x5 on a 100x100 grid; the prediction shifts every tile by one column,
    # so each keeps 20 of 25 pixels: IoU 20 / 30
    true = (np.arange(100)[:, None] // 5) * 20 + (np.arange(100)[None, :] // 5) + 1
    pred = np.zeros_like(true)
    pred[:, 1:] = true[:, :-1]
    s = score(true, pred)
    assert (s.n_true, s.n_pred, s.tp) == (400, 400, 400)
    assert s.sq == pytest.approx((sum([20 / 30] * 380 + [20 / 25] * 20)) / 400)


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        score(TRUE, TRUE[:-1])
    with pytest.raises(ValueError, match="negative"):
        score(TRUE, -TRUE)
    with pytest.raises(ValueError, match="integer"):
        score(TRUE, TRUE.astype(float))


def test_rasterize_uses_pixel_centres():
    mask = rasterize(shapely.box(2, 3, 6, 5), (10, 10))  # x 2..6, y 3..5
    expected = np.zeros((10, 10), bool)
    expected[3:5, 2:6] = True
    np.testing.assert_array_equal(mask, expected)
    # a polygon hanging off the image is clipped, not an error
    assert rasterize(shapely.box(-5, -5, 1, 1), (4, 4)).sum() == 1
    assert not rasterize(shapely.Polygon(), (4, 4)).any()


def test_best_match_iou_mask_and_polygon():
    pred = _squares(boxes=[(0, 10, 0, 10), (0, 10, 10, 14)])
    ref = np.zeros_like(pred, dtype=bool)
    ref[0:10, 2:12] = True  # 80 px in label 1 (IoU 80/120), 20 px in label 2 (IoU 20/120)
    assert best_match_iou(ref, pred) == pytest.approx(80 / 120)
    assert best_match_iou(shapely.box(2, 0, 12, 10), pred) == pytest.approx(80 / 120)
    assert best_match_iou(shapely.box(30, 30, 35, 35), pred) == 0.0
    with pytest.raises(ValueError, match="shape"):
        best_match_iou(ref[:5], pred)
