"""QuPath GeoJSON writing and reading, on real files, checked with the shared QuPath import checker."""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from napari_hoverfast.core import geojson_parse as parse
from napari_hoverfast.core import geojson_read
from napari_hoverfast.core.geojson import (
    GZIP_LEVEL,
    GeoJSONError,
    GeoObject,
    read_geojson,
    write_detections,
)
from napari_hoverfast.core.geojson_vector import objects_of, placed_columns
from napari_hoverfast.core.geojson_write import uuid4_strings
from napari_hoverfast.core.nuclei import Nuclei

SQUARE = box(10, 20, 14, 24)
TRIANGLE = Polygon([(100.123, 50.456), (120.987, 55.5), (110.001, 70.0049)])
WITH_HOLE = Polygon(box(200, 200, 220, 220).exterior.coords, [box(205, 205, 210, 210).exterior.coords])
BOWTIE = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
SPIKE = Polygon([(30, 30), (40, 30), (40, 40), (35, 40), (35, 50), (35, 40), (30, 40)])


def assert_checker_ok(qupath_check, path: Path, *args: str) -> str:
    result = qupath_check(path, "--expect-type", "detection", "--werror", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESULT          : OK" in result.stdout
    return result.stdout


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".geojson", ".geojson.gz", ".json", ".json.gz"])
def test_round_trip(tmp_path, qupath_check, suffix):
    polygons = [SQUARE, TRIANGLE, WITH_HOLE]
    measurements = [{"Area px^2": p.area, "Probability": 0.5 + i / 10} for i, p in enumerate(polygons)]
    path = tmp_path / f"nuclei{suffix}"

    assert write_detections(path, polygons, measurements) == 3

    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == suffix.endswith(".gz")
    objects = read_geojson(path)
    assert len(objects) == 3
    for obj, polygon, values in zip(objects, polygons, measurements, strict=True):
        assert isinstance(obj, GeoObject)
        assert obj.object_type == "detection"
        assert obj.classification == "Nucleus"
        assert obj.color == (255, 0, 0)
        assert uuid.UUID(obj.id).version == 4
        assert obj.geometry.is_valid
        assert shapely.hausdorff_distance(obj.geometry, polygon) <= 0.01
        assert obj.measurements == pytest.approx(values, rel=0, abs=0)
    assert len(objects[2].geometry.interiors) == 1
    assert len({o.id for o in objects}) == 3
    assert_checker_ok(qupath_check, path)


def test_file_layout_follows_qupath(tmp_path, qupath_check):
    path = tmp_path / "nuclei.geojson"
    write_detections(path, [TRIANGLE, WITH_HOLE], [{"a": 1.0, "b": math.nan, "c": math.inf}] * 2,
                     name="Tumor nucleus", color=(0, 128, 255))
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)  # strict: no NaN literals anywhere
    assert "NaN" not in text and "Infinity" not in text
    assert data["type"] == "FeatureCollection"
    feature = data["features"][0]
    assert feature["type"] == "Feature"
    assert feature["properties"] == {
        "objectType": "detection",
        "classification": {"name": "Tumor nucleus", "color": [0, 128, 255]},
        "measurements": {"a": 1.0},
    }
    # 2 decimals at most, like QuPath
    for number in re.findall(r"-?\d+\.\d+", json.dumps(feature["geometry"])):
        assert len(number.split(".")[1]) <= 2
    # RFC 7946: exterior counter-clockwise in a y-up frame (positive shoelace area), holes clockwise
    for feature in data["features"]:
        rings = [shapely.LinearRing(r) for r in feature["geometry"]["coordinates"]]
        assert rings[0].is_ccw
        assert not any(r.is_ccw for r in rings[1:])
    out = assert_checker_ok(qupath_check, path)
    assert "shell+" in out and "shell-" not in out


