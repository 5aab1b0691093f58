"""Nucleus measurements: shape and stain definitions, extra columns through the container, CSV and
GeoJSON round trips (QuPath's own cell-detection export included), all files checked as QuPath would."""

from __future__ import annotations

import csv
import json
import math
import uuid

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, box

from napari_hoverfast.core import measurements as m
from napari_hoverfast.core.formats import write_csv, write_geojson
from napari_hoverfast.core.geojson import read_geojson
from napari_hoverfast.core.ihc import SCORE, IhcOptions
from napari_hoverfast.core.nuclei import (
    AREA_UM2,
    CLASSIFICATION,
    PERIMETER_UM,
    PROBABILITY,
    Nuclei,
)

H_MEAN = m.stain_column("Hematoxylin", "mean")
DAB = m.DAB_OD_MEAN


def ellipse(cx: float, cy: float, a: float, b: float, angle: float = 0.0) -> shapely.Polygon:
    return shapely.affinity.rotate(shapely.affinity.scale(Point(cx, cy).buffer(1.0, 512), a, b), angle)


# ---- definitions --------------------------------------------------------------------------------


def test_shape_of_known_figures():
    """An ellipse far from the origin (level-0 coordinates are large), a rectangle, a square with a hole."""
    figures = np.array([ellipse(90_000, 70_000, 20, 10, 30), box(0, 0, 30, 10), box(0, 0, 20, 20).difference(box(5, 5, 15, 15))])
    s = m.shape_measurements(figures)
    ramanujan = math.pi * (3 * 30 - math.sqrt((3 * 20 + 10) * (20 + 3 * 10)))
    assert s["circularity"][0] == pytest.approx(4 * math.pi * (math.pi * 200) / ramanujan**2, rel=1e-4)
    assert s["circularity"][1] == pytest.approx(4 * math.pi * 300 / 80**2)
    assert s["eccentricity"][0] == pytest.approx(math.sqrt(1 - 0.25), rel=1e-4)
    assert (s["major_axis"][0], s["minor_axis"][0]) == pytest.approx((40, 20), rel=1e-4)
    assert (s["max_caliper"][0], s["min_caliper"][0]) == pytest.approx((40, 20), rel=1e-4)
    assert (s["max_caliper"][1], s["min_caliper"][1]) == pytest.approx((math.hypot(30, 10), 10))
    assert s["major_axis"][1] == pytest.approx(4 * math.sqrt(30**2 / 12))  # rectangle: σ² = w²/12
    assert s["solidity"].tolist() == pytest.approx([1.0, 1.0, 0.75])
    assert s["eccentricity"][2] == pytest.approx(0.0, abs=1e-9)  # the holed square is still isotropic
    assert all(len(v) == 0 for v in m.shape_measurements(np.array([], dtype=object)).values())


def test_long_pixel_outlines_go_in_chunks():
    """Many-vertex hulls (unsimplified outlines) give the same calipers as one at a time."""
    many = np.array([ellipse(10 * i, 0, 30, 12, i) for i in range(40)], dtype=object)
    together = m.shape_measurements(many)
    alone = [m.shape_measurements(many[i : i + 1]) for i in range(len(many))]
    assert np.allclose(together["max_caliper"], [a["max_caliper"][0] for a in alone])
    assert np.allclose(together["min_caliper"], [a["min_caliper"][0] for a in alone])


def _stained(od_h: float, od_second: float, stain: str) -> np.ndarray:
    """The 8-bit RGB of a pixel with these stain ODs (scikit-image's vectors), as a camera records it."""
    from skimage.color import rgb_from_hdx, rgb_from_hed

    vectors = rgb_from_hed[[0, 1]] if stain == "he" else rgb_from_hdx[[0, 1]]
    od = od_h * vectors[0] + od_second * vectors[1]
    return np.clip(np.rint(255.0 * 10.0 ** (-od)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("stain", ["he", "ihc_dab"])
def test_stain_od_recovers_the_stains(stain):
    rgb = np.stack([_stained(0.4, 0.0, stain), _stained(0.0, 0.5, stain), _stained(0.3, 0.3, stain)])
    od = m.stain_od(rgb, stain)
    assert od == pytest.approx(np.array([[0.4, 0.0], [0.0, 0.5], [0.3, 0.3]]), abs=0.02)
    assert m.stain_od(np.full((1, 3), 255, np.uint8), stain) == pytest.approx(np.zeros((1, 2)))


def test_stain_statistics_equal_a_direct_computation():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)
    labels = rng.integers(0, 9, (60, 70)).astype(np.int32)
    labels[labels == 4] = 0  # label 4 absent
    ids = np.array([7, 1, 4, 3])
    stats = m.stain_statistics(rgb, labels, ids, "ihc_dab")
    assert list(stats) == m.stain_columns("ihc_dab")
    od = m.stain_od(rgb, "ihc_dab").astype(np.float64)
    for row, label in enumerate(ids):
        inside = od[labels == label]
        for s, name in enumerate(("Hematoxylin", "DAB")):
            got = [stats[m.stain_column(name, k)][row] for k in m.STATISTICS]
            if not len(inside):
                assert np.isnan(got).all()
                continue
            want = [inside[:, s].mean(), inside[:, s].std(), inside[:, s].max(), inside[:, s].min()]
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="Unknown stain"):
        m.stain_statistics(rgb, labels, ids, "pas")


