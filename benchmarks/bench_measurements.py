"""What the nucleus measurements cost on top of post-processing, per tile.

    python benchmarks/bench_measurements.py [--shared ../shared] [--size 2048] [--repeat 3]

For an H&E tile (a 2048² mosaic of MoNuSeg tiles, 40×) and an IHC tile (``ihc_roi.png`` tiled 2×2,
stain ``ihc_dab``), predicts the maps once with the embedded model, then times (best of
``--repeat``, this process, one thread of NumPy work):

- post-processing without measurements: ``postprocess_tile`` on maps without RGB (watershed,
  polygons, ownership, mean probability), plus the container's geometry columns as they were
  (area, length, centroid);
- the stain measurements: ``measurements.stain_statistics`` under every label of the tile (what
  ``postprocess_tile`` adds when the maps carry RGB; it measures the kept nuclei only);
- the shape measurements: ``measurements.shape_measurements`` on the tile's polygons (what
  ``Nuclei.append`` adds).

Prints seconds and the overhead in % (the goal is at most 20 %), and a cache entry's size with and
without the RGB it now keeps.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import shapely
from PIL import Image

from napari_hoverfast.core.cache import TileMaps
from napari_hoverfast.core.default_model import load_default_model
from napari_hoverfast.core.measurements import shape_measurements, stain_statistics
from napari_hoverfast.core.postprocess import PostprocessOptions, instance_labels
from napari_hoverfast.core.predict import PredictOptions, Predictor, prepare
from napari_hoverfast.core.stages import TileWork, postprocess_tile
from napari_hoverfast.core.tiling import Box, TileSpec

HERE = Path(__file__).resolve().parent


def he_tile(shared: Path, size: int) -> np.ndarray:
    """MoNuSeg tiles (1000², 40×) in a grid, cropped to ``size``²."""
    names = sorted((shared / "data" / "nuclei" / "monuseg_train" / "images").glob("*.png"))
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in names]
    k = -(-size // 1000)
    rows = [np.concatenate([tiles[(r * k + c) % len(tiles)] for c in range(k)], axis=1) for r in range(k)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


def ihc_tile(shared: Path, size: int) -> np.ndarray:
    """``ihc_roi.png`` (1024², 40×) mirrored into a grid, cropped to ``size``²."""
    roi = np.asarray(Image.open(shared / "data" / "ihc_roi.png").convert("RGB"))
    k = -(-size // roi.shape[0])
    rows = [np.concatenate([roi[:, ::-1] if c % 2 else roi for c in range(k)], axis=1) for _ in range(k)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


def best(fn, repeat: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def npz_bytes(**arrays: np.ndarray) -> int:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return len(buffer.getvalue())


def bench(name: str, rgb: np.ndarray, stain: str, predictor_for, repeat: int) -> None:  # type: ignore[no-untyped-def]
    size = rgb.shape[0]
    prob, hv = predictor_for(stain)(prepare(rgb[None], stain))  # type: ignore[arg-type]
    maps = TileMaps.from_float(prob[0], hv[0], rgb)
    bare = TileMaps(maps.prob, maps.hv)
    whole = Box(0, 0, size, size)
    work = TileWork(TileSpec(0, whole, whole, 0), whole, 1.0, PostprocessOptions(mpp=0.25), (), whole, stain=stain)  # type: ignore[arg-type]

    def baseline():  # type: ignore[no-untyped-def]
        found = postprocess_tile(bare, work)
        geoms = np.asarray(found.polygons, dtype=object)
        shapely.area(geoms), shapely.length(geoms), shapely.centroid(geoms)
        return found

    t_post, found = best(baseline, repeat)
    labels = instance_labels(*bare.as_float())  # the labels postprocess_tile measures under (all of them)
    ids = np.unique(labels[labels > 0])
    t_stain, _ = best(lambda: stain_statistics(maps.rgb, labels, ids, stain), repeat)  # type: ignore[arg-type]
    t_shape, _ = best(lambda: shape_measurements(np.asarray(found.polygons, dtype=object)), repeat)  # type: ignore[attr-defined]
    t_with, _ = best(lambda: postprocess_tile(maps, work), repeat)
    n = len(found)  # type: ignore[arg-type]
    print(f"{name}: {size}² tile, {n} nuclei")
    print(f"  post-processing without measurements {t_post:7.3f} s")
    print(f"  stain measurements (8 columns)       {t_stain:7.3f} s  {100 * t_stain / t_post:5.1f} %")
    print(f"  shape measurements (7 columns)       {t_shape:7.3f} s  {100 * t_shape / t_post:5.1f} %")
    print(f"  measurements in all                  {t_stain + t_shape:7.3f} s  {100 * (t_stain + t_shape) / t_post:5.1f} %  (goal <= 20 %)")
    print(f"  (post-processing with the stain measurements, timed whole: {t_with:.3f} s)")
    maps_only = npz_bytes(prob=maps.prob, hv=maps.hv)
    with_rgb = npz_bytes(prob=maps.prob, hv=maps.hv, rgb=maps.rgb)  # type: ignore[arg-type]
    full_rgb = npz_bytes(prob=maps.prob, hv=maps.hv, rgb=rgb)
    print(f"  cache entry {maps_only / 1e6:.1f} MB without RGB, {with_rgb / 1e6:.1f} MB with it "
          f"(+{100 * (with_rgb / maps_only - 1):.0f} %; the whole RGB would be +{100 * (full_rgb / maps_only - 1):.0f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    model = load_default_model("cpu")

    def predictor_for(stain: str) -> Predictor:
        return Predictor(model, PredictOptions(stain=stain, precision="fp32"))  # type: ignore[arg-type]

    bench("H&E", he_tile(args.shared, args.size), "he", predictor_for, args.repeat)
    bench("IHC", ihc_tile(args.shared, args.size), "ihc_dab", predictor_for, args.repeat)


if __name__ == "__main__":
    main()