def test_given_ids_and_generators(tmp_path, qupath_check):
    ids = [str(uuid.uuid4()) for _ in range(3)]
    path = tmp_path / "ids.geojson.gz"
    n = write_detections(path, (p for p in [SQUARE, TRIANGLE, SQUARE]), ({"k": i} for i in range(3)), ids=iter(ids))
    assert n == 3
    assert [o.id for o in read_geojson(path)] == ids
    assert [o.measurements["k"] for o in read_geojson(path)] == [0.0, 1.0, 2.0]
    assert_checker_ok(qupath_check, path)


def test_empty_collection(tmp_path, qupath_check):
    path = tmp_path / "none.geojson"
    assert write_detections(path, []) == 0
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}
    assert read_geojson(path) == []
    assert_checker_ok(qupath_check, path)


def test_invalid_polygons_are_repaired_or_dropped(tmp_path, qupath_check, caplog):
    tiny = box(500, 500, 500.001, 500.001)  # collapses on the 0.01 px grid
    pinched = Polygon([(0, 0), (10, 0), (10, 10), (5, 0.004), (0, 10)])  # valid, but touches itself once rounded
    multi = MultiPolygon([box(0, 0, 2, 2), box(5, 5, 10, 10)])
    inputs = [BOWTIE, SPIKE, tiny, pinched, multi, SQUARE]
    assert not BOWTIE.is_valid and not SPIKE.is_valid and pinched.is_valid
    path = tmp_path / "repaired.geojson"

    with caplog.at_level(logging.WARNING, logger="napari_hoverfast.core.geojson"):
        n = write_detections(path, inputs, [{"index": i} for i in range(len(inputs))])

    assert n == 5
    assert "polygon 2" in caplog.text and "left out" in caplog.text
    objects = read_geojson(path)
    assert [o.measurements["index"] for o in objects] == [0, 1, 3, 4, 5]  # measurements stay aligned
    assert all(o.geometry.is_valid and o.geometry.area > 0 for o in objects)
    assert objects[0].geometry.area == pytest.approx(25)  # one lobe of the bowtie
    assert objects[1].geometry.equals(box(30, 30, 40, 40))  # the spike cut off
    assert objects[2].geometry.area == pytest.approx(25)  # snapped to the grid, one side of the pinch
    assert objects[3].geometry.equals(box(5, 5, 10, 10))  # largest part of the MultiPolygon
    assert_checker_ok(qupath_check, path)


def test_argument_errors_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="fewer items"):
        write_detections(tmp_path / "a.geojson", [SQUARE, SQUARE], [{"a": 1}])
    with pytest.raises(ValueError, match="more items"):
        write_detections(tmp_path / "a.geojson", [SQUARE], [{"a": 1}, {"a": 2}])
    with pytest.raises(ValueError, match="not a number"):
        write_detections(tmp_path / "a.geojson", [SQUARE], [{"a": "big"}])
    with pytest.raises(TypeError, match="polygon 1"):
        write_detections(tmp_path / "a.geojson", [SQUARE, shapely.Point(0, 0)])
    with pytest.raises(ValueError, match="used twice"):
        write_detections(tmp_path / "a.geojson", [SQUARE, SQUARE], ids=["x", "x"])
    with pytest.raises(ValueError, match="color"):
        write_detections(tmp_path / "a.geojson", [SQUARE], color=(300, 0, 0))
    with pytest.raises(ValueError, match="QuPath imports"):
        write_detections(tmp_path / "a.txt", [SQUARE])
    assert leftovers(tmp_path) == []


