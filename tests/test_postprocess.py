"""Post-processing: oracle maps -> the same nuclei; polygons exact, valid on QuPath's grid, filtered."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy import ndimage
from skimage.draw import ellipse, polygon

from napari_hoverfast.core.metrics import rasterize, score
from napari_hoverfast.core.postprocess import (
    PostprocessOptions,
    instance_labels,
    labels_to_polygons,
    segment,
    segment_with_labels,
)
from napari_hoverfast.core.targets import hv_maps


def dense_ellipses(seed: int, size: int = 1024, tries: int = 900, max_overlap: float = 0.2):
    """Densely packed, touching, rotated ellipses (semi-axes 8-30 px); later ones drawn over earlier.

    A candidate is rejected when more than ``max_overlap`` of it would cover earlier nuclei, so
    nuclei touch and partly occlude each other but stay recognisable. Nuclei that end up under
    30 px or in several pieces are removed (they are not nuclei any more).
    """
    rng = np.random.default_rng(seed)
    drawn = np.zeros((size, size), np.int32)
    k = 0
    for _ in range(tries):
        a, b = rng.uniform(8, 30, 2)
        r, c = rng.uniform(0, size, 2)
        rr, cc = ellipse(r, c, a, b, shape=drawn.shape, rotation=rng.uniform(0, np.pi))
        if len(rr) == 0 or np.mean(drawn[rr, cc] > 0) > max_overlap:
            continue
        k += 1
        drawn[rr, cc] = k
    labels = np.zeros_like(drawn)
    n = 0
    for index, sl in enumerate(ndimage.find_objects(drawn), start=1):
        if sl is None:
            continue
        own = drawn[sl] == index
        if own.sum() < 30 or ndimage.label(own)[1] != 1:
            continue
        n += 1
        labels[sl][own] = n
    return labels


def touching_fraction(labels: np.ndarray) -> float:
    touches = np.zeros(labels.max() + 1, bool)
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        edge = (a > 0) & (b > 0) & (a != b)
        touches[a[edge]] = True
        touches[b[edge]] = True
    return float(touches[1:].mean())


def random_blobs(seed: int, shape=(96, 96), n: int = 12) -> np.ndarray:
    """Irregular 4-connected blobs without holes, some with one-pixel spurs and notches."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        noise = ndimage.gaussian_filter(rng.random(shape), rng.uniform(1.0, 3.0))
        blob = noise > np.quantile(noise, 0.97)
        pieces, m = ndimage.label(blob)
        if m == 0:
            continue
        sizes = np.bincount(pieces.ravel())
        sizes[0] = 0
        blob = ndimage.binary_fill_holes(pieces == sizes.argmax())
        labels[blob] = i
    # keep each label's largest 4-connected piece, holes filled, so the exactness claim applies
    out = np.zeros_like(labels)
    for i in range(1, n + 1):
        pieces, m = ndimage.label(labels == i)
        if m == 0:
            continue
        sizes = np.bincount(pieces.ravel())
        sizes[0] = 0
        own = ndimage.binary_fill_holes(pieces == sizes.argmax()) & (out == 0)
        pieces, m = ndimage.label(own)
        if m == 1 and ndimage.binary_fill_holes(own).sum() == own.sum():
            out[own] = i
    return out


def fill_by_centres(poly: shapely.Polygon, shape) -> np.ndarray:
    """Rasterise by pixel centres with skimage (independent of metrics.rasterize)."""
    xy = np.asarray(poly.exterior.coords)
    rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)
    out = np.zeros(shape, bool)
    out[rr, cc] = True
    return out


def assert_valid_on_qupath_grid(polys):
    for label, poly in polys:
        assert isinstance(poly, shapely.Polygon), label
        assert poly.is_valid and not poly.is_empty and poly.area > 0, label
        snapped = shapely.set_precision(poly, 0.01, mode="pointwise")
        assert snapped.is_valid, (label, shapely.is_valid_reason(snapped))
        rounded = shapely.Polygon(np.round(np.asarray(poly.exterior.coords), 2))
        assert rounded.is_valid, label
        assert len(poly.interiors) == 0


