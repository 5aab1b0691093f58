"""The dock widget in a real viewer (pytest-qt under Xvfb), with the shared random-weight checkpoint.

Outputs of random weights are meaningless but real: tiles, batches, polygons, measurements. Runs use
256 px tiles and in-thread post-processing to stay short on a small machine.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import shapely
from _plugin import configure, open_widget

from napari_hoverfast import _session
from napari_hoverfast._sample_data import sample_slide, sample_tile
from napari_hoverfast._widget import (
    NO_COLOR,
    SCOPE_RECTANGLES,
    SCOPE_VIEW,
    SCOPE_WHOLE,
    HoverFastWidget,
    novel_nuclei,
)
from napari_hoverfast.core.geojson import read_geojson
from napari_hoverfast.core.nuclei import AREA_UM2, PROBABILITY, TILE, Nuclei
from napari_hoverfast.core.pipeline import NucleusBatch
from napari_hoverfast.core.run_types import RunOptions
from napari_hoverfast.core.slide import Slide

pytestmark = pytest.mark.gui

MPP = 0.25  # the sample tile's µm per pixel




def add_sample(viewer, sample=sample_tile):
    data, kwargs, _ = sample()[0]
    return viewer.add_image(data, **kwargs)


def make_widget(viewer, checkpoint, *, synchronous=True) -> HoverFastWidget:
    """The widget as users open it: Plugins › HoverFast nuclei (napari hands it proxies of the viewer)."""
    return configure(open_widget(viewer), checkpoint, synchronous=synchronous)


def rectangles(viewer, *boxes_um):
    """A Shapes layer of rectangles given as (row0, col0, row1, col1) in world µm."""
    data = [np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float) for r0, c0, r1, c1 in boxes_um]
    return viewer.add_shapes(data, shape_type="rectangle", name="regions")


def run_on_rectangles(widget, viewer, *boxes_um):
    layer = rectangles(viewer, *boxes_um)
    widget.scope.value = SCOPE_RECTANGLES
    widget.shapes_layer.value = layer
    widget.run()
    return layer


def centroids(layer) -> tuple[np.ndarray, np.ndarray]:
    return layer.features["Centroid X px"].to_numpy(), layer.features["Centroid Y px"].to_numpy()


# --- model -------------------------------------------------------------------------------------------


def test_model_is_described_once_loaded(make_napari_viewer, checkpoint):
    viewer = make_napari_viewer()
    widget = make_widget(viewer, checkpoint)
    info = widget.model_info.value
    assert "depth 3" in info and "width 16" in info and "947,732 parameters" in info


def test_bad_checkpoint_shows_the_loader_message_not_a_traceback(make_napari_viewer, checkpoint, tmp_path):
    viewer = make_napari_viewer()
    widget = make_widget(viewer, checkpoint)
    bad = tmp_path / "notes.pth"
    bad.write_text("not a model")
    widget.model_path.value = bad
    assert "notes.pth is not a PyTorch checkpoint" in widget.status.value
    assert widget.model_info.value == "No model loaded"
    add_sample(viewer)
    widget.run()  # refused with the same message, no layer made
    assert "not a PyTorch checkpoint" in widget.status.value
    assert not widget.running and len(viewer.layers) == 1


# --- runs ------------------------------------------------------------------------------------------------


def test_synchronous_run_on_rectangles_fills_one_aligned_layer(make_napari_viewer, checkpoint):
    viewer = make_napari_viewer()
    image = add_sample(viewer)
    widget = make_widget(viewer, checkpoint)
    run_on_rectangles(widget, viewer, (10, 10, 100, 100), (150, 150, 200, 230))

    layer = widget.nuclei_layer(image)
    assert layer.name == "H&E tile (40×) nuclei"
    assert np.allclose(layer.scale, image.scale) and np.allclose(layer.translate, image.translate)
    assert layer.nshapes > 0 and set(layer.shape_type) == {"polygon"}
    assert np.allclose(layer.face_color[:, 3], 0)
    # outlines ~1.75 screen px wide at this zoom (napari's edge width is in data units: level-0 px here)
    screen_px = np.asarray(layer.edge_width) * viewer.scene.camera.zoom * layer.scale[-1]
    assert np.allclose(screen_px, screen_px[0]) and 1.5 <= screen_px[0] <= 2.1
    # every measurement the engine made is a feature (the shape columns and whatever the engine adds)
    assert list(layer.features.columns) == list(widget.display(layer).nuclei.measurements())
    assert set(Nuclei(MPP).measurements()) <= set(layer.features.columns)
    assert len(layer.features) == layer.nshapes
    # level-0 boxes of the rectangles: µm / mpp, pixel edges at ±0.5 of napari's centres
    # A region owns a nucleus by its label's pixel centroid; the measured centroid is the outline's,
    # which differs by a fraction of a pixel on large ragged objects (measured: 0.06 px past an edge).
    boxes = [(40, 40, 401, 401), (600, 600, 921, 801)]  # x0, y0, x1, y1
    x, y = centroids(layer)
    inside = np.zeros(len(x), bool)
    for x0, y0, x1, y1 in boxes:
        inside |= (x >= x0 - 0.5) & (x < x1 + 0.5) & (y >= y0 - 0.5) & (y < y1 + 0.5)
    assert inside.all(), (x[~inside], y[~inside])
    # polygons shown where the measurements say they are: world = level-0 px × mpp (pixel-centre shift)
    world = np.array([layer.data_to_world(v.mean(axis=0)) for v in layer.data])
    polygon_centres = np.array([shapely.centroid(shapely.Polygon(v[:, ::-1] + 0.5)).coords[0] for v in layer.data])
    assert np.allclose(polygon_centres, np.c_[x, y], atol=1e-6)
    assert np.allclose(world, (np.c_[[v.mean(axis=0) for v in layer.data]]) * MPP)
    meta = layer.metadata
    assert meta["cancelled"] is False and meta["error"] is None
    assert meta["tiles_total"] == len(meta["tiles_done"]) > 0
    assert meta["run"]["model_sha256"] and meta["run"]["tiling"]["tile"] == 256
    assert meta["run"]["memory_gb"] == widget.memory_gb.value == RunOptions().memory_gb  # the dock's network memory reaches the run
    assert "Done:" in widget.status.value
    # coloured by a feature: edge colours follow the area
    assert widget.color_by.value == AREA_UM2
    widget.color_by.value = PROBABILITY
    widget.color_by.value = NO_COLOR
    assert np.allclose(layer.edge_color, layer.edge_color[0])


def test_second_overlapping_run_adds_no_duplicates(make_napari_viewer):
    """With trained weights: random ones draw blobs wider than a 256-px tile's context."""
    from napari_hoverfast.core.default_model import default_model_path

    viewer = make_napari_viewer()
    image = add_sample(viewer)
    widget = make_widget(viewer, default_model_path())
    run_on_rectangles(widget, viewer, (0, 0, 128, 128))
    layer = widget.nuclei_layer(image)
    first = layer.nshapes
    assert first > 0
    run_on_rectangles(widget, viewer, (64, 64, 192, 192))  # overlaps the first by a quarter
    assert widget.nuclei_layer(image) is layer and len(viewer.layers) == 4  # image, nuclei, 2× regions
    polygons = [shapely.Polygon(v[:, ::-1]) for v in layer.data]
    tree = shapely.STRtree(polygons)
    for i, j in zip(*tree.query(polygons, predicate="intersects"), strict=True):
        if i < j:
            a, b = polygons[i], polygons[j]
            inter = a.intersection(b).area
            assert inter / (a.area + b.area - inter) <= 0.5
    # the same run again finds nothing new
    count = layer.nshapes
    widget.run()
    assert layer.nshapes == count
    assert layer.metadata["nuclei_added"] == 0 and layer.metadata["duplicates_skipped"] > 0