def test_parent_is_a_file(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    target = blocker / "nuclei.geojson"
    with pytest.raises(GeoJSONError, match=r"is a file, not a folder") as info:
        write_detections(target, [SQUARE])
    assert str(target) in str(info.value)
    assert isinstance(info.value, OSError)
    assert leftovers(tmp_path) == ["not_a_folder"]


def test_missing_folder_and_folder_target(tmp_path):
    with pytest.raises(GeoJSONError, match="does not exist"):
        write_detections(tmp_path / "missing" / "nuclei.geojson", [SQUARE])
    (tmp_path / "taken.geojson").mkdir()
    with pytest.raises(GeoJSONError, match="it is a folder"):
        write_detections(tmp_path / "taken.geojson", [SQUARE])
    assert leftovers(tmp_path) == ["taken.geojson"]


@pytest.mark.parametrize("suffix", [".geojson", ".geojson.gz"])
def test_failure_mid_write_leaves_old_file_and_no_temp(tmp_path, suffix):
    path = tmp_path / f"nuclei{suffix}"
    write_detections(path, [SQUARE])
    before = path.read_bytes()

    def polygons():
        for i in range(5000):  # more than one internal chunk, so features were already streamed
            if i == 4500:
                raise RuntimeError("segmentation crashed")
            yield box(i, 0, i + 1, 1)

    with pytest.raises(RuntimeError, match="segmentation crashed"):
        write_detections(path, polygons())
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == [path.name]


# ---- reading ------------------------------------------------------------------------------------


def test_reads_shared_tcga_annotations(shared_dir):
    objects = read_geojson(shared_dir / "data" / "tcga_tile.geojson")
    assert len(objects) == 4
    for obj in objects:
        assert obj.object_type == "annotation"
        assert isinstance(obj.geometry, Polygon) and obj.geometry.is_valid
        assert obj.geometry.bounds[0] >= 0 and obj.geometry.bounds[2] <= 1024
        assert uuid.UUID(obj.id)


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def feature(geometry=None, **properties) -> dict:
    out: dict = {"type": "Feature", "geometry": geometry or SQUARE.__geo_interface__}
    if properties:
        out["properties"] = properties
    return out


def test_bare_list_single_feature_and_bare_geometry(tmp_path):
    listed = read_geojson(write_json(tmp_path / "list.json", [feature(objectType="detection")] * 2))
    assert [o.object_type for o in listed] == ["detection", "detection"]
    single = read_geojson(write_json(tmp_path / "one.geojson", feature(objectType="cell")))
    assert len(single) == 1 and single[0].object_type == "cell"
    bare = read_geojson(write_json(tmp_path / "bare.geojson", SQUARE.__geo_interface__))
    assert bare[0].object_type == "annotation" and bare[0].geometry.equals(SQUARE)
    untyped = read_geojson(write_json(tmp_path / "untyped.geojson", {"type": "Feature", "geometry": SQUARE.__geo_interface__}))
    assert untyped[0].object_type == "annotation"  # QuPath's default


def test_legacy_hoverfast_and_qupath03_forms(tmp_path):
    hoverfast = {  # what HoverFast's utils_wsi.save_poly writes (.json.gz, bare list, QuPath 0.3 keys)
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[1, 1], [5, 1], [5, 4], [1, 1]]], "centroid": [3, 2]},
        "properties": {"object_type": "cell", "classification": {"name": "Nuclei", "colorRGB": -65536}, "isLocked": False},
    }
    qupath03 = feature(
        object_type="detection",
        measurements=[{"name": "Area", "value": 12.5}, {"name": "Missing", "value": "NaN"}],
        classification={"name": "Tumor", "colorRGB": -16711936},
    )
    qupath02 = {"id": "PathDetectionObject", **feature(classification="Other")}
    path = tmp_path / "legacy.json.gz"
    path.write_bytes(gzip.compress(json.dumps([hoverfast, qupath03, qupath02]).encode()))

    first, second, third = read_geojson(path)
    assert first.object_type == "cell" and first.classification == "Nuclei" and first.color == (255, 0, 0)
    assert first.id is None and first.nucleus is None
    assert second.object_type == "detection" and second.color == (0, 255, 0)
    assert second.measurements["Area"] == 12.5 and math.isnan(second.measurements["Missing"])
    assert third.object_type == "detection" and third.id is None and third.classification == "Other"