# ---- the container -------------------------------------------------------------------------------


def test_extra_columns_travel_with_the_rows():
    nuclei = Nuclei(mpp=0.5, extra_columns=[H_MEAN])
    assert H_MEAN in nuclei.measurements()  # declared: an empty container lists it
    first = nuclei.append([box(0, 0, 4, 4), box(10, 0, 14, 4)], 0.9, 0, measurements={H_MEAN: [0.1, 0.2]})
    nuclei.append([box(20, 0, 24, 4)], 0.8, 1)  # e.g. an outline drawn by hand: no pixels measured
    nuclei.append([box(30, 0, 34, 4)], 0.7, 2, measurements={DAB: 0.5}, classification="Tumor")
    cols = nuclei.measurements()
    assert np.allclose(cols[H_MEAN], [0.1, 0.2, np.nan, np.nan], equal_nan=True)
    assert np.allclose(cols[DAB], [np.nan, np.nan, np.nan, 0.5], equal_nan=True)
    assert first.measurements()[H_MEAN].tolist() == [0.1, 0.2]
    assert nuclei.classifications().tolist() == [None, None, None, "Tumor"]
    picked = nuclei.select([3, 0])
    assert np.allclose(picked.measurements()[DAB], [0.5, np.nan], equal_nan=True)
    copy = Nuclei(mpp=0.5)
    copy.extend(nuclei.select([0, 1]))
    copy.extend(nuclei.select([2, 3]))
    for name, column in nuclei.measurements().items():
        assert np.array_equal(copy.measurements()[name], column, equal_nan=True), name
    for reserved in (AREA_UM2, PROBABILITY, SCORE, CLASSIFICATION, " "):
        with pytest.raises(ValueError):
            nuclei.append([box(0, 0, 1, 1)], 0.5, 0, measurements={reserved: 1.0})
    with pytest.raises(ValueError, match="expected one or 2"):
        nuclei.append([box(0, 0, 1, 1), box(2, 2, 3, 3)], 0.5, 0, classification=["a", "b", "c"])


def test_micrometre_columns_follow_mpp():
    nuclei = Nuclei(mpp=0.25)
    nuclei.append([ellipse(100, 100, 20, 10)], 0.9, 0)
    cols = nuclei.measurements()
    assert cols[m.MAX_CALIPER_UM][0] == pytest.approx(40 * 0.25, rel=1e-4)
    assert cols[m.MINOR_AXIS_UM][0] == pytest.approx(20 * 0.25, rel=1e-4)
    assert cols[m.CIRCULARITY][0] == pytest.approx(nuclei.select([0]).measurements()[m.CIRCULARITY][0])
    assert m.MAX_CALIPER_UM not in Nuclei(mpp=None).measurements()


# ---- files ---------------------------------------------------------------------------------------


def _measured(n: int = 12, *, unmeasured: bool = True) -> Nuclei:
    nuclei = Nuclei(mpp=0.25, ihc=IhcOptions())
    polygons = [ellipse(40.0 * i + 20, 50, 8 + i % 3, 6) for i in range(n)]
    dab = np.linspace(0.05, 0.75, n)
    if unmeasured:
        dab[3] = np.nan  # one nucleus whose pixels were never measured (drawn by hand)
    nuclei.append(polygons, np.linspace(0.6, 0.99, n), 0, measurements={H_MEAN: np.linspace(0.2, 0.4, n), DAB: dab})
    return nuclei


def test_csv_carries_every_column(tmp_path):
    nuclei = _measured()
    path = tmp_path / "cells.csv"
    write_csv(nuclei, path)
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", CLASSIFICATION, *nuclei.measurements()]
    assert [r[CLASSIFICATION] for r in rows] == [c or "" for c in nuclei.classifications()]
    assert rows[3][DAB] == "" and rows[3][CLASSIFICATION] == ""
    for name, column in nuclei.measurements().items():
        got = np.array([float(r[name]) if r[name] else np.nan for r in rows])
        assert np.array_equal(got, np.asarray(column, dtype=float), equal_nan=True), name