# -------------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("seed", [0, 1])
def test_oracle_maps_give_back_dense_touching_nuclei(seed):
    labels = dense_ellipses(seed)
    assert labels.max() >= 300
    assert touching_fraction(labels) > 0.5  # most nuclei touch another one
    pred = instance_labels(labels > 0, hv_maps(labels))
    assert pred.dtype == np.int32 and pred.shape == labels.shape
    s = score(labels, pred)
    assert s.f1 >= 0.99, s
    assert s.pq >= 0.975, s
    assert s.dice >= 0.999, s


def test_nucleus_cut_by_the_tile_edge_keeps_its_pixels():
    labels = np.zeros((64, 64), np.int32)
    rr, cc = ellipse(30, 2, 12, 9, shape=labels.shape)  # half outside the tile
    labels[rr, cc] = 1
    rr, cc = ellipse(30, 20, 10, 9, shape=labels.shape)
    labels[rr, cc] = 2
    pred = instance_labels(labels > 0, hv_maps(labels))
    s = score(labels, pred)
    assert s.tp == 2 and s.sq > 0.95


def test_probability_mask_is_thresholded_and_empty_mask_is_empty():
    labels = np.zeros((48, 48), np.int32)
    rr, cc = ellipse(24, 24, 10, 14, shape=labels.shape)
    labels[rr, cc] = 1
    hv = hv_maps(labels)
    prob = np.where(labels > 0, 0.9, 0.1).astype(np.float32)
    pred = instance_labels(prob, hv)
    assert score(labels, pred).sq == 1.0
    assert not instance_labels(np.zeros((48, 48), bool), hv).any()


def test_mask_blob_without_marker_is_kept_whole():
    # a thin 3-px bar: the opening removes it, so it gets no marker; upstream keeps it as one
    labels = np.zeros((40, 40), np.int32)
    labels[10:13, 5:35] = 1
    pred = instance_labels(labels > 0, hv_maps(labels))
    np.testing.assert_array_equal(pred > 0, labels > 0)
    assert len(np.unique(pred[pred > 0])) == 1


# ------------------------------------------------------------------------------------- polygons


@pytest.mark.parametrize("seed", range(4))
def test_polygons_give_back_the_pixels_exactly(seed):
    labels = random_blobs(seed)
    ids = set(np.unique(labels[labels > 0]).tolist())
    assert len(ids) >= 5
    polys = labels_to_polygons(labels, simplify=0)
    assert {label for label, _ in polys} == ids
    for label, poly in polys:
        own = labels == label
        np.testing.assert_array_equal(fill_by_centres(poly, labels.shape), own)
        np.testing.assert_array_equal(rasterize(poly, labels.shape), own)
        # edges lie on pixel edges except 0.25-px corner cuts
        assert abs(poly.area - own.sum()) <= 0.0625 * len(poly.exterior.coords)
    assert_valid_on_qupath_grid(polys)


def test_polygon_coordinates_follow_qupath_convention():
    labels = np.zeros((10, 10), np.int32)
    labels[3, 5] = 4  # row 3, col 5 covers x 5..6, y 3..4
    [(label, poly)] = labels_to_polygons(labels, simplify=0)
    assert label == 4
    assert poly.bounds == (5.0, 3.0, 6.0, 4.0)
    assert poly.contains(shapely.Point(5.5, 3.5))


def awkward_labels() -> np.ndarray:
    labels = np.zeros((40, 60), np.int32)
    for i in range(8):  # diagonal one-pixel chain
        labels[1 + i, 1 + i] = 1
    for i in range(8):  # anti-diagonal chain touching a block
        labels[1 + i, 20 - i] = 2
    labels[9:12, 10:14] = 2
    labels[1:9, 24] = 3  # L shape, one pixel wide
    labels[8, 24:32] = 3
    yy, xx = np.mgrid[0:8, 0:8]  # one label on a checkerboard: 8-connected only
    labels[12:20, 34:42][(yy + xx) % 2 == 0] = 4
    # two labels interleaved on a checkerboard, touching only at corners
    labels[22:30, 2:10] = np.where((yy + xx) % 2 == 0, 5, 6)
    labels[22:30, 12:20] = np.where((yy + xx) % 2 == 0, 0, 7)  # checkerboard with the other parity
    labels[32, 40] = 8  # single pixels, one diagonal to another label
    labels[33, 41] = 9
    labels[33, 42:50] = 9
    labels[0, 50:60] = 10  # one-pixel-wide line along the image border
    labels[30:40, 59] = 11
    labels[22:28, 30:36] = 12  # a ring: hole ignored
    labels[24:26, 32:34] = 0
    return labels