def test_cells_multipolygons_colours_and_nan(tmp_path, caplog):
    cell = {
        **feature(box(0, 0, 20, 20).__geo_interface__, objectType="cell", color=[1, 2, 3],
                  classification={"names": ["Tumor", "Positive"], "color": [9, 9, 9]}),
        "id": "c0",
        "nucleusGeometry": box(5, 5, 10, 10).__geo_interface__,
    }
    multi = feature(MultiPolygon([box(0, 0, 1, 1), box(3, 3, 4, 4)]).__geo_interface__, objectType="annotation",
                    classification={"name": "Region", "color": [10, 20, 30]}, name="two parts")
    point = feature({"type": "Point", "coordinates": [1, 2]}, objectType="annotation")
    text = json.dumps({"type": "FeatureCollection", "features": [cell, multi, point]})
    text = text.replace('"color": [1, 2, 3]', '"color": [1, 2, 3], "measurements": {"x": NaN, "y": 2}')
    path = tmp_path / "mixed.geojson"
    path.write_text(text)

    with caplog.at_level(logging.WARNING, logger="napari_hoverfast.core.geojson"):
        cell_obj, multi_obj = read_geojson(path)
    assert "1 feature(s) without an area (Point) skipped" in caplog.text
    assert cell_obj.nucleus.equals(box(5, 5, 10, 10)) and cell_obj.geometry.equals(box(0, 0, 20, 20))
    assert cell_obj.classification == "Tumor: Positive" and cell_obj.color == (1, 2, 3)
    assert math.isnan(cell_obj.measurements["x"]) and cell_obj.measurements["y"] == 2.0
    assert isinstance(multi_obj.geometry, MultiPolygon) and len(multi_obj.geometry.geoms) == 2
    assert multi_obj.name == "two parts" and multi_obj.color == (10, 20, 30)


def malformed_cases():
    good = feature(objectType="detection")
    open_ring = {**feature({"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4]]]}), "id": "abc-1"}
    return [
        ("open_ring", {"type": "FeatureCollection", "features": [good, open_ring]},
         r"feature 1 \(id abc-1\): geometry ring 0 is not closed"),
        ("no_geometry", [{"type": "Feature", "properties": {}}], r"feature 0: geometry missing"),
        ("null_geometry", [good, good, {"type": "Feature", "geometry": None}], r"feature 2: geometry missing"),
        ("short_ring", [feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]})],
         r"feature 0: geometry ring 0 has 3 positions"),
        ("strings", [feature({"type": "Polygon", "coordinates": [[["a", 0], [1, 1], [1, 0], ["a", 0]]]})],
         r"feature 0: geometry ring 0 is not a list of \[x, y\]"),
        ("no_rings", [feature({"type": "Polygon", "coordinates": []})], r"feature 0: geometry has no rings"),
        ("bad_type", [feature({"type": "Circle", "coordinates": [0, 0]})], r"feature 0: geometry has unknown type 'Circle'"),
        ("bad_props", [{"type": "Feature", "geometry": SQUARE.__geo_interface__, "properties": [1]}],
         r"feature 0: properties is not a JSON object"),
        ("bad_measure", [feature(measurements={"a": "lots"})], r"feature 0: measurement 'a' is not a number"),
        ("not_feature", {"type": "FeatureCollection", "features": [good, 3]}, r"feature 1: is a JSON int"),
        ("top_level", 42, r"top level is a JSON int"),
        ("no_features", {"type": "FeatureCollection"}, r"no 'features' list"),
    ]


@pytest.mark.parametrize(("name", "data", "message"), malformed_cases(), ids=[c[0] for c in malformed_cases()])
def test_malformed_files_name_feature_and_problem(tmp_path, name, data, message):
    path = write_json(tmp_path / f"{name}.geojson", data)
    with pytest.raises(GeoJSONError, match=message) as info:
        read_geojson(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.geojson", b"", "the file is empty"),
        ("blank.geojson", b"  \n", "the file is empty"),
        ("broken.geojson", b'{\n  "type": "FeatureCollection",\n  "features": [\n ,]\n}', r"not JSON: line 4 column 2"),
        ("latin1.geojson", '{"name": "µ"}'.encode("latin-1"), "not UTF-8"),
        ("fake.geojson.gz", b'{"type": "FeatureCollection", "features": []}', "not gzip"),
        ("cut.geojson.gz", gzip.compress(b'{"type": "FeatureCollection", "features": []}', mtime=0)[:-6], "gzip"),
    ],
)
def test_unreadable_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(GeoJSONError, match=message):
        read_geojson(path)