def test_novel_nuclei_by_covered_area_and_overlap():
    square = lambda x, y, s=10: shapely.box(x, y, x + s, y + s)  # noqa: E731
    earlier = Nuclei(MPP)
    earlier.append([square(100, 100), square(300, 300)], 0.9, 0)
    batch = Nuclei(MPP)
    batch.append([square(20, 20), square(101, 101), square(150, 150), square(305, 305)], 0.9, 1)
    covered = np.array([[0.0, 0.0, 50.0, 50.0]])  # x0, y0, x1, y1
    keep = novel_nuclei(batch, earlier, covered)
    # in a covered area; IoU 0.68 with an earlier one; new; IoU 0.14 (a neighbour, kept)
    assert keep.tolist() == [False, False, True, True]


def test_current_view_at_two_zoom_levels(make_napari_viewer, checkpoint):
    viewer = make_napari_viewer()
    image = add_sample(viewer)
    widget = make_widget(viewer, checkpoint)
    widget.scope.value = SCOPE_VIEW
    camera = viewer.scene.camera
    rows, cols = viewer.canvas.size
    regions = []
    for zoom in (6.0, 12.0):
        camera.center = (64.0, 96.0)  # µm
        camera.zoom = zoom  # screen px per µm
        box = widget.view_region()
        half_r, half_c = rows / (2 * zoom) / MPP, cols / (2 * zoom) / MPP  # level-0 px
        assert box.x == pytest.approx(96 / MPP + 0.5 - half_c, abs=1)
        assert box.x + box.w == pytest.approx(96 / MPP + 0.5 + half_c, abs=1)
        assert box.y == pytest.approx(max(64 / MPP + 0.5 - half_r, 0), abs=1)
        assert box.y + box.h == pytest.approx(64 / MPP + 0.5 + half_r, abs=1)
        regions.append(box)
    assert regions[1].w == pytest.approx(regions[0].w / 2, abs=1)
    widget.run()  # at the closer zoom
    layer = widget.nuclei_layer(image)
    assert layer.nshapes > 0
    box = regions[1]
    x, y = centroids(layer)
    assert ((x >= box.x) & (x < box.x + box.w) & (y >= box.y) & (y < box.y + box.h)).all()
    assert layer.metadata["run"]["regions"] == [{"x": box.x, "y": box.y, "w": box.w, "h": box.h}]