@pytest.mark.parametrize("simplify", [0.0, 6.0, 40.0])
def test_awkward_shapes_give_valid_polygons_on_the_001_grid(simplify):
    labels = awkward_labels()
    polys = labels_to_polygons(labels, simplify=simplify)
    assert {label for label, _ in polys} == set(range(1, 13))
    assert_valid_on_qupath_grid(polys)
    if simplify == 0:
        by_label = dict(polys)
        # 8-connected shapes keep their pixels too: the neck between diagonal pixels is thin
        for label in (1, 2, 3, 9):
            np.testing.assert_array_equal(
                fill_by_centres(by_label[label], labels.shape), labels == label
            )
        # the checkerboard's enclosed background squares are holes, which are ignored
        filled = fill_by_centres(by_label[4], labels.shape)
        assert (filled >= (labels == 4)).all()
        ring = by_label[12]
        assert ring.area == pytest.approx(36, abs=1)  # exterior only


def test_random_noise_labels_are_always_valid():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, size=(48, 48)).astype(np.int32)
    for simplify in (0.0, 6.0):
        polys = labels_to_polygons(labels, simplify=simplify)
        assert len(polys) == 5
        assert_valid_on_qupath_grid(polys)


def test_largest_8_connected_piece_is_kept():
    labels = np.zeros((30, 30), np.int32)
    labels[2:6, 2:6] = 1  # 16 px
    labels[10:20, 10:20] = 1  # 100 px, not touching the small one
    [(label, poly)] = labels_to_polygons(labels, simplify=0)
    assert label == 1
    assert poly.bounds == (10.0, 10.0, 20.0, 20.0)


def test_simplify_reduces_vertices_but_keeps_the_shape():
    labels = np.zeros((128, 128), np.int32)
    rr, cc = ellipse(64, 64, 40, 25, shape=labels.shape, rotation=0.6)
    labels[rr, cc] = 1
    [(_, exact)] = labels_to_polygons(labels, simplify=0)
    [(_, simple)] = labels_to_polygons(labels, simplify=6)
    [(_, coarse)] = labels_to_polygons(labels, simplify=30)
    n_exact, n_simple, n_coarse = (len(p.exterior.coords) for p in (exact, simple, coarse))
    assert n_coarse < n_simple < n_exact / 2
    iou = exact.intersection(simple).area / exact.union(simple).area
    assert iou > 0.97  # epsilon is 6 * 208 / 1000 = 1.25 px here


def test_min_area_in_pixels_and_in_square_microns():
    """Upstream's size rule: the outline through boundary pixel centres must enclose more than the minimum."""
    labels = np.zeros((64, 64), np.int32)
    labels[5:14, 5:15] = 1  # 90 px; its centre outline encloses 8 × 9 = 72 px
    labels[30:40, 30:40] = 2  # 100 px; its centre outline encloses 9 × 9 = 81 px
    assert [label for label, _ in labels_to_polygons(labels, min_area_px=80)] == [2]
    assert [label for label, _ in labels_to_polygons(labels, min_area_px=81)] == []
    assert [label for label, _ in labels_to_polygons(labels, min_area_px=71.5)] == [1, 2]
    hv = hv_maps(labels)
    # 5 µm² at 0.25 µm/px is 80 px: only the 100-px nucleus stays
    assert len(segment(labels > 0, hv)) == 1
    assert len(segment(labels > 0, hv, mpp=0.25, min_area_um2=5.0)) == 1
    # at 0.5 µm/px the same 5 µm² is 20 px: both stay
    assert len(segment(labels > 0, hv, options=PostprocessOptions(mpp=0.5))) == 2
    assert len(segment(labels > 0, hv, min_area_um2=0)) == 2


