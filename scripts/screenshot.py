"""Render the README's picture: the bundled H&E tile with its nuclei and the dock widget docked.

    xvfb-run -a python scripts/screenshot.py [docs/images/widget.png] [--model CKPT]

Runs the real widget synchronously on the whole tile ("Current view" after a reset), with the
embedded default model (or ``--model``), colours the nuclei by area and saves a screenshot of the
whole window. ``tests/test_screenshot.py`` calls :func:`render` and checks the committed picture.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "docs" / "images" / "widget.png"


def render(viewer, output: Path, model: Path | None = None, tile_size: int = 2048) -> int:
    """Segment the sample tile in ``viewer``, save the window to ``output``; returns the nuclei count."""
    from skimage import io

    from napari_hoverfast._sample_data import sample_tile
    from napari_hoverfast._widget import MODEL_DEFAULT, MODEL_FILE, SCOPE_VIEW, HoverFastWidget
    from napari_hoverfast.core.nuclei import AREA_UM2

    data, kwargs, _ = sample_tile()[0]
    image = viewer.add_image(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget("napari-hoverfast", "HoverFast nuclei")  # as users open it
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
    widget.scope.value = SCOPE_VIEW
    viewer.reset_view()
    widget.run()
    layer = widget.nuclei_layer(image)
    widget.color_by.value = AREA_UM2
    # a closer look at the upper-left quarter, where single outlines are visible
    viewer.scene.camera.center = (0, 96.0, 96.0)
    viewer.scene.camera.zoom = viewer.scene.camera.zoom * 1.6
    output.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(output, viewer.screenshot(canvas_only=False, flash=False), check_contrast=False)
    return 0 if layer is None else int(layer.nshapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the embedded model)")
    args = parser.parse_args()
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    count = render(viewer, args.output, args.model)
    print(f"{args.output}: {count} nuclei")
    viewer.close()


if __name__ == "__main__":
    main()
