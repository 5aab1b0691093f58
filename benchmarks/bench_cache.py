"""The tile cache: what storing maps at reduced precision changes, and what resume and re-threshold save.

    python benchmarks/bench_cache.py [--shared ../shared] [--skip-baseline]

1. Precision. The cache (and every run) post-processes uint8 probability and float16 maps. On the
   shared tile and a 2048² mosaic of MoNuSeg tiles, prints how many nuclei the float32 maps give and
   how many of them the stored maps give back exactly (same polygon) or at IoU > 0.5.
2. A 4096² region at 40× (the real 20× Aperio scan's 2048² top-left corner, upsampled ×2 as the engine
   does): a fresh run without a cache (the baseline), a fresh run filling a cache, a re-threshold
   from that cache (minimum area 5 → 8 µm²), and a run cancelled at half way then resumed. Prints
   seconds and the ratios against the baseline, run in this process one after the other; the goals
   are a re-threshold at least 20× faster than a fresh run, and a resume costing at most 0.55 of one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import shapely

from napari_hoverfast.core.cache import TileCache, TileMaps
from napari_hoverfast.core.default_model import load_model
from napari_hoverfast.core.pipeline import (
    Progress,
    RunOptions,
    segment_slide,
)
from napari_hoverfast.core.postprocess import PostprocessOptions, segment
from napari_hoverfast.core.predict import PredictOptions, Predictor, prepare
from napari_hoverfast.core.slide import Slide
from napari_hoverfast.core.tiling import Box, TilingOptions, plan_tiles, post_window

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_fidelity import mosaic  # noqa: E402


def precision_check(model, image_path: Path) -> str:
    """Nuclei of one tile from float32 maps and from the stored (uint8 / float16) maps."""
    with Slide(image_path, mpp=0.25) as slide:
        tiling = TilingOptions().resolved(model.config.padding_reach)
        (spec,) = plan_tiles(Box(0, 0, *slide.dimensions), tiling)
        i = spec.input
        pixels = slide.read_region(i.x, i.y, i.w, i.h, pad=True)
        window = post_window(spec, tiling, Box(0, 0, *slide.dimensions))
    prob, hv = Predictor(model, PredictOptions(precision="fp32"))(prepare(pixels[None], "he"))
    rows = slice(window.y - i.y, window.y - i.y + window.h)
    cols = slice(window.x - i.x, window.x - i.x + window.w)
    prob, hv = prob[0, rows, cols], hv[0, :, rows, cols]
    options = PostprocessOptions(mpp=0.25)
    exact = np.array(segment(prob, hv, options=options), dtype=object)
    stored = np.array(segment(*TileMaps.from_float(prob, hv).as_float(), options=options), dtype=object)
    tree = shapely.STRtree(stored)
    a, b = tree.query(exact, predicate="intersects")
    iou = shapely.area(shapely.intersection(exact[a], stored[b])) / shapely.area(shapely.union(exact[a], stored[b]))
    matched = len(set(a[iou > 0.5].tolist()))
    same = len(set(a[shapely.equals_exact(exact[a], stored[b], tolerance=1e-6)].tolist()))
    size = TileMaps.from_float(prob, hv).nbytes / 1e6
    return (f"| {image_path.name} | {len(exact)} | {len(stored)} | {same / len(exact):.3f} | {matched / len(exact):.3f} | "
            f"{size:.1f} MB |")


def timed_run(slide, model, region, options, cache=None, cancel_after=None):
    cancel = threading.Event()
    run = segment_slide(slide, model, [region], options, cache=cache, cancel=cancel)
    start = time.perf_counter()
    while True:
        try:
            event = next(run)
        except StopIteration as stop:
            return stop.value, time.perf_counter() - start
        if cancel_after is not None and isinstance(event, Progress) and event.tiles_done >= cancel_after:
            cancel.set()
        del event  # NucleusBatch or Progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--skip-baseline", action="store_true", help="use the cache-filling run as the fresh run")
    args = parser.parse_args()
    model = load_model(None, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from skimage import io

        io.imsave(work / "mosaic_2048.png", mosaic(args.shared), check_contrast=False)
        print("| tile | nuclei (float32 maps) | nuclei (stored maps) | same polygon | matched IoU > 0.5 | stored size |")
        print("|---|---|---|---|---|---|")
        for image in (args.shared / "data" / "tcga_tile.png", work / "mosaic_2048.png"):
            print(precision_check(model, image), flush=True)

        region = Box(0, 0, 2048, 2048)
        options = RunOptions()
        with Slide(args.shared / "data" / "CMU-1-Small-Region.svs") as slide:
            print(f"\n{slide.name}: level-0 region {region.w}×{region.h} at {slide.mpp:.3f} µm/px, "
                  f"run at 40× ({region.w * 2}×{region.h * 2} px)", flush=True)
            rows = []
            if not args.skip_baseline:
                base, t_base = timed_run(slide, model, region, options)
                rows.append(("fresh, no cache (baseline)", t_base, len(base.nuclei), base.tiles_cached))
            cache = TileCache(work / "cache")
            fresh, t_fresh = timed_run(slide, model, region, options, cache)
            rows.append(("fresh, filling the cache", t_fresh, len(fresh.nuclei), fresh.tiles_cached))
            baseline = t_base if not args.skip_baseline else t_fresh
            retry, t_re = timed_run(slide, model, region, RunOptions(min_area_um2=8.0), cache)
            rows.append(("re-threshold from the cache (min area 8 µm²)", t_re, len(retry.nuclei), retry.tiles_cached))
            half = len(fresh.tiles) // 2
            cache2 = TileCache(work / "cache2")
            part, t_part = timed_run(slide, model, region, options, cache2, cancel_after=half)
            rows.append((f"cancelled after {len(part.tiles_done)} of {len(part.tiles)} tiles", t_part, len(part.nuclei), 0))
            resumed, t_resume = timed_run(slide, model, region, options, cache2)
            rows.append(("resumed from the cache", t_resume, len(resumed.nuclei), resumed.tiles_cached))
        print("| run | seconds | nuclei | tiles from the cache | seconds / fresh |\n|---|---|---|---|---|")
        for name, seconds, count, cached in rows:
            print(f"| {name} | {seconds:.1f} | {count} | {cached} | {seconds / baseline:.3f} |")
        same = shapely.equals_exact(np.asarray(resumed.nuclei.polygons), np.asarray(fresh.nuclei.polygons), tolerance=0).all() \
            if len(resumed.nuclei) == len(fresh.nuclei) else False
        print(f"\nre-threshold: {baseline / t_re:.1f}× faster than a fresh run (goal ≥ 20×); "
              f"resume: {t_resume / baseline:.2f} of a fresh run (goal ≤ 0.55); resumed nuclei identical to the "
              f"uninterrupted run's: {bool(same)}")


if __name__ == "__main__":
    main()
