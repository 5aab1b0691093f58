"""Engine speed: per-tile seconds for read, forward and post-processing, and the pipelined run
against the same stages run one after another, in the same process.

    python benchmarks/bench_engine.py [--image ../shared/data/tcga_tile.png]
        [--model ../shared/reference/ckpt_A.pth] [--tile 512] [--workers N] [--precision auto]

Prints numbers; asserts nothing. The image is cut into overlapping tiles (``--tile``; 512 gives
3×3 tiles of the 1024² tile) so there is something to overlap.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from napari_hoverfast.core.model import load_checkpoint
from napari_hoverfast.core.pipeline import (
    RunOptions,
    plan_run,
    run_to_end,
    segment_slide,
    working_geometry,
)
from napari_hoverfast.core.predict import PredictOptions, Predictor, prepare
from napari_hoverfast.core.slide import Slide
from napari_hoverfast.core.stages import TileWork, postprocess_tile, predict_batch
from napari_hoverfast.core.tiling import Box, TilingOptions, post_window

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"


def sequential(slide: Slide, model, region: Box, options: RunOptions) -> tuple[int, dict[str, float], float]:
    """Read, predict and post-process each tile in turn on one thread: the baseline."""
    geometry = working_geometry(slide.mpp)
    tiling = options.tiling.resolved(model.config.padding_reach)
    tiles = plan_run(slide, [region], geometry, RunOptions(tiling=tiling))
    predictor = Predictor(model, PredictOptions(stain=options.stain, precision=options.precision))
    post = options.postprocess(geometry.work_mpp)
    bounds = Box(0, 0, *slide.dimensions)
    times = {"read": 0.0, "forward": 0.0, "postprocess": 0.0}
    count = 0
    start = time.perf_counter()
    for spec in tiles:
        t0 = time.perf_counter()
        box = spec.input.scaled(1.0 / geometry.scale)
        pixels = slide.read_region(box.x, box.y, box.w, box.h, mpp=geometry.work_mpp, pad=True)
        images = prepare(pixels[None], options.stain)
        t1 = time.perf_counter()
        window = post_window(spec, tiling, bounds.scaled(geometry.scale))
        (maps,) = predict_batch(predictor, images, [spec], [window])
        t2 = time.perf_counter()
        polygons = postprocess_tile(maps, TileWork(spec, window, geometry.scale, post, (), bounds)).polygons
        t3 = time.perf_counter()
        times["read"] += t1 - t0
        times["forward"] += t2 - t1
        times["postprocess"] += t3 - t2
        count += len(polygons)
    return count, times, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=SHARED / "data" / "tcga_tile.png")
    parser.add_argument("--model", type=Path, default=SHARED / "reference" / "ckpt_A.pth")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--workers", type=int, default=None, help="post-processing workers (default: the core plan)")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    model = load_checkpoint(args.model, device="cpu")
    options = RunOptions(tiling=TilingOptions(tile=args.tile), workers=args.workers, precision=args.precision)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model: {model.describe()}")
    with Slide(args.image, mpp=0.25) as slide:
        region = Box(0, 0, *slide.dimensions)
        # warm-up (allocator, oneDNN kernels) so neither run pays it
        run_to_end(segment_slide(slide, model, [Box(0, 0, 256, 256)], RunOptions(workers=0)))
        n_seq, times, seq_s = sequential(slide, model, region, options)
        n_tiles = len(result_tiles := plan_run(slide, [region], working_geometry(0.25),
                                               RunOptions(tiling=options.tiling.resolved(model.config.padding_reach))))
        result = run_to_end(segment_slide(slide, model, [region], options))
    print(f"{n_tiles} tiles of {result_tiles[0].input.w}² over {args.image.name}")
    for stage, seconds in times.items():
        print(f"  {stage:12s} {seconds / n_tiles:7.3f} s/tile (sequential)")
    print(f"sequential: {seq_s:7.2f} s, {n_seq} nuclei")
    from napari_hoverfast.core.pipeline import _default_workers

    used = args.workers if args.workers is not None else _default_workers(n_tiles, "cpu")
    print(f"pipelined : {result.seconds:7.2f} s, {len(result.nuclei)} nuclei (workers={used}, "
          f"{'given' if args.workers is not None else 'the core plan'})")
    print(f"pipelined / sequential = {result.seconds / seq_s:.2f}  (speed-up ×{seq_s / result.seconds:.2f}; "
          f"bound by the slowest stage: forward {times['forward'] / seq_s:.0%} of sequential time)")
    if n_seq != len(result.nuclei):  # the run drops seam copies between neighbouring tiles; this loop does not
        print(f"note: nucleus counts differ ({n_seq} sequential vs {len(result.nuclei)} pipelined)")


if __name__ == "__main__":
    main()