def test_segment_with_labels_matches_the_label_image():
    labels = dense_ellipses(5, size=256, tries=120)
    pred, polys = segment_with_labels(labels > 0, hv_maps(labels), simplify=0)
    assert pred.shape == labels.shape
    for label, poly in polys:
        own = pred == label
        assert own.any()
        assert np.count_nonzero(rasterize(poly, pred.shape) & own) >= 0.95 * own.sum()


# ----------------------------------------------------------------------------------- validation


def test_input_validation():
    mask = np.zeros((16, 16), bool)
    hv = np.zeros((2, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"hv maps are 16×15 but the mask is 16×16"):
        instance_labels(mask, hv[:, :, :15])
    with pytest.raises(ValueError, match="2×H×W"):
        instance_labels(mask, hv[:1])
    with pytest.raises(ValueError, match="2×H×W"):
        segment(mask, hv[0])
    with pytest.raises(ValueError, match="mask must be a 2-D"):
        instance_labels(mask[None], hv)
    with pytest.raises(ValueError, match="integer"):
        labels_to_polygons(mask.astype(float))
    with pytest.raises(ValueError, match="2-D"):
        labels_to_polygons(np.zeros((2, 4, 4), np.int32))
    with pytest.raises(ValueError, match=">= 0"):
        labels_to_polygons(-np.ones((4, 4), np.int32))
    with pytest.raises(ValueError, match="mpp"):
        PostprocessOptions(mpp=0)
    with pytest.raises(ValueError, match="simplify"):
        segment(mask, hv, simplify=-1)
    with pytest.raises(TypeError):
        segment(mask, hv, not_an_option=1)  # type: ignore[call-arg]
    assert segment(mask, hv) == []
    assert labels_to_polygons(np.zeros((4, 4), np.int32)) == []


def test_simplify_is_douglas_peucker_with_a_topology_preserving_fallback():
    labels = dense_ellipses(2, size=256, tries=150)
    labels[100:103, 0:200] = labels.max() + 1  # a long thin bar
    exact = labels_to_polygons(labels, simplify=0)
    fallbacks = 0
    for tol in (6.0, 40.0):
        simple = dict(labels_to_polygons(labels, simplify=tol))
        assert set(simple) == {label for label, _ in exact}  # nothing collapsed away
        for label, poly in exact:
            eps = tol * poly.length / 1000
            plain = poly.simplify(eps, preserve_topology=False)
            if not (isinstance(plain, shapely.Polygon) and plain.is_valid and not plain.is_empty):
                plain = poly.simplify(eps, preserve_topology=True)
                fallbacks += 1
            assert simple[label].equals(plain), label
            if tol == 6.0:  # at upstream's tolerance GEOS's topology-preserving result agrees
                assert simple[label].equals(poly.simplify(eps, preserve_topology=True)), label
    assert fallbacks > 0  # the fallback was exercised (small nuclei collapse at tolerance 40)


def test_sparse_huge_label_ids_keep_their_ids():
    labels = np.zeros((20, 20), np.int64)
    labels[2:6, 2:6] = 3_000_000_000
    labels[10:15, 10:12] = 7
    polys = dict(labels_to_polygons(labels, simplify=0))
    assert set(polys) == {7, 3_000_000_000}
    assert polys[3_000_000_000].bounds == (2.0, 2.0, 6.0, 6.0)
    full = np.full((4, 4), 2**40, np.int64)  # no background at all
    [(label, poly)] = labels_to_polygons(full, simplify=0)
    assert label == 2**40 and poly.bounds == (0.0, 0.0, 4.0, 4.0)


def test_repair_returns_a_valid_polygon_or_nothing():
    from napari_hoverfast.core.polygons import _repair

    bowtie = shapely.Polygon([(0, 0), (4, 4), (4, 0), (0, 4)])  # self-intersecting
    fixed = _repair(bowtie, 1)
    assert fixed is not None and fixed.is_valid and fixed.area == pytest.approx(4)
    assert shapely.set_precision(fixed, 0.01, mode="pointwise").is_valid
    sliver = shapely.Polygon([(0, 0), (1, 0.001), (2, 0), (1, 0.002)])  # vanishes on the 0.01 grid
    assert _repair(sliver, 2) is None