@pytest.mark.parametrize("unmeasured", [False, True])
def test_geojson_round_trip_keeps_measurements_and_classes(tmp_path, qupath_check, unmeasured):
    nuclei = _measured(unmeasured=unmeasured)
    path = tmp_path / "cells.geojson"
    write_geojson(nuclei, path)
    # a nucleus without a DAB OD mean lacks that key (no NaN in the file): QuPath shows it as NaN,
    # the checker warns that key sets differ
    result = qupath_check(path, "--expect-type", "detection", *([] if unmeasured else ["--werror"]))
    assert result.returncode == 0, result.stdout
    objects = read_geojson(path)
    assert [o.classification for o in objects] == [c or "Nucleus" for c in nuclei.classifications()]
    assert objects[-1].color == (250, 62, 62)  # 3+, in QuPath's colour
    back = Nuclei.from_geo_objects(objects, mpp=0.25)
    for name, column in nuclei.measurements().items():
        if name != SCORE:  # derived, not stored: it comes back only with ihc set
            assert np.allclose(back.measurements()[name], column, equal_nan=True, rtol=1e-9), name
    assert SCORE not in back.measurements()
    back.ihc = IhcOptions((0.1, 0.2, 0.3))  # lower thresholds re-classify the read nuclei at once
    scored = np.isfinite(nuclei.measurements()[DAB])
    assert (back.measurements()[SCORE][scored] >= nuclei.measurements()[SCORE][scored]).all()
    assert back.measurements()[SCORE][scored].sum() > nuclei.measurements()[SCORE][scored].sum()


def _qupath_cell(i: int, klass: str | None, dab: float | str) -> dict:
    """One cell as QuPath ≥ 0.5 exports it (QUPATH_GEOJSON.md §2): a UUID, objectType "cell", the
    cell boundary as geometry, the nucleus as nucleusGeometry, the class with its colour, and the
    measurements of its positive cell detection (NaN written as a string)."""
    x = 100.0 + 60 * i
    nucleus = shapely.geometry.mapping(ellipse(x, 100, 12, 9).simplify(0.2))
    cell = shapely.geometry.mapping(ellipse(x, 100, 22, 18).simplify(0.2))
    props: dict = {
        "objectType": "cell",
        "measurements": {
            "Nucleus: Area µm^2": 21.5 + i, "Nucleus: Perimeter µm": 17.25, "Nucleus: Circularity": 0.93,
            "Nucleus: Max caliper µm": 6.1, "Nucleus: Min caliper µm": 4.5, "Nucleus: Eccentricity": 0.66,
            "Nucleus: Hematoxylin OD mean": 0.31, "Nucleus: Hematoxylin OD std dev": 0.05,
            "Nucleus: DAB OD mean": dab, "Nucleus: DAB OD max": 0.9,
            "Cell: Area µm^2": 78.0, "Cell: DAB OD mean": 0.2, "Cytoplasm: DAB OD mean": 0.11,
            "Nucleus/Cell area ratio": 0.28,
        },
    }
    if klass is not None:
        from napari_hoverfast.core.ihc import COLORS

        props["classification"] = {"name": klass, "color": list(COLORS[klass])}
    return {"type": "Feature", "id": str(uuid.uuid4()), "geometry": {"type": cell["type"], "coordinates": cell["coordinates"]},
            "nucleusGeometry": {"type": nucleus["type"], "coordinates": nucleus["coordinates"]}, "properties": props}


def test_a_qupath_cell_detection_export_loads_with_its_names(tmp_path, qupath_check):
    features = [_qupath_cell(0, "Negative", 0.05), _qupath_cell(1, "2+", 0.45), _qupath_cell(2, "3+", 0.8), _qupath_cell(3, None, "NaN")]
    path = tmp_path / "qupath_cells.geojson"
    path.write_text(json.dumps(features), encoding="utf-8")  # QuPath's default export: a bare array

    nuclei = Nuclei.from_geo_objects(read_geojson(path), mpp=0.5)
    cols = nuclei.measurements()
    assert cols[AREA_UM2].tolist() == [21.5, 22.5, 23.5, 24.5]  # QuPath's values, not recomputed ones
    assert cols[PERIMETER_UM].tolist() == [17.25] * 4 and cols[m.CIRCULARITY].tolist() == [0.93] * 4
    assert np.isfinite(cols[m.SOLIDITY]).all()  # what QuPath did not measure is computed from the nucleus
    assert nuclei.area_px[0] == pytest.approx(math.pi * 12 * 9, rel=0.03)  # the nucleus, not the cell
    assert cols["Cell: Area µm^2"].tolist() == [78.0] * 4 and cols["Nucleus/Cell area ratio"][0] == 0.28
    assert np.allclose(cols[DAB], [0.05, 0.45, 0.8, np.nan], equal_nan=True)
    assert nuclei.classifications().tolist() == ["Negative", "2+", "3+", None]
    nuclei.ihc = IhcOptions()
    assert nuclei.classifications().tolist() == ["Negative", "2+", "3+", None]  # QuPath's thresholds agree
    nuclei.ihc = IhcOptions((0.5, 0.6, 0.7))
    assert nuclei.classifications().tolist() == ["Negative", "Negative", "3+", None]

    again = tmp_path / "again.geojson.gz"
    write_geojson(nuclei, again)
    assert qupath_check(again, "--expect-type", "detection").returncode == 0  # warns: one DAB OD mean is NaN
    back = Nuclei.from_geo_objects(read_geojson(again), mpp=0.5)
    assert back.classifications().tolist() == ["Negative", "Negative", "3+", "Nucleus"]
    assert back.measurements()["Cytoplasm: DAB OD mean"].tolist() == [0.11] * 4
