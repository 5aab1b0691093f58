"""The Shapes → QuPath GeoJSON writer: level-0 coordinates back from either layer convention."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import Point, Polygon, box

from napari_hoverfast._layers import LEVEL0_PX, shapes_data_from_polygons
from napari_hoverfast._reader import read_geojson_layers
from napari_hoverfast._writer import write_shapes_geojson
from napari_hoverfast.core.geojson import read_geojson

MPP = 0.25
POLYGONS = [box(10, 20, 30, 25), Polygon([(100.5, 200.25), (108, 201), (103, 209)]), box(1000, 2000, 1012, 2009)]


def features(n):
    return {
        "Area µm^2": np.arange(n, dtype=float) + 10,
        "Probability": np.linspace(0.5, 1.0, n),
        "Tile": np.arange(n),
        "classification": ["Nucleus"] * n,  # text is not a measurement
    }


def same(a, b):
    return a.symmetric_difference(b).area < 1e-3  # QuPath's 0.01 px grid


@pytest.mark.parametrize("suffix", [".geojson", ".geojson.gz"])
def test_nuclei_layer_in_level0_pixels(tmp_path, qupath_check, suffix):
    """The widget's layers: level-0 (row, col) shown at the image's scale (and translate)."""
    path = str(tmp_path / f"nuclei{suffix}")
    attributes = {
        "scale": (MPP, MPP), "translate": (100.0, -50.0), "shape_type": ["polygon"] * 3,
        "metadata": {"mpp": MPP, "data_units": LEVEL0_PX}, "features": features(3),
    }
    assert write_shapes_geojson(path, shapes_data_from_polygons(POLYGONS, None), attributes) == [path]
    check = qupath_check(path, "--expect-type", "detection")
    assert check.returncode == 0, check.stdout
    objects = read_geojson(path)
    assert len(objects) == 3 and all(o.object_type == "detection" for o in objects)
    assert all(same(o.geometry, p) for o, p in zip(objects, POLYGONS, strict=True))
    assert [o.measurements["Tile"] for o in objects] == [0, 1, 2]
    assert objects[2].measurements["Probability"] == 1.0 and "classification" not in objects[0].measurements


def test_reader_layer_in_um_round_trips(tmp_path, qupath_check):
    """Layers of the GeoJSON reader hold µm at scale 1: written back in level-0 pixels."""
    source = tmp_path / "source.geojson"
    attributes = {"scale": (MPP, MPP), "metadata": {"mpp": MPP, "data_units": LEVEL0_PX}}
    write_shapes_geojson(str(source), shapes_data_from_polygons(POLYGONS, None), attributes)
    [(data, kwargs, kind)] = read_geojson_layers(str(source))
    assert kind == "shapes" and kwargs["metadata"]["mpp"] is None  # no viewer: pixels
    um_data = shapes_data_from_polygons(POLYGONS, MPP)
    out = str(tmp_path / "out.geojson")
    write_shapes_geojson(out, um_data, {"scale": (1.0, 1.0), "metadata": {"mpp": MPP}, "shape_type": "polygon"})
    assert qupath_check(out, "--expect-type", "detection").returncode == 0
    assert all(same(o.geometry, p) for o, p in zip(read_geojson(out), POLYGONS, strict=True))


def test_rectangles_and_ellipses_are_areas_lines_are_left_out(tmp_path, qupath_check, caplog):
    data = [
        np.array([[0, 0], [0, 10], [4, 10], [4, 0]], float),  # rectangle (rows, cols) in px
        np.array([[20, 20], [20, 30], [30, 30], [30, 20]], float),  # ellipse bounding box
        np.array([[0, 0], [50, 50]], float),  # line
    ]
    path = str(tmp_path / "drawn.geojson")
    write_shapes_geojson(path, data, {"scale": (1, 1), "metadata": {}, "shape_type": ["rectangle", "ellipse", "line"]})
    assert "no area" in caplog.text
    assert qupath_check(path, "--expect-type", "detection").returncode == 0
    rect, ellipse = (o.geometry for o in read_geojson(path))
    assert same(rect, box(0.5, 0.5, 10.5, 4.5))
    assert ellipse.centroid.distance(Point(25.5, 25.5)) < 0.1
    assert np.pi * 25 * 0.95 < ellipse.area < np.pi * 25


@pytest.mark.gui
def test_save_selected_layer_through_napari(make_napari_viewer, tmp_path, qupath_check):
    viewer = make_napari_viewer()
    layer = viewer.add_shapes(
        shapes_data_from_polygons(POLYGONS, None), shape_type="polygon", scale=(MPP, MPP),
        features={"Probability": [0.9, 0.8, 0.7]}, metadata={"mpp": MPP, "data_units": LEVEL0_PX},
    )
    viewer.layers.selection = {layer}
    path = tmp_path / "saved.geojson"
    written = viewer.layers.save(str(path), selected=True, plugin="napari-hoverfast")
    assert written == [str(path)]
    assert qupath_check(path, "--expect-type", "detection").returncode == 0
    objects = read_geojson(path)
    assert [o.measurements["Probability"] for o in objects] == [0.9, 0.8, 0.7]
    assert all(same(o.geometry, p) for o, p in zip(objects, POLYGONS, strict=True))