def test_error_mid_run_keeps_partial_result(make_napari_viewer, checkpoint, monkeypatch):
    viewer = make_napari_viewer()
    image = add_sample(viewer)
    widget = make_widget(viewer, checkpoint)
    calls = {"n": 0}
    read = Slide.read_region

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("tile 3 is unreadable (simulated)")
        return read(self, *args, **kwargs)

    monkeypatch.setattr(Slide, "read_region", failing)
    run_on_rectangles(widget, viewer, (0, 0, 120, 120))  # 4 tiles of 256
    layer = widget.nuclei_layer(image)
    meta = layer.metadata
    assert "unreadable" in meta["error"] and "unreadable" in widget.status.value
    assert 0 < len(meta["tiles_done"]) < meta["tiles_total"]
    assert layer.nshapes == meta["nuclei_added"] > 0
    assert not widget.running and widget.run_button.enabled


def test_batches_arriving_together_are_shown_together(make_napari_viewer, monkeypatch):
    """The first batch shows at once; batches that follow within the pacing interval wait and are added
    to the layer in one update (napari rebuilds a Shapes mesh per update), none lost at the end."""
    viewer = make_napari_viewer()
    image = add_sample(viewer)
    widget = open_widget(viewer)
    layer = widget.nuclei_layer(image, create=True)
    run = widget.session.begin(widget.display(layer))
    monkeypatch.setattr(_session, "FLUSH_MIN_SECONDS", 3600.0)
    found = Nuclei(MPP)  # one container hands out a run's batches, as in the engine
    squares = [shapely.box(x, y, x + 12, y + 12) for x in range(20, 320, 20) for y in (20, 40, 60)]
    for tile in range(3):
        batch = found.append(squares[15 * tile : 15 * (tile + 1)], 0.9, tile)
        run.receive(NucleusBatch(nuclei=batch, tiles=(tile,)))
    assert layer.nshapes == 15 and run.pending_count == 30
    run.flush()
    assert layer.nshapes == 45 and run.pending_count == 0 and run.added == 45
    assert sorted(layer.features[TILE].tolist()) == [0] * 15 + [1] * 15 + [2] * 15
    widget.session.end()
    assert not widget.running


def test_threaded_run_matches_synchronous(make_napari_viewer, checkpoint, qtbot):
    viewer = make_napari_viewer()
    image = add_sample(viewer)
    widget = make_widget(viewer, checkpoint, synchronous=False)
    run_on_rectangles(widget, viewer, (10, 10, 100, 100))
    assert widget.running and not widget.run_button.enabled and widget.cancel_button.enabled
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    layer = widget.nuclei_layer(image)
    threaded = sorted(map(tuple, np.c_[centroids(layer)].round(3)))
    assert layer.metadata["cancelled"] is False and threaded

    viewer.layers.remove(layer)
    widget.synchronous = True
    widget.run()
    again = widget.nuclei_layer(image)
    assert again is not layer and sorted(map(tuple, np.c_[centroids(again)].round(3))) == threaded


