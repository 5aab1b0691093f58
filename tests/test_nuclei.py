"""The columnar nuclei container: geometry columns, growth, selection and exports."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import shapely
from shapely.geometry import box

from napari_hoverfast.core.formats import write_csv, write_geojson
from napari_hoverfast.core.geojson import read_geojson
from napari_hoverfast.core.measurements import (
    CIRCULARITY,
    ECCENTRICITY,
    MAJOR_AXIS_UM,
    MAX_CALIPER_UM,
    MIN_CALIPER_UM,
    MINOR_AXIS_UM,
    SOLIDITY,
)
from napari_hoverfast.core.nuclei import (
    AREA_PX,
    AREA_UM2,
    CENTROID_X,
    CENTROID_Y,
    PERIMETER_UM,
    PROBABILITY,
    TILE,
    Nuclei,
)

#: The columns without a pixel size (no µm), and with one, in export order.
UNITLESS = [CIRCULARITY, SOLIDITY, ECCENTRICITY, AREA_PX, PROBABILITY, CENTROID_X, CENTROID_Y, TILE]
WITH_MPP = [AREA_UM2, PERIMETER_UM, CIRCULARITY, SOLIDITY, MAX_CALIPER_UM, MIN_CALIPER_UM, MAJOR_AXIS_UM, MINOR_AXIS_UM,
            ECCENTRICITY, AREA_PX, PROBABILITY, CENTROID_X, CENTROID_Y, TILE]


def squares(n: int, start: int = 0, size: float = 4.0) -> np.ndarray:
    """n axis-aligned squares on a row, 10 px apart (vectorised, so large n stays cheap)."""
    x = 10.0 * np.arange(start, start + n)
    return shapely.box(x, 20.0, x + size, 20.0 + size)


def test_known_square_columns():
    nuclei = Nuclei(mpp=0.5)
    nuclei.append([box(10, 20, 14, 24)], probability=0.75, tile=3)

    assert len(nuclei) == 1
    assert nuclei.ids.tolist() == [0]
    assert nuclei.area_px[0] == pytest.approx(16.0)
    assert nuclei.area_um2[0] == pytest.approx(4.0)  # 16 px² × 0.25 µm²/px²
    assert nuclei.perimeter_um[0] == pytest.approx(8.0)  # 16 px × 0.5 µm/px
    assert (nuclei.centroid_x[0], nuclei.centroid_y[0]) == pytest.approx((12.0, 22.0))
    assert nuclei.probability[0] == 0.75 and nuclei.tile[0] == 3
    assert nuclei.polygons[0].equals(box(10, 20, 14, 24))
    assert nuclei.ids.dtype == np.int64 and nuclei.tile.dtype == np.int64


def test_batches_grow_with_unique_increasing_ids():
    nuclei = Nuclei(mpp=0.25)
    batches = [nuclei.append(squares(n, start), probability=np.full(n, 0.9), tile=t)
               for t, (n, start) in enumerate([(3, 0), (0, 3), (1500, 3), (2, 1503)])]

    assert [len(b) for b in batches] == [3, 0, 1500, 2]
    assert batches[3].ids.tolist() == [1503, 1504]
    assert batches[2].tile.tolist() == [2] * 1500
    assert len(nuclei) == 1505
    assert np.array_equal(nuclei.ids, np.arange(1505))
    assert np.array_equal(nuclei.centroid_x, 10.0 * np.arange(1505) + 2.0)
    early = nuclei.ids  # views handed out earlier stay valid while the buffers grow
    nuclei.append(squares(5000, 1505), 0.5, 4)
    assert np.array_equal(early, np.arange(1505))
    assert np.array_equal(nuclei.ids, np.arange(6505))
    with pytest.raises(ValueError, match="read-only"):
        nuclei.area_px[0] = 1.0


def test_append_validates_inputs():
    nuclei = Nuclei(mpp=None)
    with pytest.raises(ValueError, match="probability"):
        nuclei.append(squares(3), probability=[0.1, 0.2], tile=0)
    with pytest.raises(TypeError, match="polygon 1"):
        nuclei.append([box(0, 0, 1, 1), shapely.Point(0, 0)], 0.5, 0)
    with pytest.raises(ValueError, match="mpp"):
        Nuclei(mpp=-1.0)
    assert len(nuclei) == 0
    probability = np.array([0.1, 0.2])
    nuclei.append(squares(2), probability, [0, 1])
    probability[0] = 0.9  # the container keeps its own copy
    assert nuclei.probability.tolist() == [0.1, 0.2]


def test_unknown_mpp_leaves_micrometres_out(tmp_path, qupath_check):
    nuclei = Nuclei(mpp=None)
    nuclei.append(squares(2), 0.5, 0)
    assert np.isnan(nuclei.area_um2).all() and np.isnan(nuclei.perimeter_um).all()
    assert list(nuclei.measurements()) == UNITLESS
    path = tmp_path / "nuclei.geojson"
    write_geojson(nuclei, path)
    assert set(read_geojson(path)[0].measurements) == set(UNITLESS)
    (tmp_path / "n.csv").write_text("an older file, replaced\n")
    write_csv(nuclei, tmp_path / "n.csv")
    with (tmp_path / "n.csv").open(encoding="utf-8", newline="") as fh:
        assert next(csv.reader(fh)) == ["id", *UNITLESS]


def test_select_and_extend():
    run = Nuclei(mpp=0.25)
    first = run.append(squares(4), [0.1, 0.2, 0.3, 0.4], 0)
    second = run.append(squares(3, 4), 0.9, 1)

    picked = run.select(run.probability > 0.25)
    assert picked.ids.tolist() == [2, 3, 4, 5, 6]
    assert run.select([6, 0]).ids.tolist() == [6, 0]
    assert len(run.select([])) == 0
    with pytest.raises(ValueError, match="mask"):
        run.select(np.ones(3, dtype=bool))

    viewer_side = Nuclei(mpp=0.25)  # e.g. the widget collecting batches yielded by a run
    viewer_side.extend(first)
    viewer_side.extend(second)
    assert np.array_equal(viewer_side.ids, run.ids)
    assert np.array_equal(viewer_side.area_um2, run.area_um2)
    with pytest.raises(ValueError, match="already present"):
        viewer_side.extend(first)
    with pytest.raises(ValueError, match="mpp"):
        Nuclei(mpp=0.5).extend(first)
    assert viewer_side.append(squares(1), 0.5, 2).ids.tolist() == [7]


def test_csv_round_trip(tmp_path):
    nuclei = Nuclei(mpp=0.2425)
    nuclei.append([box(0, 0, 3, 5), box(10.5, 10, 12, 13.25)], [0.875, math.nan], [7, 8])
    path = tmp_path / "nuclei.csv"
    assert write_csv(nuclei, path) == 2

    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", *WITH_MPP]
    assert [int(r["id"]) for r in rows] == nuclei.ids.tolist()
    for name, column in nuclei.measurements().items():
        for row, expected in zip(rows, column.tolist(), strict=True):
            if isinstance(expected, float) and math.isnan(expected):
                assert row[name] == ""
            else:
                assert float(row[name]) == expected  # exact: repr round-trips floats
    assert [f.name for f in tmp_path.iterdir()] == ["nuclei.csv"]


def test_csv_unwritable_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    nuclei = Nuclei(mpp=0.25)
    nuclei.append(squares(1), 0.5, 0)
    with pytest.raises(OSError, match="is a file, not a folder"):
        write_csv(nuclei, blocker / "nuclei.csv")


def test_geojson_round_trip(tmp_path, qupath_check):
    nuclei = Nuclei(mpp=0.25)
    nuclei.append(squares(300, size=4.123), np.linspace(0.5, 1.0, 300), np.arange(300) // 100)
    path = tmp_path / "nuclei.geojson.gz"
    assert write_geojson(nuclei, path) == 300

    result = qupath_check(path, "--expect-type", "detection", "--werror", "--min-features", "300")
    assert result.returncode == 0, result.stdout
    objects = read_geojson(path)
    assert all(o.object_type == "detection" and o.classification == "Nucleus" for o in objects)
    assert objects[5].measurements[AREA_UM2] == pytest.approx(nuclei.area_um2[5])
    back = Nuclei.from_geo_objects(objects, mpp=0.25)
    assert len(back) == 300
    assert np.array_equal(back.tile, nuclei.tile)
    assert np.array_equal(back.probability, nuclei.probability)
    assert np.allclose(back.centroid_x, nuclei.centroid_x, atol=0.01)
    assert np.allclose(back.area_px, nuclei.area_px, atol=0.1)


def test_from_shared_annotations(shared_dir):
    objects = read_geojson(shared_dir / "data" / "tcga_tile.geojson")
    nuclei = Nuclei.from_geo_objects(objects, mpp=None)
    assert len(nuclei) == 4
    assert (nuclei.area_px > 50).all()
    assert np.isnan(nuclei.probability).all() and (nuclei.tile == -1).all()


def test_hundred_thousand_nuclei():
    nuclei = Nuclei(mpp=0.25)
    for batch in range(10):
        nuclei.append(squares(10_000, batch * 10_000), 0.8, batch)
        assert len(nuclei.ids) == (batch + 1) * 10_000  # reading after every batch stays cheap
    assert len(nuclei) == 100_000
    assert len(np.unique(nuclei.ids)) == 100_000
    assert nuclei.area_px.sum() == pytest.approx(16.0 * 100_000)
    assert np.bincount(nuclei.tile).tolist() == [10_000] * 10


def test_an_empty_polygon_is_a_clear_error() -> None:
    from shapely.geometry import Polygon

    from napari_hoverfast.core.nuclei import Nuclei

    nuclei = Nuclei(0.25)
    for bad in (Polygon(), Polygon([(0, 0), (1, 1), (2, 2)])):
        with pytest.raises(ValueError, match="polygon 1 is empty"):
            nuclei.append([Polygon([(0, 0), (4, 0), (4, 4)]), bad], [0.5, 0.5], 0)
    assert len(nuclei) == 0  # nothing half-added
