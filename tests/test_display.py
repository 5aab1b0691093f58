"""Large results in a real viewer: outlines near the view, an overview zoomed out, every nucleus exported.

The widget's limit on outlines is lowered to 150 so that ~900 synthetic nuclei on the 1024² sample tile
behave like a whole slide's hundreds of thousands; the batches go through the widget's own handler.
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from _plugin import open_widget

from napari_hoverfast._display import ALL, OUTLINES, OVERVIEW, DisplayOptions
from napari_hoverfast._layers import same_layer
from napari_hoverfast._overlays import OVERVIEW_KEY
from napari_hoverfast._sample_data import sample_tile
from napari_hoverfast._widget import NO_COLOR
from napari_hoverfast.core.geojson import read_geojson
from napari_hoverfast.core.nuclei import AREA_UM2, Nuclei
from napari_hoverfast.core.pipeline import NucleusBatch

pytestmark = pytest.mark.gui

MPP = 0.25
SPACING = 32  # level-0 px between nuclei: 2 overview pixels of 16 px, so none share one
LIMIT = 150


def grid_nuclei() -> list[shapely.Polygon]:
    """Squares of 6–13 px (different areas) on a 32 px grid over the 1024² tile: 31 × 31 = 961."""
    sizes = 6 + np.arange(31 * 31) % 8
    return [
        shapely.box(x, y, x + s, y + s)
        for (x, y), s in zip(((x, y) for y in range(8, 1000, SPACING) for x in range(8, 1000, SPACING)), sizes, strict=False)
    ]


@pytest.fixture
def big(make_napari_viewer):
    """A viewer with the sample tile and 961 nuclei added batch by batch through the widget."""
    viewer = make_napari_viewer(show=True)
    data, kwargs, _ = sample_tile()[0]
    image = viewer.add_image(data, **kwargs)
    widget = open_widget(viewer)
    widget.display_options = DisplayOptions(max_outlines=LIMIT)
    viewer.reset_view()
    layer = widget.nuclei_layer(image, create=True)
    run = widget.session.begin(widget.display(layer))  # batches handed in as a run's would be
    polygons = grid_nuclei()
    found = Nuclei(MPP)
    for tile, first in enumerate(range(0, len(polygons), 100)):
        batch = found.append(polygons[first : first + 100], 0.9, tile)
        run.receive(NucleusBatch(nuclei=batch, tiles=(tile,)))
    widget.session.end()
    return viewer, widget, layer, polygons


def zoom_to(viewer, centre_px: tuple[float, float], width_px: float) -> None:
    """Centre the camera on a level-0 point (x, y) showing ``width_px`` level-0 px across the canvas."""
    camera = viewer.scene.camera
    camera.center = ((centre_px[1] - 0.5) * MPP, (centre_px[0] - 0.5) * MPP)
    camera.zoom = min(viewer.canvas.size) / (width_px * MPP)


def test_zoomed_out_an_overview_zoomed_in_outlines_of_the_view(big, qtbot):
    viewer, widget, layer, polygons = big
    display = widget.display(layer)
    overview = display.overview
    # whole tile in view: 961 nuclei > 150 → no outlines, one overview pixel per nucleus
    assert layer.metadata["display"] == OVERVIEW and layer.nshapes == 0
    assert overview is not None and overview.visible and overview.metadata[OVERVIEW_KEY]
    assert np.count_nonzero(overview.data) == len(polygons) == layer.metadata["nuclei_total"]
    assert np.allclose(overview.scale, np.asarray(layer.scale) * 16)
    assert widget.image.choices == (viewer.layers[0],)  # the overview is not offered as an image
    shot = viewer.screenshot(canvas_only=True)
    assert len(np.unique(shot.reshape(-1, 4)[:, :3], axis=0)) > 16

    # zoom in on a 120 px wide field: the camera settles, then the outlines around it appear
    zoom_to(viewer, (500, 500), 120)
    qtbot.waitUntil(lambda: layer.metadata["display"] == OUTLINES, timeout=5000)
    assert not overview.visible
    assert 0 < layer.nshapes <= LIMIT and len(layer.features) == layer.nshapes
    x = layer.features["Centroid X px"].to_numpy()
    y = layer.features["Centroid Y px"].to_numpy()
    x0, y0, x1, y1 = display.window
    assert ((x >= x0) & (x < x1) & (y >= y0) & (y < y1)).all()
    vx0, vy0, vx1, vy1 = display.view
    cx, cy = display.nuclei.centroid_x, display.nuclei.centroid_y
    in_view = (cx >= vx0) & (cx < vx1) & (cy >= vy0) & (cy < vy1)
    assert in_view.sum() > 10 and set(display.nuclei.ids[in_view]) <= set(display.shown)
    # the outlines sit on the image: their level-0 centres match the measurements
    centres = np.array([shapely.centroid(shapely.Polygon(v[:, ::-1] + 0.5)).coords[0] for v in layer.data])
    assert np.allclose(centres, np.c_[x, y])

    # a small pan inside the window keeps the same outlines (no rebuild); zooming out brings the overview
    before = layer.data[0].copy()
    zoom_to(viewer, (505, 503), 120)
    widget.update_views()
    assert np.array_equal(layer.data[0], before)
    viewer.reset_view()
    widget.update_views()
    assert layer.metadata["display"] == OVERVIEW and layer.nshapes == 0 and overview.visible
    layer.visible = False
    assert not overview.visible
    layer.visible = True
    assert overview.visible


def test_export_and_save_selected_layers_write_every_nucleus(big, tmp_path, qupath_check):
    viewer, widget, layer, polygons = big
    zoom_to(viewer, (300, 300), 120)
    widget.update_views()
    assert 0 < layer.nshapes < len(polygons)

    written = widget.export(tmp_path / "all.geojson")
    assert qupath_check(written[0], "--expect-type", "detection").returncode == 0
    assert len(read_geojson(written[0])) == len(polygons)

    viewer.layers.selection = {layer}
    path = tmp_path / "saved.geojson"
    assert viewer.layers.save(str(path), selected=True, plugin="napari-hoverfast") == [str(path)]
    assert qupath_check(path, "--expect-type", "detection").returncode == 0
    objects = read_geojson(path)
    assert len(objects) == len(polygons)
    assert sorted(round(o.geometry.area) for o in objects) == sorted(round(p.area) for p in polygons)


def test_edits_in_the_outline_window_reach_the_export_and_the_overview(big, tmp_path):
    viewer, widget, layer, polygons = big
    display = widget.display(layer)
    zoom_to(viewer, (500, 500), 120)
    widget.update_views()
    n = layer.nshapes
    gone = (layer.features["Centroid X px"][0], layer.features["Centroid Y px"][0])
    layer.remove([0])  # delete a false positive
    assert layer.metadata["nuclei_total"] == len(polygons) - 1 and layer.nshapes == n - 1
    assert not np.any((display.nuclei.centroid_x == gone[0]) & (display.nuclei.centroid_y == gone[1]))
    assert np.count_nonzero(display.overview.data) == len(polygons) - 1

    drawn = np.array([[480.0, 480.0], [480.0, 490.0], [490.0, 490.0], [490.0, 480.0]])  # (row, col) level-0 px
    layer.add_polygons([drawn])  # a nucleus the model missed
    assert layer.metadata["nuclei_total"] == len(polygons) and layer.nshapes == n
    assert layer.features[AREA_UM2].iloc[-1] == pytest.approx(100 * MPP**2)

    # a nucleus moved with the mouse: napari shifts it, then says which shape changed
    from napari.layers.base._base_constants import ActionType

    moved_from = layer.features["Centroid X px"].iloc[3]
    old_id = display.shown[3]
    layer._data_view.shift(3, np.array([4.0, 4.0]))
    layer.events.data(value=layer.data, action=ActionType.CHANGED, data_indices=(3,), vertex_indices=((),))
    assert layer.features["Centroid X px"].iloc[3] == pytest.approx(moved_from + 4)
    assert layer.metadata["nuclei_total"] == len(polygons) and layer.nshapes == n
    assert old_id not in display.nuclei.ids
    assert display.nuclei.centroid_x[display.nuclei.ids == display.shown[3]] == pytest.approx(moved_from + 4)

    layer.data = layer.data[:-2]  # a change the event does not detail: the window is rebuilt from the layer
    assert layer.metadata["nuclei_total"] == len(polygons) - 2

    objects = read_geojson(widget.export(tmp_path / "edited.geojson")[0])
    assert len(objects) == len(polygons) - 2
    viewer.reset_view()
    widget.update_views()
    assert np.count_nonzero(display.overview.data) == len(polygons) - 2


def test_colour_scale_and_second_run_over_a_large_result(big):
    viewer, widget, layer, polygons = big
    display = widget.display(layer)
    widget.color_by.value = NO_COLOR
    assert set(np.unique(display.overview.data)) == {0, 255}
    widget.color_by.value = AREA_UM2  # the scale is set from the data
    values = display.overview.data[display.overview.data > 0]
    assert len(np.unique(values)) >= 6  # eight square sizes spread over the scale
    assert layer.metadata["color_limits"][AREA_UM2][0] < layer.metadata["color_limits"][AREA_UM2][1]

    # the same nuclei again (another run over the same area): nothing is added
    run = widget.session.begin(display)
    again = Nuclei(MPP)
    run.receive(NucleusBatch(nuclei=again.append(polygons[:300], 0.9, 0), tiles=(0,)))
    widget.session.end()
    assert run.added == 0 and run.duplicates == 300 and layer.metadata["nuclei_total"] == len(polygons)


def test_small_results_keep_every_outline_and_no_overview(make_napari_viewer):
    viewer = make_napari_viewer()
    data, kwargs, _ = sample_tile()[0]
    image = viewer.add_image(data, **kwargs)
    widget = open_widget(viewer)
    layer = widget.nuclei_layer(image, create=True)
    run = widget.session.begin(widget.display(layer))
    run.receive(NucleusBatch(nuclei=Nuclei(MPP).append(grid_nuclei()[:100], 0.9, 0), tiles=(0,)))
    widget.session.end()
    viewer.reset_view()
    widget.update_views()
    assert layer.metadata["display"] == ALL and layer.nshapes == 100
    assert widget.display(layer).overview is None and len(viewer.layers) == 2


def test_deleting_the_nuclei_layer_removes_its_overview(big, qtbot):
    viewer, widget, layer, _ = big
    overview = widget.display(layer).overview
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: overview not in viewer.layers, timeout=5000)
    assert widget.current_display() is None


def test_closing_and_reopening_the_widget_keeps_every_nucleus(big, qtbot, tmp_path):
    viewer, widget, layer, polygons = big
    overview = widget.display(layer).overview
    zoom_to(viewer, (500, 500), 120)
    widget.update_views()
    viewer.window.remove_dock_widget(widget.native)
    widget.native.deleteLater()  # napari keeps a removed dock's widget: delete it, as Qt does at exit
    qtbot.waitUntil(lambda: widget.session.closed, timeout=5000)
    layer.remove([0])  # an edit while no widget is open: the layer keeps it, the container not yet

    again = open_widget(viewer)
    assert again is not widget
    again.display_options = DisplayOptions(max_outlines=LIMIT)
    display = again.display(layer)  # adopts the container and the overview, and takes the edit in
    assert same_layer(display.overview, overview) and len(display.nuclei) == len(polygons) - 1  # proxies: not `is`
    layer.remove([0])
    assert len(display.nuclei) == len(polygons) - 2
    assert len(read_geojson(again.export(tmp_path / "again.geojson")[0])) == len(polygons) - 2
    viewer.reset_view()
    again.update_views()
    assert layer.metadata["display"] == OVERVIEW and overview.visible
    assert sum(OVERVIEW_KEY in im.metadata for im in viewer.layers) == 1


def test_a_deleted_overview_comes_back_when_zoomed_out_again(big):
    viewer, widget, layer, polygons = big
    viewer.layers.remove(widget.display(layer).overview)
    zoom_to(viewer, (500, 500), 120)
    widget.update_views()
    viewer.reset_view()
    widget.update_views()
    overview = widget.display(layer).overview
    assert overview in viewer.layers and overview.visible
    assert np.count_nonzero(overview.data) == len(polygons)