def test_whole_slide_threaded_nearest_first_responsive_and_cancelled(make_napari_viewer, checkpoint, qtbot, slide_cache):
    viewer = make_napari_viewer()
    image = add_sample(viewer, sample_slide)
    widget = make_widget(viewer, checkpoint, synchronous=False)
    widget.scope.value = SCOPE_WHOLE
    camera = viewer.scene.camera
    centre_um = (300.0, 420.0)  # on tissue, off the slide's centre
    camera.center = centre_um
    camera.zoom = 4.0
    widget.run()
    assert widget.running
    worker = widget.session.worker

    # pan and zoom while it runs: the event loop keeps turning
    gaps, moves, last = [], 0, time.perf_counter()
    while widget.progress.value < 3 and widget.running:
        camera.zoom *= 1.05 if moves % 2 else 1 / 1.05
        camera.center = (centre_um[0] + moves % 5, centre_um[1])
        qtbot.wait(20)
        now = time.perf_counter()
        gaps.append(now - last)
        last, moves = now, moves + 1
    assert widget.running and moves >= 5
    assert max(gaps) < 5.0, f"event loop blocked for {max(gaps):.1f} s"

    done_at_cancel = widget.progress.value
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert worker.is_running is False
    layer = widget.nuclei_layer(image)
    meta = layer.metadata
    assert meta["cancelled"] is True and meta["error"] is None
    assert done_at_cancel <= len(meta["tiles_done"]) <= done_at_cancel + 2 < meta["tiles_total"]
    assert layer.nshapes == meta["nuclei_added"]
    assert "Cancelled" in widget.status.value
    # the first tile done holds the view centre; later ones are no nearer
    x, y = centre_um[1] / MPP + 0.5, centre_um[0] / MPP + 0.5
    bx, by, bw, bh = meta["tiles_done_level0"][0]
    assert bx <= x < bx + bw and by <= y < by + bh
    dist = [np.hypot(b[0] + b[2] / 2 - x, b[1] + b[3] / 2 - y) for b in meta["tiles_done_level0"]]
    assert dist == sorted(dist)

    # Run again: it continues where it stopped (tiles done before come from the cache)
    done_before, total = len(meta["tiles_done"]), meta["tiles_total"]
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    meta = layer.metadata
    assert meta["cancelled"] is False and len(meta["tiles_done"]) == total
    assert meta["tiles_cached"] >= done_before and "from the cache" in widget.status.value


def test_closing_the_viewer_during_a_run(make_napari_viewer, checkpoint, qtbot, slide_cache):
    viewer = make_napari_viewer()
    add_sample(viewer, sample_slide)
    widget = make_widget(viewer, checkpoint, synchronous=False)
    widget.scope.value = SCOPE_WHOLE
    widget.run()
    worker = widget.session.worker
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=60_000)
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)


# --- export ------------------------------------------------------------------------------------------------


def test_export_round_trip(make_napari_viewer, checkpoint, tmp_path, qupath_check):
    viewer = make_napari_viewer()
    image = add_sample(viewer)
    widget = make_widget(viewer, checkpoint)
    run_on_rectangles(widget, viewer, (0, 0, 128, 128))
    layer = widget.nuclei_layer(image)

    written = widget.export(tmp_path / "cells.geojson")
    assert [p.name for p in written] == ["cells.geojson", "cells.csv", "cells.run.json"]
    check = qupath_check(written[0], "--expect-type", "detection")
    assert check.returncode == 0, check.stdout

    objects = read_geojson(written[0])
    assert len(objects) == layer.nshapes
    areas = np.array([o.geometry.area for o in objects]) * MPP**2
    assert np.allclose(np.sort(areas), np.sort(layer.features[AREA_UM2].to_numpy()), rtol=1e-3)
    assert all(PROBABILITY in o.measurements and "Tile" in o.measurements for o in objects)
    sidecar = json.loads(written[2].read_text())
    assert sidecar["model_sha256"] == layer.metadata["run"]["model_sha256"]
    assert sidecar["run"]["tiling"]["tile"] == 256 and sidecar["nuclei"] == layer.nshapes
    with written[1].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == layer.nshapes and AREA_UM2 in rows[0]

    # an edited layer exports what it shows
    layer.remove([0])
    objects = read_geojson(widget.export(tmp_path / "edited.geojson.gz")[0])
    assert len(objects) == layer.nshapes


