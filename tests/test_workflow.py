"""The workflow a pathologist follows, in a real viewer with the widget opened from the Plugins menu.

Pixel size, drawing a region, tuning thresholds from the cache, counts and measurements, readable
outlines and the legend, the polish of the form (tooltips, units, Advanced, the export folder).
Runs use 256 px tiles, in-thread post-processing and the shared random-weight checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import shapely
from _plugin import configure, open_widget
from napari.utils._test_utils import read_only_mouse_event
from napari.utils.colormaps.standardize_color import transform_color
from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

from napari_hoverfast._colours import NO_COLOR, SINGLE_COLOURS, colour_choices, ramp
from napari_hoverfast._form import SCOPE_RECTANGLES, SCOPE_VIEW, SCOPE_WHOLE
from napari_hoverfast._legend import legend_pixels
from napari_hoverfast._results import export_folder
from napari_hoverfast._sample_data import sample_slide, sample_tile
from napari_hoverfast.core import predict
from napari_hoverfast.core.geojson import read_geojson

pytestmark = pytest.mark.gui

MPP = 0.25



def make_widget(viewer, checkpoint):
    return configure(open_widget(viewer), checkpoint)


def add_tile(viewer):
    data, kwargs, _ = sample_tile()[0]
    return viewer.add_image(data, **kwargs)


def draw(widget, *boxes_um):
    """Draw region, then rectangles (row0, col0, row1, col1) in µm, as a user drags them."""
    layer = widget.draw_region()
    layer.add_rectangles([np.array([[r0, c0], [r1, c1]], float) for r0, c0, r1, c1 in boxes_um])
    return layer


def shown(widget, control) -> bool:
    """Whether ``control`` is shown in the dock (whether or not the viewer's window is)."""
    return control.native.isVisibleTo(widget.native)


def units_agree(viewer) -> bool:
    """napari warns "Inconsistent units across layers" exactly when this is false."""
    return viewer.layers.extent.units is not None


# --- 2. no silent pixel size ------------------------------------------------------------------------------


def test_pixel_size_field_and_every_scope_refused_until_filled(make_napari_viewer, checkpoint):
    viewer = make_napari_viewer()
    path = sample_slide()[0][1]["metadata"]["path"]
    [image] = viewer.open(path, plugin="napari")  # napari's own reader: no pixel size
    widget = make_widget(viewer, checkpoint)
    assert widget.image.value.name == image.name
    assert shown(widget, widget.pixel_size) and shown(widget, widget.pixel_hint)
    hint = widget.pixel_hint.value
    assert "HoverFast's reader finds 0.25 µm/px" in hint and "Open with Plugin" in hint
    viewer.scene.camera.center = (200.0, 300.0)
    viewer.scene.camera.zoom = 8.0  # a small view: ~100 px across
    layer = widget.draw_region()
    layer.add_rectangles([np.array([[100.0, 100.0], [140.0, 140.0]])])
    for scope in (SCOPE_VIEW, SCOPE_RECTANGLES, SCOPE_WHOLE):
        widget.scope.value = scope
        widget.run()
        assert "no pixel size" in widget.status.value, scope
        assert widget.nuclei_layer(image) is None and not shown(widget, widget.progress)

    widget.pixel_size.value = MPP
    widget.scope.value = SCOPE_VIEW
    widget.skip_glass.value = False
    widget.run()
    nuclei = widget.nuclei_layer(image)
    assert nuclei is not None and nuclei.metadata["mpp"] == MPP and nuclei.metadata["run"]["mpp"] == MPP
    assert np.isfinite(widget.display(nuclei).nuclei.area_um2).all()
    assert units_agree(viewer)

    other = add_tile(viewer)  # the plugin's reader: the pixel size is known, no field
    widget.image.value = other
    assert not shown(widget, widget.pixel_size) and not shown(widget, widget.pixel_hint)


# --- 3. regions without friction ----------------------------------------------------------------------------


def test_draw_region_gives_a_um_rectangles_layer_and_keeps_it_active(make_napari_viewer, checkpoint):
    viewer = make_napari_viewer()
    image = add_tile(viewer)
    widget = make_widget(viewer, checkpoint)
    regions = widget.draw_region()
    assert viewer.layers.selection.active.name == regions.name and regions.mode == "add_rectangle"
    assert widget.scope.value == SCOPE_RECTANGLES and widget.shapes_layer.value.name == regions.name
    assert tuple(regions.scale) == (1.0, 1.0) and str(regions.units[0]) == "micrometer"  # data in µm
    assert units_agree(viewer)
    assert transform_color(regions.current_face_color)[0][3] == 0 and transform_color(regions.current_edge_color)[0][3] == 1
    assert widget.draw_region().name == regions.name and sum(ly.name == regions.name for ly in viewer.layers) == 1

    regions.add_rectangles([np.array([[10.0, 10.0], [60.0, 60.0]])])
    assert regions.face_color[0, 3] == 0 and regions.edge_width[0] > 0
    widget.run()
    nuclei = widget.nuclei_layer(image)
    x, y = nuclei.features["Centroid X px"].to_numpy(), nuclei.features["Centroid Y px"].to_numpy()
    assert nuclei.nshapes > 0 and ((x >= 40) & (x < 241) & (y >= 40) & (y < 241)).all()  # µm / 0.25, edges ±0.5
    assert viewer.layers.selection.active.name == regions.name  # the next rectangle goes to the regions
    widget.show_tissue.value = True
    widget.show_coverage.value = True
    assert viewer.layers.selection.active.name == regions.name and units_agree(viewer)


# --- 7. tuning from the cache -------------------------------------------------------------------------------


def test_thresholds_update_the_nuclei_from_the_cache_without_the_network(make_napari_viewer, qtbot, monkeypatch):
    """With trained weights: random ones give a handful of blobs, too few to see thresholds at work."""
    from napari_hoverfast.core.default_model import default_model_path

    viewer = make_napari_viewer()
    image = add_tile(viewer)
    widget = make_widget(viewer, default_model_path())
    draw(widget, (0, 0, 60, 60), (80, 80, 130, 130))
    widget.run()
    layer = widget.nuclei_layer(image)
    display = widget.display(layer)
    first = len(display.nuclei)
    areas = np.sort(display.nuclei.area_um2)
    assert first > 20
    drawn = np.array([[700.0, 700.0], [700.0, 712.0], [712.0, 712.0], [712.0, 700.0]])  # (row, col) level-0 px
    layer.add_polygons([drawn])  # a nucleus the user drew: tuning keeps it

    forward = []
    monkeypatch.setattr(predict.Predictor, "__call__", lambda *a, **k: forward.append(1) or pytest.fail("network ran"))
    widget.min_area.value = float(areas[len(areas) // 2])  # half of them are smaller
    qtbot.waitUntil(lambda: "Re-thresholded from the cache" in widget.status.value, timeout=60_000)
    assert not forward and not widget.running
    tuned = display.nuclei
    engine = tuned.tile >= 0
    assert 0 < engine.sum() < first and (tuned.tile < 0).sum() == 1
    assert layer.metadata["nuclei_total"] == len(tuned) == layer.nshapes
    assert "layer holds" in widget.status.value

    widget.min_area.value = 5.0  # back: every nucleus returns, from the cache again
    qtbot.waitUntil(lambda: (display.nuclei.tile >= 0).sum() == first and not widget.running, timeout=60_000)
    widget.threshold.value = 0.8  # stricter probability: fewer or smaller nuclei
    qtbot.waitUntil(lambda: layer.metadata["run"]["mask_threshold"] == 0.8 and not widget.running, timeout=60_000)
    strict = display.nuclei
    assert strict.area_px[strict.tile >= 0].sum() < areas.sum() / MPP**2
    assert not forward


# --- 8. counts and measurements -----------------------------------------------------------------------------


def test_counts_per_region_export_message_and_a_clicked_nucleus(make_napari_viewer, checkpoint, tmp_path):
    viewer = make_napari_viewer(show=True)
    image = add_tile(viewer)
    widget = make_widget(viewer, checkpoint)
    draw(widget, (0, 0, 60, 60), (150, 150, 200, 230))
    widget.run()
    layer = widget.nuclei_layer(image)
    display = widget.display(layer)
    status = widget.status.value
    regions = [int(n.replace(",", "")) for n in re.findall(r"region \d: ([\d,]+)", status)]
    assert len(regions) == 2 and sum(regions) == layer.metadata["nuclei_added"] == len(display.nuclei)
    assert f"the layer holds {len(display.nuclei):,}" in status

    written = widget.export(tmp_path / "cells.geojson")
    count = int(re.search(r"Exported all ([\d,]+) nuclei", widget.status.value).group(1).replace(",", ""))
    assert count == len(read_geojson(written[0])) == len(display.nuclei)

    # click inside a nucleus (pan/zoom mode on the regions layer): its measurements appear in the widget
    nuclei = display.nuclei
    row = int(np.argmax(nuclei.area_px))
    inside = shapely.point_on_surface(nuclei.polygons[row])
    from napari_hoverfast._layers import world_point

    position = world_point(image, inside.x, inside.y)
    viewer.layers.selection.active.mode = "pan_zoom"
    press = read_only_mouse_event(type="mouse_press", position=position, button=1)
    mouse_press_callbacks(viewer, press)
    mouse_release_callbacks(viewer, read_only_mouse_event(type="mouse_release", position=position, button=1))
    assert widget.nucleus_info.value.startswith(f"Nucleus {int(nuclei.ids[row])}")
    table = widget.nucleus_table
    names = [name.removeprefix("Nucleus: ") for name in nuclei.measurements()]
    assert list(table["Measurement"]) == names  # every column, whatever the engine measures
    area = float(table["Value"][list(nuclei.measurements()).index("Area px^2")].replace(",", ""))
    assert area == pytest.approx(nuclei.area_px[row], rel=1e-3)


# --- 4. readable outlines -------------------------------------------------------------------------------------


def test_outlines_follow_the_zoom_and_the_legend_matches_the_colours(make_napari_viewer, checkpoint):
    viewer = make_napari_viewer(show=True)
    image = add_tile(viewer)
    widget = make_widget(viewer, checkpoint)
    draw(widget, (0, 0, 100, 100))
    widget.run()
    layer = widget.nuclei_layer(image)
    camera = viewer.scene.camera

    def screen_width() -> float:
        return float(np.asarray(layer.edge_width)[0] * camera.zoom * layer.scale[-1])

    for zoom in (2.0, 8.0, 30.0):
        camera.zoom = zoom
        widget.update_views()  # what the settled camera triggers
        assert 1.4 <= screen_width() <= 2.2, zoom
        assert layer.current_edge_width == pytest.approx(layer.edge_width[0])  # the controls show it

    # no near-black end: every colour at least half as light as white (it reads on haematoxylin)
    assert (ramp(64)[:, :3] @ [0.2126, 0.7152, 0.0722]).min() > 0.45
    display = widget.display(layer)
    feature = widget.color_by.value
    assert feature in display.nuclei.measurements()
    low, high = layer.metadata["color_limits"][feature]
    assert widget.legend_text.visible and feature in widget.legend_text.value
    assert widget.legend_bar.native.pixmap() is not None and not widget.legend_bar.native.pixmap().isNull()
    pixels = legend_pixels(display.legend())
    assert np.allclose(pixels[0, 0, :3] / 255, ramp(2)[0, :3], atol=0.02)  # the bar starts where the outlines do
    smallest = int(np.argmin(display.nuclei.measurements()[feature]))
    assert np.allclose(display.colors(display.nuclei.select([smallest]))[0, :3], ramp(2)[0, :3], atol=0.02)
    assert low < high

    # every numeric measurement can colour the nuclei; one colour is an option
    assert list(widget.color_by.choices) == colour_choices(display.nuclei.measurements())
    widget.color_by.value = NO_COLOR
    assert shown(widget, widget.single_colour)
    widget.single_colour.value = "cyan"
    assert np.allclose(layer.edge_color, SINGLE_COLOURS["cyan"]) and np.allclose(transform_color(layer.current_edge_color)[0], SINGLE_COLOURS["cyan"], atol=0.01)
    assert widget.legend_text.value == "One colour for every nucleus"
    assert transform_color(layer.current_face_color)[0][3] == 0


# --- 9. polish --------------------------------------------------------------------------------------------------


def test_every_control_has_a_tooltip_one_spelling_of_units_and_an_advanced_section(make_napari_viewer, checkpoint, tmp_path,
                                                                                   monkeypatch):
    from magicgui.widgets import Container, Label

    viewer = make_napari_viewer()
    add_tile(viewer)
    widget = make_widget(viewer, checkpoint)

    def controls(container):
        for child in container:
            if isinstance(child, Container) and not hasattr(child, "value"):
                yield from controls(child)
            elif not isinstance(child, Label):
                yield child

    every = list(controls(widget))
    assert len(every) > 20
    assert [c.label or c.text for c in every if not c.tooltip] == []
    labels = " ".join(str(c.label) for c in every) + " ".join(str(getattr(c, "text", "")) for c in every)
    assert "µm²" not in labels and "um^2" not in labels.replace("µm^2", "")
    assert all(c.parent is widget.advanced.native or c in widget.advanced for c in
               (widget.device, widget.batch_size, widget.tile_size, widget.use_cache))
    assert not shown(widget, widget.advanced)
    widget.show_advanced.value = True
    assert shown(widget, widget.advanced) and shown(widget, widget.tile_size)

    # the export dialog starts in a folder the user can write to
    assert export_folder("/proc/1/some.svs") == Path.home() or export_folder("/proc/1/some.svs").is_dir()
    readonly = tmp_path / "ro"
    readonly.mkdir()
    (readonly / "s.svs").write_text("")
    readonly.chmod(0o500)
    try:
        import os

        if not os.access(readonly, os.W_OK):  # root can write anywhere: the rule is then not observable
            assert export_folder(str(readonly / "s.svs")) != readonly
    finally:
        readonly.chmod(0o700)
    assert export_folder(str(tmp_path / "x.svs")) == tmp_path


def test_progress_bar_resets_on_error(make_napari_viewer, checkpoint, monkeypatch):
    from napari_hoverfast.core.slide import Slide

    viewer = make_napari_viewer()
    add_tile(viewer)
    widget = make_widget(viewer, checkpoint)
    read = Slide.read_region
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("tile 2 is unreadable (simulated)")
        return read(self, *args, **kwargs)

    monkeypatch.setattr(Slide, "read_region", failing)
    draw(widget, (0, 0, 120, 120))
    widget.run()
    assert "unreadable" in widget.status.value
    assert widget.progress.value == 0 and not shown(widget, widget.progress) and widget.run_button.enabled