def test_missing_file(tmp_path):
    with pytest.raises(GeoJSONError, match="no such file"):
        read_geojson(tmp_path / "nothing.geojson")


# ---- columns, per-feature classes, the vectorised paths -------------------------------------------


def test_measurement_columns_write_like_rows(tmp_path, qupath_check):
    polygons = [SQUARE, TRIANGLE, WITH_HOLE, SQUARE]
    columns = {
        "Nucleus: Area µm^2": np.array([1.5, math.nan, 3.25, 4.0]),
        "Tile": np.array([0, 1, 2, 3], dtype=np.int64),
        "Probability": [0.5, 0.6, math.inf, 0.8],
    }
    rows = [{k: float(v[i]) for k, v in columns.items()} for i in range(4)]
    by_columns, by_rows = tmp_path / "columns.geojson", tmp_path / "rows.geojson"
    assert write_detections(by_columns, polygons, columns) == 4
    assert write_detections(by_rows, polygons, rows) == 4
    got = [o.measurements for o in read_geojson(by_columns)]
    assert got == [o.measurements for o in read_geojson(by_rows)]
    assert got[1] == {"Tile": 1.0, "Probability": 0.6}  # NaN left out, the rest kept
    assert got[2] == {"Nucleus: Area µm^2": 3.25, "Tile": 2.0}  # inf left out
    assert list(got[0]) == ["Nucleus: Area µm^2", "Tile", "Probability"]  # names and order as given
    assert "µm" in by_columns.read_text(encoding="utf-8")
    # left-out NaNs make the key sets differ: the checker's one warning, no error
    result = qupath_check(by_columns, "--expect-type", "detection")
    assert result.returncode == 0 and "RESULT          : OK" in result.stdout, result.stdout
    assert "warnings        : 1 (measurement-keys: 1)" in result.stdout


def test_measurement_column_errors_leave_nothing(tmp_path):
    target = tmp_path / "a.geojson"
    with pytest.raises(ValueError, match="fewer items"):
        write_detections(target, [SQUARE, SQUARE], {"a": [1.0]})
    with pytest.raises(ValueError, match="more items"):
        write_detections(target, [SQUARE], {"a": [1.0, 2.0]})
    with pytest.raises(ValueError, match="differ in length"):
        write_detections(target, [SQUARE], {"a": [1.0], "b": [1.0, 2.0]})
    with pytest.raises(ValueError, match="column 'a' is not numeric"):
        write_detections(target, [SQUARE], {"a": ["big"]})
    with pytest.raises(ValueError, match="non-blank string"):
        write_detections(target, [SQUARE], {" ": [1.0]})
    assert leftovers(tmp_path) == []


def test_per_feature_classifications(tmp_path, qupath_check):
    classes = [("Negative", (112, 112, 225)), ("1+", (255, 215, 0)), None, ("3+", (200, 50, 50)), ("1+", (255, 215, 0))]
    polygons = [box(i * 10, 0, i * 10 + 5, 5) for i in range(5)]
    path = tmp_path / "ihc.geojson.gz"
    assert write_detections(path, polygons, classifications=iter(classes)) == 5
    objects = read_geojson(path)
    assert [o.classification for o in objects] == ["Negative", "1+", "Nucleus", "3+", "1+"]
    assert [o.classification_color for o in objects] == [(112, 112, 225), (255, 215, 0), (255, 0, 0), (200, 50, 50), (255, 215, 0)]
    assert [o.color for o in objects] == [o.classification_color for o in objects]
    assert_checker_ok(qupath_check, path)


def test_classification_errors_leave_nothing(tmp_path):
    target = tmp_path / "a.geojson"
    with pytest.raises(ValueError, match=r"feature 1: classification color"):
        write_detections(target, [SQUARE, SQUARE], classifications=[None, ("2+", (256, 0, 0))])
    with pytest.raises(ValueError, match=r"feature 0: classification name"):
        write_detections(target, [SQUARE], classifications=[("", (1, 2, 3))])
    with pytest.raises(ValueError, match=r"feature 0: classification must be \(name, \(r, g, b\)\)"):
        write_detections(target, [SQUARE], classifications=["2+"])
    with pytest.raises(ValueError, match="classifications has fewer items"):
        write_detections(target, [SQUARE, SQUARE], classifications=[None])
    with pytest.raises(ValueError, match="classifications has more items"):
        write_detections(target, [SQUARE], classifications=[None, None])
    assert leftovers(tmp_path) == []


