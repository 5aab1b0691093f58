"""Render the README's picture and the user guide's pictures in a real viewer, with the real widget.

    xvfb-run -a python scripts/screenshot.py [docs/images/widget.png] [--model CKPT]
    xvfb-run -a python scripts/screenshot.py --guide SLIDE [--folder docs/images] [--model CKPT]
    xvfb-run -a python scripts/screenshot.py --ihc TILE.png     (docs/images/ihc_scoring.png)

The README picture: the bundled H&E tile segmented whole ("Current view" after a reset), coloured by
area, a closer look at its upper-left quarter. The guide (``docs/USER_GUIDE.md``): napari's
reader-choice dialog for the slide, a region drawn on tissue, the finished run zoomed in, the dock
with its legend after a threshold change, and the zoomed-out overview with the tiles done.
``tests/test_screenshot.py`` calls :func:`render` and :func:`guide` and checks what they draw.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "docs" / "images" / "widget.png"
#: The guide's pictures, by name: what each shows.
GUIDE = {
    "reader_choice": "napari asks which plugin reads the slide",
    "pixel_size": "the slide opened by napari's own reader: no pixel size, and where to find it",
    "draw_region": "a region drawn on tissue with Draw region",
    "run_zoomed": "the nuclei of the region, zoomed in",
    "legend": "the dock after a threshold change: status, legend",
    "overview": "zoomed out: the overview of every nucleus and the tiles done",
}


def dock(viewer: Any, model: Path | None, tile_size: int) -> Any:
    """The widget as users open it (Plugins › HoverFast nuclei), set to run synchronously on the CPU."""
    from napari_hoverfast._widget import MODEL_DEFAULT, MODEL_FILE, HoverFastWidget

    _, widget = viewer.window.add_plugin_dock_widget("napari-hoverfast", "HoverFast nuclei")
    assert isinstance(widget, HoverFastWidget)
    widget.synchronous = True
    widget.postprocess_workers = 0
    widget.device.value = "cpu"
    widget.tile_size.value = tile_size
    if model is None:
        widget.model_choice.value = MODEL_DEFAULT
    else:
        widget.model_choice.value = MODEL_FILE
        widget.model_path.value = model
    return widget


def _settle() -> None:
    """Let Qt lay out what changed (a dock just added) before a picture is taken."""
    from qtpy.QtWidgets import QApplication

    for _ in range(3):
        QApplication.processEvents()


def save_window(viewer: Any, path: Path) -> Path:
    from skimage import io

    _settle()
    path.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(path, viewer.screenshot(canvas_only=False, flash=False), check_contrast=False)
    return path


def render(viewer: Any, output: Path, model: Path | None = None, tile_size: int = 2048) -> int:
    """Segment the sample tile in ``viewer``, save the window to ``output``; returns the nuclei count."""
    from napari_hoverfast._sample_data import sample_tile
    from napari_hoverfast._widget import SCOPE_VIEW
    from napari_hoverfast.core.nuclei import AREA_UM2

    data, kwargs, _ = sample_tile()[0]
    image = viewer.add_image(data, **kwargs)
    widget = dock(viewer, model, tile_size)
    widget.scope.value = SCOPE_VIEW
    viewer.reset_view()
    widget.run()
    layer = widget.nuclei_layer(image)
    widget.color_by.value = AREA_UM2
    # a closer look at the upper-left quarter, where single outlines are visible
    camera = viewer.scene.camera
    camera.center = (0, 96.0, 96.0)
    camera.zoom = camera.zoom * 1.6
    widget.update_views()
    save_window(viewer, output)
    return 0 if layer is None else int(layer.nshapes)


def render_ihc(viewer: Any, output: Path, tile: Path, model: Path | None = None, mpp: float = 0.25) -> int:
    """An IHC tile (PNG/TIFF) opened with HoverFast's reader, scored and coloured by IHC class; saved to ``output``."""
    import tempfile

    import numpy as np
    import tifffile
    from PIL import Image

    from napari_hoverfast._colours import IHC_CLASS
    from napari_hoverfast._widget import SCOPE_VIEW

    tiff = Path(tempfile.mkdtemp(prefix="hoverfast-ihc-")) / f"{Path(tile).stem}.tif"
    rgb = np.asarray(Image.open(tile).convert("RGB"))
    tifffile.imwrite(tiff, rgb, photometric="rgb", resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    [image] = viewer.open(str(tiff), plugin="napari-hoverfast")
    widget = dock(viewer, model, 2048)
    widget.stain.value = "ihc_dab"
    widget.scope.value = SCOPE_VIEW
    widget.skip_glass.value = False
    viewer.reset_view()
    widget.run()
    widget.color_by.value = IHC_CLASS
    save_window(viewer, output)
    layer = widget.nuclei_layer(image)
    return 0 if layer is None else int(layer.nshapes)


def _reader_dialog(slide: Path, path: Path) -> Path | None:
    """napari's own dialog asking which reader opens ``slide`` (private napari API: skipped if it moved)."""
    try:
        from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog
    except ImportError:
        return None
    dialog = QtReaderDialog(pth=str(slide), readers={"napari-hoverfast": "HoverFast nuclei", "napari": "napari builtins"})
    dialog.show()
    path.parent.mkdir(parents=True, exist_ok=True)
    dialog.grab().save(str(path))
    dialog.close()
    return path


def _grab(widget: Any, path: Path, *, to_pixel_hint: bool = False) -> Path:
    """A picture of the dock widget (down to the pixel-size hint only, with ``to_pixel_hint``)."""
    _settle()
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = widget.native.grab()
    if to_pixel_hint:
        bottom = widget.pixel_hint.native.mapTo(widget.native, widget.pixel_hint.native.rect().bottomLeft()).y()
        picture = picture.copy(0, 0, picture.width(), bottom + 12)
    picture.save(str(path))
    return path


def _tissue_centre(widget: Any, image: Any) -> tuple[float, float]:
    """A level-0 point (x, y) deep in the tissue: the mask pixel farthest from glass."""
    import numpy as np
    from scipy import ndimage

    mask = widget.tissue_masks(image.metadata["path"], image.metadata.get("mpp"))
    depth = ndimage.distance_transform_edt(mask.mask)  # the farthest from glass
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return (col + 0.5) * mask.downsample, (row + 0.5) * mask.downsample


def _look_at(viewer: Any, image: Any, centre: tuple[float, float], width_um: float) -> None:
    from napari_hoverfast._layers import world_point

    camera = viewer.scene.camera
    camera.center = world_point(image, *centre)
    camera.zoom = min(viewer.canvas.size) / width_um


def guide(viewer: Any, folder: Path, slide: Path, model: Path | None = None, tile_size: int = 2048, *,
          region_um: float = 250.0, whole: bool = True, max_outlines: int | None = None) -> dict[str, Path]:
    """The user guide's pictures of ``slide`` in ``folder`` (``guide_<name>.png``); returns them by name.

    ``whole`` runs the whole slide for the overview (else the overview shows the region's nuclei);
    ``max_outlines`` lowers the outline limit so a small slide shows the overview a large one would.
    """
    import numpy as np

    from napari_hoverfast._display import DisplayOptions
    from napari_hoverfast._layers import slide_size, world_point
    from napari_hoverfast._widget import SCOPE_WHOLE

    out: dict[str, Path] = {}
    dialog = _reader_dialog(slide, folder / "guide_reader_choice.png")
    if dialog is not None:
        out["reader_choice"] = dialog
    [plain] = viewer.open(str(slide), plugin="napari")  # the other choice of the dialog
    widget = dock(viewer, model, tile_size)
    out["pixel_size"] = _grab(widget, folder / "guide_pixel_size.png", to_pixel_hint=True)
    viewer.layers.remove(plain)
    [image] = viewer.open(str(slide), plugin="napari-hoverfast")
    widget.image.value = image
    mpp = float(image.metadata["mpp"])
    x, y = _tissue_centre(widget, image)
    half = region_um / mpp / 2
    w, h = slide_size(image)
    x, y = min(max(x, half), w - half), min(max(y, half), h - half)
    _look_at(viewer, image, (x, y), 3 * region_um)
    regions = widget.draw_region()
    corners = [regions.world_to_data(world_point(image, x + dx, y + dy)) for dx, dy in ((-half, -half), (half, half))]
    regions.add_rectangles([corners])  # as a user drags one
    widget.update_views()
    out["draw_region"] = save_window(viewer, folder / "guide_draw_region.png")

    widget.run()
    _look_at(viewer, image, (x, y), region_um / 2.5)
    widget.update_views()
    out["run_zoomed"] = save_window(viewer, folder / "guide_run_zoomed.png")

    widget.min_area.value = 20.0  # a threshold change: re-thresholded from the cache (the timer, at once here)
    widget.retune()
    nuclei = widget.display(widget.nuclei_layer(image)).nuclei
    if len(nuclei):  # a click on the largest nucleus in view: its measurements in the dock
        inside = nuclei.polygons[int(np.argmax(nuclei.area_px))].representative_point()
        widget.results.pick(world_point(image, inside.x, inside.y))
    out["legend"] = _grab(widget, folder / "guide_legend.png")

    if max_outlines is not None:  # a small slide shows the overview a large one shows at this zoom
        widget.display(widget.nuclei_layer(image)).options = DisplayOptions(max_outlines=max_outlines)
    if whole:
        widget.scope.value = SCOPE_WHOLE
        widget.run()
    viewer.reset_view()
    widget.update_views()
    widget.show_coverage.value = True
    viewer.layers.selection.active = image
    out["overview"] = save_window(viewer, folder / "guide_overview.png")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the embedded model)")
    parser.add_argument("--guide", type=Path, default=None, help="a slide: render the user guide's pictures of it")
    parser.add_argument("--folder", type=Path, default=ROOT / "docs" / "images", help="where the guide's pictures go")
    parser.add_argument("--ihc", type=Path, default=None, help="an IHC tile (0.25 µm/px): render the IHC scoring picture of it")
    parser.add_argument("--max-outlines", type=int, default=None, help="lower the outline limit (a small slide's overview)")
    args = parser.parse_args()
    import logging

    import napari

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    if args.ihc is not None:
        output = args.output if args.output != DEFAULT_OUTPUT else ROOT / "docs" / "images" / "ihc_scoring.png"
        logging.info("%s: %d nuclei", output, render_ihc(viewer, output, args.ihc, args.model))
    elif args.guide is not None:
        for name, path in guide(viewer, args.folder, args.guide, args.model, max_outlines=args.max_outlines).items():
            logging.info("%s: %s (%s)", name, path, GUIDE[name])
    else:
        logging.info("%s: %d nuclei", args.output, render(viewer, args.output, args.model))
    viewer.close()


if __name__ == "__main__":
    main()
