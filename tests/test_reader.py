"""napari readers: slides as multiscale µm image layers, QuPath GeoJSON as Shapes; None for the rest."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import tifffile
from _pyramids import SHARED, SVS, he_on_glass, he_tile, write_plain_tiff, write_pyramid
from shapely.geometry import MultiPolygon, Polygon, box
from tifffile.zarr import ZarrTiffStore

from napari_hoverfast import _reader
from napari_hoverfast._layers import (
    explode_polygons,
    layer_mpp,
    polygons_from_shapes_data,
    shapes_data_from_polygons,
)
from napari_hoverfast._reader import get_geojson_reader, get_slide_reader, read_slides
from napari_hoverfast.core.geojson import write_detections

GEOJSON = SHARED / "tcga_tile.geojson"


@pytest.fixture(scope="module")
def pyramid_tif(tmp_path_factory):
    img = he_on_glass(1024, 1536, [(256, 256, 768, 512)])
    return write_pyramid(tmp_path_factory.mktemp("reader") / "pyramid.tif", img, layout="aperio")


@pytest.fixture
def detections(tmp_path):
    """Two nuclei (level-0 px) with measurements, and a QuPath MultiPolygon annotation."""
    path = tmp_path / "nuclei.geojson"
    polygons = [box(100, 200, 110, 212), box(300, 40, 306, 50)]
    write_detections(path, polygons, [{"Area px": 120.0, "Solidity": 1.0}, {"Area px": 60.0}])
    features = json.loads(path.read_text())["features"]
    features.append({
        "type": "Feature",
        "geometry": {
            "type": "MultiPolygon",
            "coordinates": [[[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]], [[[10, 10], [12, 10], [12, 12], [10, 10]]]],
        },
        "properties": {"objectType": "annotation", "name": "Tumour", "color": [0, 0, 255]},
    })
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


# --- slide reader -----------------------------------------------------------------------------------


def test_slide_reader_gives_one_multiscale_rgb_layer_in_um(pyramid_tif):
    reader = get_slide_reader(str(pyramid_tif))
    assert callable(reader)
    [(data, kwargs, kind)] = reader(str(pyramid_tif))
    assert kind == "image"
    assert [a.shape for a in data] == [(1024, 1536, 3), (512, 768, 3), (256, 384, 3)]
    assert kwargs["multiscale"] is True and kwargs["rgb"] is True
    assert kwargs["scale"] == (0.25, 0.25) and kwargs["units"] == ("µm", "µm")
    assert kwargs["name"] == "pyramid"
    meta = kwargs["metadata"]
    assert meta["path"] == str(pyramid_tif) and meta["mpp"] == 0.25
    assert meta["level_dimensions"] == [[1536, 1024], [768, 512], [384, 256]]
    assert meta["level_downsamples"] == [1.0, 2.0, 4.0]
    assert meta["vendor"] == "aperio" and meta["objective_power"] == 40.0


def test_opening_decodes_nothing(pyramid_tif, monkeypatch):
    decoded = []
    original = ZarrTiffStore.get

    async def counting_get(self, key, *args, **kwargs):
        if key[-1].isdigit():
            decoded.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(ZarrTiffStore, "get", counting_get)
    [(data, _, _)] = get_slide_reader(pyramid_tif)(pyramid_tif)
    assert decoded == []
    data[-1][:10, :10].compute()
    assert decoded == ["2/0.0.0"]


def test_slide_without_mpp_is_shown_in_pixels(tmp_path):
    path = write_pyramid(tmp_path / "nompp.tiff", he_tile()[:512, :512], levels=2, mpp=None)
    [(data, kwargs, _)] = get_slide_reader(path)(path)
    assert kwargs["scale"] == (1.0, 1.0) and "units" not in kwargs
    assert kwargs["metadata"]["mpp"] is None and len(data) == 2


def test_single_level_rgb_tiff_is_read(tmp_path):
    path = write_plain_tiff(tmp_path / "photo.tif", he_tile()[:300, :400], mpp=0.5)
    [(data, kwargs, _)] = get_slide_reader(path)(path)
    assert kwargs["multiscale"] is True and [a.shape for a in data] == [(300, 400, 3)]
    assert kwargs["scale"] == (0.5, 0.5)


def test_several_slides_at_once(pyramid_tif, tmp_path):
    other = write_plain_tiff(tmp_path / "photo.tif", he_tile()[:64, :64])
    reader = get_slide_reader([str(pyramid_tif), str(other)])
    assert [layer[1]["name"] for layer in reader([str(pyramid_tif), str(other)])] == ["pyramid", "photo"]


@pytest.mark.skipif(not SVS.exists(), reason="shared CMU-1-Small-Region.svs not present")
def test_real_svs_through_the_reader():
    [(data, kwargs, _)] = get_slide_reader(SVS)(SVS)
    assert kwargs["scale"] == (0.499, 0.499) and kwargs["name"] == "CMU-1-Small-Region"
    assert data[0].shape == (2967, 2220, 3)


def test_slide_reader_declines_what_it_cannot_read(tmp_path, pyramid_tif):
    """None (napari's convention), never an exception, for everything that is not a readable slide."""
    data = pyramid_tif.read_bytes()
    (tmp_path / "empty.svs").write_bytes(b"")
    (tmp_path / "notes.svs").write_text("not a slide\n" * 10)
    (tmp_path / "header_cut.tif").write_bytes(data[:100])
    tifffile.imwrite(tmp_path / "grey.tif", np.zeros((64, 64), np.uint16))
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 64, 64), np.uint8), imagej=True)
    tifffile.imwrite(tmp_path / "channels.ome.tif", np.zeros((4, 64, 64), np.uint8), ome=True)
    (tmp_path / "picture.png").write_bytes(b"\x89PNG")
    (tmp_path / "folder.svs").mkdir()
    declined = ["empty.svs", "notes.svs", "header_cut.tif", "grey.tif", "stack.tif", "channels.ome.tif",
                "picture.png", "folder.svs", "absent.svs"]
    for name in declined:
        assert get_slide_reader(str(tmp_path / name)) is None, name
    assert get_slide_reader([str(pyramid_tif), str(tmp_path / "notes.svs")]) is None
    assert get_slide_reader(None) is None  # type: ignore[arg-type]
    assert get_slide_reader([]) is None