def test_generated_ids_are_uuid4_and_unique():
    ids = uuid4_strings(20_000)
    assert len(set(ids)) == 20_000
    for text in ids[:200]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


def test_many_chunks_keep_alignment_and_name_the_dropped_polygon(tmp_path, qupath_check, caplog):
    n = 6000  # three chunks of the writer
    polygons = [box(i, 0, i + 0.5, 0.5) for i in range(n)]
    polygons[2050] = box(0, 0, 0.001, 0.001)  # collapses on the 0.01 px grid: left out
    polygons[4100] = BOWTIE  # repaired
    ids = [str(uuid.uuid4()) for _ in range(n)]
    path = tmp_path / "many.geojson"
    with caplog.at_level(logging.WARNING, logger="napari_hoverfast.core.geojson"):
        assert write_detections(path, polygons, {"index": np.arange(n)}, ids=ids) == n - 1
    assert "polygon 2050 is not a valid polygon" in caplog.text
    objects = read_geojson(path)
    expected = [i for i in range(n) if i != 2050]
    assert [int(o.measurements["index"]) for o in objects] == expected
    assert [o.id for o in objects] == [ids[i] for i in expected]
    assert objects[4099].geometry.area == pytest.approx(25)
    assert_checker_ok(qupath_check, path)


def test_gzip_level_one_is_written_and_read(tmp_path, qupath_check):
    assert GZIP_LEVEL == 1  # fast; QuPath reads any level
    path = tmp_path / "fast.geojson.gz"
    write_detections(path, [SQUARE] * 3)
    assert gzip.decompress(path.read_bytes()).startswith(b'{"type":"FeatureCollection"')
    assert len(read_geojson(path)) == 3
    assert_checker_ok(qupath_check, path)


def qupath_like_features() -> list[dict]:
    """What QuPath and others export, mixed with what only the careful reader handles."""
    cell = {**feature(box(0, 0, 20, 20).__geo_interface__, objectType="cell",
                      classification={"name": "Tumor", "color": [200, 0, 0]},
                      measurements={"Nucleus: Area µm^2": 12.5, "Cell: Area µm^2": 40.0}),
            "id": str(uuid.uuid4()), "nucleusGeometry": box(5, 5, 10, 10).__geo_interface__}
    return [
        feature(TRIANGLE.__geo_interface__, objectType="detection", classification={"name": "1+", "color": [255, 215, 0]},
                measurements={"DAB: Mean": 0.25, "Count": 3}),
        cell,
        feature(WITH_HOLE.__geo_interface__, objectType="detection", measurements={"a": "NaN", "b": 2.0}),
        feature(MultiPolygon([box(0, 0, 1, 1), box(3, 3, 4, 4)]).__geo_interface__, objectType="annotation"),
        feature({"type": "Polygon", "coordinates": [[[0, 0, 1], [4, 0, 1], [4, 4, 1], [0, 0, 1]]]}, objectType="detection"),
        feature(SQUARE.__geo_interface__, object_type="detection", measurements=[{"name": "Area", "value": 16}]),
        feature(SQUARE.__geo_interface__, objectType="detection", color=[1, 2, 3],
                classification={"names": ["Tumor", "Positive"], "color": [9, 9, 9]}, isLocked=True),
        feature(SQUARE.__geo_interface__, objectType="tile", classification="Stroma", name="t"),
        {"type": "Feature", "geometry": SQUARE.__geo_interface__},
        feature({"type": "Point", "coordinates": [1, 2]}, objectType="annotation"),
        {"id": "PathDetectionObject", **feature(SQUARE.__geo_interface__)},
    ]


