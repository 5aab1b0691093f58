"""QuPath GeoJSON writing and reading, on real files, checked with the shared QuPath import checker."""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
import uuid
from pathlib import Path

import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from napari_hoverfast.core.geojson import GeoJSONError, GeoObject, read_geojson, write_detections

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
        ("cut.geojson.gz", gzip.compress(b'{"type": "FeatureCollection", "features": []}')[:-6], "gzip"),
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
