"""Seconds the viewer is busy showing 10k, 100k and 1M nuclei as a run adds them, in a shown viewer.

    xvfb-run -a python benchmarks/bench_layer.py [--counts 10000 100000 1000000] [--batch 500]

Drives the dock widget's own batch handler (de-duplication, the nuclei display, features, colours) with
synthetic nuclei (ellipses of 20 vertices, 6–9 µm across, on a jittered grid like tissue at 40×), in
batches of the size a 1024² tile yields, while the whole slide is in view, and lets Qt/vispy draw after
each batch as it would during a run. Then: recolour by another feature, draw zoomed out, zoom in on a
500 µm and a 100 µm field (the outlines of that area are built and drawn), and export. A small run
first warms up napari (first viewer, compiled triangulation) and is not counted.

Each count runs twice in the same process: with the widget's display (outlines only near the view,
an overview image zoomed out) and, as the baseline, with every nucleus an outline in one Shapes layer
(what the widget did before; skipped above ``--baseline-max`` nuclei, where it takes minutes and
gigabytes). Prints numbers and ratios (display / baseline); never asserts a time.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

MPP = 0.25


def synthetic_nuclei(n: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """``n`` nucleus-like polygons (level-0 px) on a jittered grid; returns them and the grid side in px."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    spacing = 60.0  # px: 15 µm between nuclei
    ij = np.stack(np.divmod(np.arange(n), side), axis=1).astype(float)
    centres = (ij + 0.5) * spacing + rng.uniform(-10, 10, (n, 2))
    t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    a = rng.uniform(12, 18, n)[:, None]  # semi-axes in px (3–4.5 µm)
    b = a * rng.uniform(0.6, 1.0, n)[:, None]
    theta = rng.uniform(0, np.pi, n)[:, None]
    x = centres[:, 1:2] + a * np.cos(t) * np.cos(theta) - b * np.sin(t) * np.sin(theta)
    y = centres[:, 0:1] + a * np.cos(t) * np.sin(theta) + b * np.sin(t) * np.cos(theta)
    rings = np.stack([x, y], axis=-1)
    polygons = shapely.polygons(np.concatenate([rings, rings[:, :1]], axis=1))
    return polygons, int(side * spacing)