def test_export_with_nothing_to_export(make_napari_viewer, checkpoint, tmp_path):
    viewer = make_napari_viewer()
    add_sample(viewer)
    widget = make_widget(viewer, checkpoint)
    assert widget.export(tmp_path / "none.geojson") == []
    assert "Nothing to export" in widget.status.value


def test_cache_on_by_default_rethreshold_and_clear(make_napari_viewer, checkpoint, tmp_path, monkeypatch):
    """The widget keeps the network's output in the user cache folder: the same run again takes every
    tile from there; Clear cache empties it; an unusable folder means a run without the cache."""
    viewer = make_napari_viewer()
    add_sample(viewer)
    widget = make_widget(viewer, checkpoint)
    assert widget.use_cache.value is True
    run_on_rectangles(widget, viewer, (0, 0, 100, 100))
    layer = widget.nuclei_layer(viewer.layers[0])
    assert layer.metadata["tiles_cached"] == 0
    widget.min_area.value = 8.0
    widget.run()  # a re-threshold: same tiles, new minimum area
    assert layer.metadata["tiles_cached"] == layer.metadata["tiles_total"] > 1
    assert "from the cache" in widget.status.value
    folder = Path(os.environ["NAPARI_HOVERFAST_TILE_CACHE"])
    assert list(folder.glob("??/*.npz"))
    assert widget.clear_cache() > 0 and not list(folder.glob("??/*.npz"))
    assert "Cache cleared" in widget.status.value

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("NAPARI_HOVERFAST_TILE_CACHE", str(blocker / "tiles"))
    other = make_widget(make_napari_viewer(), checkpoint)  # a new viewer: a new widget
    assert other.tile_cache() is None  # warned, and runs without


def test_from_the_plugin_menu_layer_export_and_save_hold_the_same_nuclei(make_napari_viewer, tmp_path, qtbot):
    """Two overlapping regions, the current view twice, a whole-slide run cancelled and then resumed,
    then export and File › Save Selected Layers: the layer, the export and the saved file hold the
    same nuclei, with no duplicates."""
    from napari_hoverfast.core.default_model import default_model_path

    viewer = make_napari_viewer()
    image = add_sample(viewer)
    widget = make_widget(viewer, default_model_path())
    run_on_rectangles(widget, viewer, (0, 0, 100, 100))
    run_on_rectangles(widget, viewer, (50, 50, 150, 150))
    viewer.scene.camera.center = (128.0, 128.0)
    viewer.scene.camera.zoom = 3.0
    widget.scope.value = SCOPE_VIEW
    widget.run()
    widget.run()  # the same view again adds nothing
    widget.synchronous = False
    widget.scope.value = SCOPE_WHOLE
    widget.run()
    qtbot.waitUntil(lambda: widget.progress.value >= 1 or not widget.running, timeout=120_000)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    layer = widget.nuclei_layer(image)
    assert layer.metadata["cancelled"] is True
    widget.run()  # resumed: tiles done before come from the cache
    qtbot.waitUntil(lambda: not widget.running, timeout=300_000)
    assert layer.metadata["cancelled"] is False
    layer = widget.nuclei_layer(image)
    nuclei = [o.geometry for o in read_geojson(widget.export(tmp_path / "cells.geojson")[0])]
    viewer.layers.selection = {layer}
    viewer.layers.save(str(tmp_path / "saved.geojson"), selected=True, plugin="napari-hoverfast")
    saved = [o.geometry for o in read_geojson(tmp_path / "saved.geojson")]
    assert layer.nshapes == len(nuclei) == len(saved) > 20
    polygons = np.asarray(nuclei, dtype=object)
    tree = shapely.STRtree(polygons)
    i, j = tree.query(polygons, predicate="intersects")
    keep = i < j
    inter = shapely.area(shapely.intersection(polygons[i[keep]], polygons[j[keep]]))
    union = shapely.area(shapely.union(polygons[i[keep]], polygons[j[keep]]))
    assert not (inter / union > 0.5).any(), "a nucleus is in the export twice"
    assert len([ly for ly in viewer.layers if ly.metadata.get("hoverfast")]) == 1


def test_after_a_run_the_users_active_layer_stays_active(make_napari_viewer, checkpoint):
    viewer = make_napari_viewer()
    add_sample(viewer)
    widget = make_widget(viewer, checkpoint)
    regions = run_on_rectangles(widget, viewer, (0, 0, 60, 60))
    assert viewer.layers.selection.active.name == regions.name  # the next rectangle goes to the regions