def test_vectorised_reading_equals_careful_reading(tmp_path):
    features = qupath_like_features() * 3
    path = write_json(tmp_path / "mixed.geojson", features)
    careful = [parse.feature(f, []) for f in json.loads(path.read_text())]
    assert read_geojson(path)[:2] == [o for o in careful if o is not None][:2]
    fast = read_geojson(path)
    slow = [o for o in careful if o is not None]
    assert len(fast) == len(slow) == 30
    for a, b in zip(fast, slow, strict=True):
        assert a.geometry.equals_exact(b.geometry, 0) and type(a.geometry) is type(b.geometry)
        assert (a.nucleus is None) == (b.nucleus is None)
        assert (a.object_type, a.name, a.classification, a.color, a.classification_color, a.id) == \
            (b.object_type, b.name, b.classification, b.color, b.classification_color, b.id)
        assert a.measurements.keys() == b.measurements.keys()
        assert all(math.isnan(v) if math.isnan(b.measurements[k]) else v == b.measurements[k] for k, v in a.measurements.items())
    first, cell, holed, *_ = fast
    assert first.classification == "1+" and first.classification_color == (255, 215, 0)
    assert first.measurements == {"DAB: Mean": 0.25, "Count": 3.0} and type(first.measurements["Count"]) is float
    assert cell.object_type == "cell" and cell.nucleus.equals(box(5, 5, 10, 10))
    assert list(cell.measurements) == ["Nucleus: Area µm^2", "Cell: Area µm^2"]
    assert len(holed.geometry.interiors) == 1 and math.isnan(holed.measurements["a"])


def compact(features: list) -> str:
    """A FeatureCollection as minified JSON (the layout our writer uses and large files get sliced in)."""
    return json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":"))


@pytest.fixture
def sliced(monkeypatch):
    """Parse large files a few features at a time, with any file counting as large."""
    monkeypatch.setattr(geojson_read, "PARSE_CHUNK", 300)


def same_objects(a: list[GeoObject], b: list[GeoObject]) -> bool:
    return len(a) == len(b) and all(
        x.geometry.equals_exact(y.geometry, 0) and x.id == y.id and x.classification == y.classification
        and x.measurements.keys() == y.measurements.keys() for x, y in zip(a, b, strict=True)
    )


def test_large_files_are_read_a_slice_at_a_time(tmp_path, monkeypatch, qupath_check):
    polygons = [box(i, 0, i + 0.5, 0.5) for i in range(500)]
    path = tmp_path / "many.geojson.gz"
    write_detections(path, polygons, {"index": np.arange(500)}, classifications=[("1+", (1, 2, 3))] * 500)
    assert_checker_ok(qupath_check, path)
    whole = read_geojson(path)
    monkeypatch.setattr(geojson_read, "PARSE_CHUNK", 300)
    fast = []  # the columnar path (coordinates straight to numpy) takes every slice of our own file
    monkeypatch.setattr(geojson_read, "placed_columns", lambda *a: fast.append(1) or placed_columns(*a))
    sliced = read_geojson(path)
    assert len(fast) > 50
    assert same_objects(sliced, whole) and [int(o.measurements["index"]) for o in sliced] == list(range(500))
    calls = []  # the ordinary path, slice by slice, names features by their index in the file
    monkeypatch.setattr(geojson_read, "_fast", lambda text: None)
    monkeypatch.setattr(geojson_read, "objects_of", lambda *a: calls.append(a[2]) or objects_of(*a))
    ordinary = read_geojson(path)
    assert len(calls) > 50 and calls == sorted(calls) and calls[0] == 0  # many slices, offsets in order
    assert same_objects(ordinary, whole)
    nuclei = Nuclei.read_geojson(path, 0.5)
    assert nuclei.extra_columns == ["index"] and nuclei.measurements()["index"].tolist() == list(range(500))


def test_sliced_reading_names_the_feature_by_its_index_in_the_file(tmp_path, sliced):
    features = [feature(box(i, 0, i + 1, 1).__geo_interface__, objectType="detection") for i in range(100)]
    features[73]["geometry"] = {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4]]]}
    path = tmp_path / "bad.geojson"
    path.write_text(compact(features))
    with pytest.raises(GeoJSONError, match=r"feature 73: geometry ring 0 is not closed"):
        read_geojson(path)