def measure(polygons: np.ndarray, extent: int, args: argparse.Namespace, *, baseline: bool) -> dict[str, float]:
    """One run's worth of batches into a fresh viewer; seconds for each step."""
    import dask.array as da
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_hoverfast._display import DisplayOptions
    from napari_hoverfast._widget import HoverFastWidget
    from napari_hoverfast.core.nuclei import PROBABILITY, Nuclei
    from napari_hoverfast.core.pipeline import NucleusBatch

    count = len(polygons)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    levels, size = [], extent  # a lazy pyramid, as a slide opens: napari reads only what it shows
    while True:
        levels.append(da.zeros((size, size, 3), dtype=np.uint8, chunks=(1024, 1024, 3)))
        if size <= 2048:
            break
        size = (size + 1) // 2
    image = viewer.add_image(
        levels, multiscale=True, rgb=True, scale=(MPP, MPP), name="slide",
        metadata={"path": "synthetic.tif", "mpp": MPP, "level_dimensions": [[extent, extent]]},
    )
    _, widget = viewer.window.add_plugin_dock_widget("napari-hoverfast", "HoverFast nuclei")  # as users open it
    assert isinstance(widget, HoverFastWidget)
    if baseline:
        widget.display_options = DisplayOptions(max_outlines=10**9)
    viewer.reset_view()
    app.processEvents()
    layer = widget.nuclei_layer(image, create=True)
    run = widget.session.begin(widget.display(layer))  # the widget's run, fed with synthetic batches
    app.processEvents()

    slowest = busy = 0.0
    found = Nuclei(MPP)  # like the engine: one container per run hands out the batches
    start = time.perf_counter()
    for first in range(0, count, args.batch):
        batch = found.append(polygons[first : first + args.batch], 0.9, first // args.batch)
        t0 = time.perf_counter()
        run.receive(NucleusBatch(nuclei=batch, tiles=(first // args.batch,)))
        app.processEvents()
        spent = time.perf_counter() - t0
        slowest, busy = max(slowest, spent), busy + spent
        time.sleep(args.interval)  # the engine computing the next tile; the viewer is free
    t0 = time.perf_counter()
    widget.session.end()  # what the end of a run does: show the batches still waiting, colour by the data
    app.processEvents()
    spent = time.perf_counter() - t0
    slowest, busy = max(slowest, spent), busy + spent
    total = time.perf_counter() - start
    assert len(widget.display(layer).nuclei) == count

    out = {"busy": busy, "total": total, "longest": slowest}
    t0 = time.perf_counter()
    widget.color_by.value = PROBABILITY
    app.processEvents()
    out["recolour"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    viewer.screenshot(canvas_only=True)
    out["draw out"] = time.perf_counter() - t0

    camera = viewer.scene.camera
    for field in (500, 100):  # µm across the canvas: ~1k nuclei in view, then ~50
        t0 = time.perf_counter()
        camera.center = (extent * MPP / 2 + field,) * 2  # off the last window: outlines built anew
        camera.zoom = min(viewer.canvas.size) / field
        widget.update_views()  # what the settled camera triggers
        viewer.screenshot(canvas_only=True)
        out[f"zoom {field}"] = time.perf_counter() - t0
        out[f"outlines {field}"] = layer.nshapes

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        widget.export(Path(tmp) / "nuclei.geojson", layer)
        out["export"] = time.perf_counter() - t0
    viewer.close()
    app.processEvents()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=500, help="nuclei per batch (one tile's worth)")
    parser.add_argument("--interval", type=float, default=0.05,
                        help="seconds between batches (0.05: a GPU's pace for 1024² tiles; a CPU takes seconds)")
    parser.add_argument("--baseline-max", type=int, default=100_000,
                        help="largest count also run with every nucleus an outline (the baseline)")
    args = parser.parse_args()

    import napari
    from napari.utils import triangulation_backend

    keys = ("busy", "longest", "recolour", "draw out", "zoom 500", "zoom 100", "export")
    warm, warm_extent = synthetic_nuclei(2000, seed=1)
    measure(warm, warm_extent, args, baseline=True)  # first viewer, compiled backends: not counted
    for count in args.counts:
        polygons, extent = synthetic_nuclei(count)
        if count == args.counts[0]:  # napari applies its settings' backend once a viewer exists
            print(f"napari {napari.__version__}, triangulation backend: {triangulation_backend.get_backend()}", flush=True)
        runs = {"display": measure(polygons, extent, args, baseline=False)}
        if count <= args.baseline_max:
            runs["baseline"] = measure(polygons, extent, args, baseline=True)
        for name, m in runs.items():
            print(
                f"{count:>9,} nuclei, {name:<8}: viewer busy {m['busy']:6.2f} s of {m['total']:.1f} s "
                f"(longest block {m['longest']:.2f} s), recolour {m['recolour']:.2f} s, "
                f"draw zoomed out {m['draw out']:.2f} s, zoom to 500 µm {m['zoom 500']:.2f} s "
                f"({m['outlines 500']:,} outlines), to 100 µm {m['zoom 100']:.2f} s "
                f"({m['outlines 100']:,} outlines), export {m['export']:.2f} s",
                flush=True,
            )
        if "baseline" in runs:
            d, b = runs["display"], runs["baseline"]
            print(f"{count:>9,} nuclei, display/baseline: "
                  + ", ".join(f"{k} {d[k] / b[k]:.2f}" for k in keys if b[k] > 0), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of the process: {peak:,.0f} MB", flush=True)


if __name__ == "__main__":
    main()
