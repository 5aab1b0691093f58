"""Seconds to add 10k and 100k nuclei to the widget's nuclei layer, batch by batch, in a shown viewer.

    xvfb-run -a python benchmarks/bench_layer.py [--counts 10000 100000] [--batch 500]

Drives the dock widget's own batch handler (de-duplication, Shapes append, features, colours) with
synthetic nuclei (ellipses of 20 vertices, 6–9 µm across, on a jittered grid like tissue at 40×), in
batches of the size a 1024² tile yields, and lets Qt/vispy draw after each batch as it would during a
run (the widget coalesces batches so that updating the layer keeps the viewer busy at most about a
fifth of the time). Prints, per count: total seconds, the slowest batch (how long the viewer is busy at once), the
time to draw the whole layer zoomed out and a 100 µm field zoomed in, and the time to export it.
Prints numbers only; never asserts a time. Needs napari with a Qt binding (bermuda is used when
installed, as napari's fastest triangulation backend).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch", type=int, default=500, help="nuclei per batch (one tile's worth)")
    parser.add_argument("--interval", type=float, default=0.1,
                        help="seconds between batches (0.1: a GPU's pace for 1024² tiles; a CPU takes seconds)")
    args = parser.parse_args()

    import dask.array as da
    import napari
    from napari.utils import triangulation_backend
    from qtpy.QtWidgets import QApplication

    from napari_hoverfast._widget import HoverFastWidget, _RunState
    from napari_hoverfast.core.nuclei import Nuclei
    from napari_hoverfast.core.pipeline import NucleusBatch

    for count in args.counts:
        polygons, extent = synthetic_nuclei(count)
        viewer = napari.Viewer(show=True)
        app = QApplication.instance()
        if count == args.counts[0]:
            backend = triangulation_backend.get_backend()
            print(f"napari {napari.__version__}, triangulation backend: {backend}", flush=True)
        image = viewer.add_image(
            da.zeros((extent, extent, 3), dtype=np.uint8, chunks=(2048, 2048, 3)), rgb=True,
            scale=(MPP, MPP), name="slide", metadata={"path": "synthetic.tif", "mpp": MPP},
        )
        widget = HoverFastWidget(viewer)
        layer = widget.nuclei_layer(image, create=True)
        record = widget._record(layer, MPP)
        run = _RunState(job=None, layer=layer, record=record, earlier=0,  # type: ignore[arg-type]
                        covered=np.zeros((0, 4)), started=time.perf_counter())
        widget._run = run
        viewer.reset_view()
        app.processEvents()

        slowest = busy = 0.0
        found = Nuclei(MPP)  # like the engine: one container per run hands out the batches
        start = time.perf_counter()
        for first in range(0, count, args.batch):
            batch = found.append(polygons[first : first + args.batch], 0.9, first // args.batch)
            t0 = time.perf_counter()
            widget._on_yielded(NucleusBatch(nuclei=batch, tiles=(first // args.batch,)))
            app.processEvents()
            spent = time.perf_counter() - t0
            slowest, busy = max(slowest, spent), busy + spent
            time.sleep(args.interval)  # the engine computing the next tile; the viewer is free
        t0 = time.perf_counter()
        widget._flush(run)  # what the end of a run does: show the batches still waiting
        app.processEvents()
        spent = time.perf_counter() - t0
        slowest, busy = max(slowest, spent), busy + spent
        total = time.perf_counter() - start
        widget._run = None
        assert layer.nshapes == count, layer.nshapes

        t0 = time.perf_counter()
        widget._recolor(layer)
        app.processEvents()
        recolor = time.perf_counter() - t0

        camera = viewer.scene.camera
        draws = {}
        for label, zoom, centre in (("zoomed out", None, None), ("100 µm field", None, (extent * MPP / 2,) * 2)):
            if centre is None:
                viewer.reset_view()
            else:
                camera.center = centre
                rows, cols = viewer.canvas.size
                camera.zoom = min(rows, cols) / 100.0
            app.processEvents()
            t0 = time.perf_counter()
            viewer.screenshot(canvas_only=True)
            draws[label] = time.perf_counter() - t0

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            widget.export(Path(tmp) / "nuclei.geojson", layer)
            export = time.perf_counter() - t0

        print(
            f"{count:>7,} nuclei in batches of {args.batch} every {args.interval:g} s: viewer busy {busy:7.2f} s "
            f"of {total:.2f} s (longest block {slowest:.2f} s), recolour {recolor:.2f} s, "
            + ", ".join(f"draw {k} {v:.2f} s" for k, v in draws.items())
            + f", export {export:.2f} s",
            flush=True,
        )
        viewer.close()


if __name__ == "__main__":
    main()