def test_slide_reader_function_returns_none_for_a_truncated_slide(tmp_path, pyramid_tif, caplog):
    """A TIFF cut in its image data passes the quick check; the reader itself then declines."""
    data = pyramid_tif.read_bytes()
    path = tmp_path / "data_cut.svs"
    path.write_bytes(data[: len(data) // 2])
    reader = get_slide_reader(path)
    assert read_slides(path) is None
    if reader is not None:
        assert reader(path) is None
    assert "truncated" in caplog.text


# --- GeoJSON reader ---------------------------------------------------------------------------------


def test_geojson_reader_claims_geojson_only(tmp_path, detections):
    gz = tmp_path / "nuclei.geojson.gz"
    gz.write_bytes(gzip.compress(detections.read_bytes()))
    as_json = tmp_path / "nuclei.json"
    as_json.write_bytes(detections.read_bytes())
    (tmp_path / "settings.json").write_text(json.dumps({"theme": "dark"}))
    (tmp_path / "empty.geojson").write_text("")
    for path in (detections, gz, as_json):
        assert get_geojson_reader(str(path)) is not None, path.name
    for name in ("settings.json", "empty.geojson", "absent.geojson"):
        assert get_geojson_reader(str(tmp_path / name)) is None, name


def test_geojson_objects_become_shapes_with_features(detections, monkeypatch):
    monkeypatch.setattr(_reader, "_reference_mpp", lambda: (0.5, "slide"))
    [(data, kwargs, kind)] = get_geojson_reader(detections)(detections)
    assert kind == "shapes" and kwargs["shape_type"] == "polygon"
    assert len(data) == 4  # two nuclei, a two-part annotation
    assert kwargs["units"] == ("µm", "µm") and kwargs["metadata"]["mpp"] == 0.5
    assert kwargs["name"] == "nuclei"
    features = kwargs["features"]
    assert features["object_type"] == ["detection", "detection", "annotation", "annotation"]
    np.testing.assert_array_equal(features["Area px"], [120.0, 60.0, np.nan, np.nan])
    np.testing.assert_array_equal(features["Solidity"], [1.0, np.nan, np.nan, np.nan])
    assert features["name"][2:] == ["Tumour", "Tumour"]
    np.testing.assert_allclose(kwargs["edge_color"][2], [0, 0, 1, 1])
    # the first nucleus, x 100..110 and y 200..212 px, in µm with pixel centres at their index
    rows, cols = data[0][:, 0], data[0][:, 1]
    assert (rows.min(), rows.max()) == (199.5 * 0.5, 211.5 * 0.5)
    assert (cols.min(), cols.max()) == (99.5 * 0.5, 109.5 * 0.5)


def test_geojson_without_a_slide_is_in_pixels(detections):
    [(data, kwargs, _)] = get_geojson_reader(detections)(detections)
    assert "units" not in kwargs and kwargs["metadata"]["mpp"] is None
    assert data[0][:, 0].min() == 199.5


def test_malformed_geojson_is_declined_by_the_reader(tmp_path):
    path = tmp_path / "broken.geojson"
    path.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": "x"}}]}')
    reader = get_geojson_reader(path)
    assert reader is not None and reader(path) is None


@pytest.mark.skipif(not GEOJSON.exists(), reason="shared tcga_tile.geojson not present")
def test_shared_annotations_read():
    [(data, kwargs, _)] = get_geojson_reader(GEOJSON)(GEOJSON)
    assert len(data) == 4 and all(d.shape[1] == 2 for d in data)


# --- the (x, y) <-> (row, col) flip -----------------------------------------------------------------


def test_polygons_round_trip_through_shapes_data():
    polygons = [box(10, 20, 30, 25), Polygon([(0.5, 0.25), (8, 1), (3, 9)])]
    for mpp in (0.25, 0.499, None):
        back = polygons_from_shapes_data(shapes_data_from_polygons(polygons, mpp), mpp)
        for a, b in zip(polygons, back, strict=True):
            assert a.symmetric_difference(b).area < 1e-9


def test_a_pixel_square_is_centred_on_its_napari_index():
    """Pixel (row 7, col 3) is the square [3, 4] × [7, 8]; napari centres it at (7, 3) · mpp."""
    [square] = shapes_data_from_polygons([box(3, 7, 4, 8)], 0.25)
    np.testing.assert_allclose(square.mean(axis=0), [7 * 0.25, 3 * 0.25])
    [xy] = shapes_data_from_polygons([np.array([[3, 7], [4, 7], [4, 8]])], None)
    np.testing.assert_allclose(xy, [[6.5, 2.5], [6.5, 3.5], [7.5, 3.5]])


def test_shapes_data_helpers_validate_and_explode():
    parts, owners = explode_polygons([box(0, 0, 1, 1), MultiPolygon([box(0, 0, 1, 1), box(2, 2, 3, 3)])])
    assert len(parts) == 3 and owners == [0, 1, 1]
    with pytest.raises(TypeError, match="explode_polygons"):
        shapes_data_from_polygons([MultiPolygon([box(0, 0, 1, 1)])], 1.0)
    with pytest.raises(ValueError, match="at least 3"):
        polygons_from_shapes_data([np.zeros((2, 2))], 1.0)
    # 3-D shapes (plane, row, col) use their last two axes
    [poly] = polygons_from_shapes_data([np.array([[0, 0, 0], [0, 0, 2], [0, 2, 2]])], 2.0)
    assert poly.bounds == (0.5, 0.5, 1.5, 1.5)


def test_layer_mpp_from_metadata_or_um_scale():
    class Layer:
        def __init__(self, metadata, scale, units):
            self.metadata, self.scale, self.units = metadata, scale, units

    assert layer_mpp(Layer({"mpp": 0.5}, (1, 1), ("pixel", "pixel"))) == 0.5
    assert layer_mpp(Layer({}, (0.25, 0.25), ("micrometer", "micrometer"))) == 0.25
    assert layer_mpp(Layer({}, (0.25, 0.25), ("pixel", "pixel"))) is None
    assert layer_mpp(Layer({"mpp": None}, (1, 1), None)) is None


# --- in a real viewer --------------------------------------------------------------------------------


@pytest.mark.gui
@pytest.mark.skipif(not SVS.exists(), reason="shared CMU-1-Small-Region.svs not present")
def test_viewer_opens_the_svs_in_um(make_napari_viewer):
    from napari.layers import Image

    viewer = make_napari_viewer()
    [layer] = viewer.open(SVS, plugin="napari-hoverfast")
    assert isinstance(layer, Image) and layer.rgb and layer.multiscale
    assert tuple(layer.scale) == (0.499, 0.499)
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert layer.metadata["path"] == str(SVS) and layer.metadata["mpp"] == 0.499
    assert layer.name == "CMU-1-Small-Region"
    assert layer_mpp(layer) == 0.499
    # GeoJSON dropped next: Shapes in the slide's µm frame
    path = SHARED / "tcga_tile.geojson"
    if path.exists():
        [shapes] = viewer.open(path, plugin="napari-hoverfast")
        assert shapes.metadata["mpp"] == 0.499 and shapes.metadata["image"] == "CMU-1-Small-Region"
        assert [str(u) for u in shapes.units] == ["micrometer", "micrometer"]
        from napari_hoverfast.core.geojson import read_geojson

        _, ymin, _, _ = read_geojson(path)[0].geometry.bounds
        assert shapes.data[0][:, 0].min() == pytest.approx((ymin - 0.5) * 0.499, abs=1e-3)


@pytest.mark.gui
def test_viewer_shows_a_pyramid_reading_only_coarse_tiles(make_napari_viewer, tmp_path, monkeypatch):
    big = he_on_glass(4096, 4096, [(1024, 1024, 2048, 2048)])
    path = write_pyramid(tmp_path / "big.tif", big, levels=4)
    decoded = []
    original = ZarrTiffStore.get

    async def counting_get(self, key, *args, **kwargs):
        if key[-1].isdigit():
            decoded.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(ZarrTiffStore, "get", counting_get)
    viewer = make_napari_viewer()
    [layer] = viewer.open(path, plugin="napari-hoverfast")
    assert layer.multiscale and len(layer.data) == 4
    viewer.reset_view()
    # the first view of the whole slide comes from the coarsest levels; level 0 has 256 tiles
    assert decoded and not any(key.startswith(("0/", "1/")) for key in decoded)
    assert len(decoded) <= 16 + 4  # at most all of levels 2 and 3
