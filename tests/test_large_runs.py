"""Large runs in a real viewer: glass skipped, the tissue and the tiles done shown, the view followed.

On the small generated slide (3 levels, tissue on ~40 % of it), threaded as users run it, with the
shared random-weight checkpoint and 256 px tiles; runs are cancelled once they have shown what is
tested.
"""

from __future__ import annotations

import numpy as np
import pytest
from _plugin import configure, open_widget

from napari_hoverfast._form import SCOPE_VIEW, SCOPE_WHOLE
from napari_hoverfast._layers import world_point
from napari_hoverfast._sample_data import sample_slide

pytestmark = pytest.mark.gui




def open_slide(viewer, checkpoint):
    data, kwargs, _ = sample_slide()[0]
    image = viewer.add_image(data, **kwargs)
    return image, configure(open_widget(viewer), checkpoint, synchronous=None)


def started(widget) -> bool:
    run = widget.session.run
    return run is None or run.tiles_total > 0


def test_current_view_skips_glass_and_the_overlays_show_tissue_and_tiles(make_napari_viewer, checkpoint, qtbot, slide_cache):
    viewer = make_napari_viewer(show=True)
    image, widget = open_slide(viewer, checkpoint)
    viewer.reset_view()  # the whole slide at fit zoom: glass around the tissue
    widget.scope.value = SCOPE_VIEW
    totals = {}
    for skip in (False, True):
        widget.skip_glass.value = skip
        widget.run()
        qtbot.waitUntil(lambda: started(widget), timeout=60_000)
        totals[skip] = widget.session.run.tiles_total
        qtbot.waitUntil(lambda: widget.progress.value >= 2 or not widget.running, timeout=60_000)
        widget.cancel()
        qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert totals[True] < 0.8 * totals[False], totals

    layer = widget.nuclei_layer(image)
    mask = widget.tissue_masks(image.metadata["path"], image.metadata["mpp"])
    for x, y, w, h in layer.metadata["tiles_done_level0"]:  # the skip-glass run's tiles all touch tissue
        assert mask.box_fraction(int(x), int(y), int(w), int(h)) > 0

    widget.show_tissue.value = True
    [tissue] = [ly for ly in viewer.layers if ly.metadata.get("hoverfast_tissue")]
    assert tissue.visible and np.array_equal(tissue.data > 0, mask.mask)
    assert np.allclose(tissue.scale, np.asarray(image.scale) * mask.downsample)
    widget.show_tissue.value = False
    assert not tissue.visible

    widget.show_coverage.value = True
    [coverage] = [ly for ly in viewer.layers if ly.metadata.get("hoverfast_coverage")]
    f = coverage.scale[0] / image.scale[0]
    done = layer.metadata["coverage"]
    assert len(done) >= 4 and {int(b[4]) for b in done} == {2}  # the cache is on: every tile kept
    for x, y, w, h, _ in done:  # each tile done is painted where it lies, inside its border
        assert coverage.data[int((y + h / 2) // f), int((x + w / 2) // f)] == 2
        assert coverage.data[int(y // f), int((x + w / 2) // f)] == 3
    assert viewer.layers.extent.units is not None  # overlays carry the slide's units
    assert viewer.layers.selection.active.name == image.name  # and did not take the user's layer


def test_the_tiles_left_follow_the_view_during_a_whole_slide_run(make_napari_viewer, checkpoint, qtbot, slide_cache):
    viewer = make_napari_viewer(show=True)
    image, widget = open_slide(viewer, checkpoint)
    mask = widget.tissue_masks(image.metadata["path"], image.metadata["mpp"])
    rows, cols = np.nonzero(mask.mask)
    d = mask.downsample
    tissue = np.c_[(cols + 0.5) * d, (rows + 0.5) * d]  # level-0 (x, y) of tissue
    a = tissue[np.argmin(tissue.sum(axis=1))]  # top-left of the tissue
    b = tissue[np.argmax(np.hypot(*(tissue - a).T))]  # the tissue farthest from it
    camera = viewer.scene.camera
    camera.zoom = 4.0
    camera.center = world_point(image, *a)
    widget.scope.value = SCOPE_WHOLE
    widget.run()
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=60_000)
    camera.center = world_point(image, *b)  # the user pans to the other end while it runs
    widget.update_views()  # what the settled camera triggers
    moved_at = widget.progress.value
    qtbot.waitUntil(lambda: widget.progress.value >= moved_at + 8 or not widget.running, timeout=120_000)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    boxes = np.asarray(widget.nuclei_layer(image).metadata["tiles_done_level0"])
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    near_a = np.hypot(*(centres - a).T)
    near_b = np.hypot(*(centres - b).T)
    assert (near_a[:1] < near_b[:1]).all()  # it started where the user looked
    assert (near_b[-3:] < near_a[-3:]).all()  # and went where the user looks now