def test_sliced_reading_falls_back_where_slices_are_not_json(tmp_path, sliced, caplog):
    child = feature(box(0, 0, 1, 1).__geo_interface__, objectType="detection")
    parents = [feature(box(i, 0, i + 2, 2).__geo_interface__, objectType="annotation", childObjects=[child, child])
               for i in range(30)]  # QuPath's hierarchy export nests Features in Features
    nested = tmp_path / "nested.geojson"
    nested.write_text(compact(parents))
    assert len(read_geojson(nested)) == 30
    nan = tmp_path / "nan.geojson"  # QuPath 0.4 writes bare NaN: that slice goes to the standard library
    nan.write_text(compact([feature(objectType="detection", measurements={"a": 1.0})] * 40).replace("1.0", "NaN", 1))
    objects = read_geojson(nan)
    assert len(objects) == 40 and math.isnan(objects[0].measurements["a"]) and objects[1].measurements["a"] == 1.0
    broken = tmp_path / "broken.geojson"
    broken.write_text(compact([feature(objectType="detection")] * 40)[:-20] + "]}")
    with pytest.raises(GeoJSONError, match=r"not JSON: line 1 column \d+"):
        read_geojson(broken)
    spaced = tmp_path / "spaced.geojson"  # one feature per line: cut at the line breaks
    spaced.write_text(compact([feature(objectType="detection")] * 40).replace(',{"type":"Feature"', ',\n {"type":"Feature"'))
    assert len(read_geojson(spaced)) == 40


def test_spliced_chunks_equal_the_dict_path_byte_for_byte(tmp_path, qupath_check):
    """The fast writer (text spliced from arrays) and the dict path give the same file but for the ids."""
    rng = np.random.default_rng(3)
    n = 5000  # three chunks
    centres = rng.uniform(20, 5000, (n, 2))
    polygons = [shapely.Point(*c).buffer(rng.uniform(3, 9), quad_segs=4) for c in centres]
    polygons[7] = WITH_HOLE  # a hole: two rings
    polygons[2100] = BOWTIE  # repaired after the chunk's other rings
    polygons[2101] = box(0, 0, 0.001, 0.001)  # left out
    polygons[4000] = MultiPolygon([box(0, 0, 1, 1), box(3, 3, 9, 9)])  # its largest part
    polygons[4001] = Polygon([(0, 0), (0, 5), (5, 5), (5, 0)])  # clockwise: turned round
    columns = {"Area µm^2": rng.uniform(1, 100, n), "Tile": np.arange(n) // 7,
               'odd "name"': rng.normal(size=n) * 1e-7, "big": rng.uniform(1e15, 1e17, n)}
    classes = [None if i % 3 else ("2+", (200, 50, 0)) for i in range(n)]
    fast, slow = tmp_path / "fast.geojson", tmp_path / "slow.geojson"
    ids = uuid4_strings(n)
    assert write_detections(fast, polygons, columns, classifications=classes) == n - 1
    rows = [{k: float(v[i]) for k, v in columns.items()} for i in range(n)]
    assert write_detections(slow, polygons, rows, classifications=classes, ids=ids) == n - 1

    def without_ids(path: Path) -> bytes:
        return re.sub(rb'"id":"[0-9a-f-]{36}"', b'"id":""', path.read_bytes())

    assert without_ids(fast) == without_ids(slow)
    objects = read_geojson(fast)
    assert len({o.id for o in objects}) == n - 1 and all(uuid.UUID(o.id).version == 4 for o in objects)
    assert_checker_ok(qupath_check, fast)
    # no measurements at all, and measurements without columns, also take the spliced path
    for given in (None, {}):
        path = tmp_path / f"plain{given is None}.geojson"
        write_detections(path, polygons[:50], given)
        reference = tmp_path / "reference.geojson"
        write_detections(reference, polygons[:50], None if given is None else [{}] * 50, ids=ids[:50])
        assert without_ids(path) == without_ids(reference)
