"""GPU throughput: model-only tiles/s of 1024², and a synthetic 40× whole slide end to end.

    python benchmarks/bench_gpu.py [--device cuda] [--slide-size 40960] [--batch 0] [--seconds 20]

Model-only: random 1024² batches through the loaded network under fp16 autocast, channels-last,
after a warm-up; tiles/s over ``--seconds``. End to end: a synthetic pyramidal TIFF at 0.25 µm/px
made of real tissue blocks (the shared MoNuSeg mosaic, mirrored) — about 3,000 tiles of 1024² at
the default 40960² — segmented whole by ``segment_slide`` with default options (batch size from
free memory, parallel tile decoding, post-processing workers from the core plan). The GPU's busy
fraction is sampled from NVML (``torch.cuda.utilization``) every 0.2 s during the run. Targets for
an H100-class GPU with 16 cores: ≥ 300 model-only tiles/s, a 40× slide in ≤ 60 s. Prints numbers;
asserts nothing. On a machine without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SHARED = HERE.parent.parent / "shared"


def model_only(model, batch: int, seconds: float) -> float:
    from napari_hoverfast.core.predict import PredictOptions, Predictor

    predictor = Predictor(model, PredictOptions(precision="auto"))
    images = np.random.default_rng(0).random((batch, 1024, 1024, 3), dtype=np.float32)
    for _ in range(3):
        predictor(images)
    torch.cuda.synchronize()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predictor(images)
        done += batch
    torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def write_slide(path: Path, size: int, shared: Path) -> Path:
    """Real tissue tiled over the whole slide (a worst case: no glass to skip), written as a pyramid."""
    import tifffile
    from bench_fidelity import mosaic

    base = mosaic(shared, 2048)
    row = np.concatenate([base, base[:, ::-1]], axis=1)
    block = np.concatenate([row, row[::-1]], axis=0)  # 4096², seamless mirrors
    reps = -(-size // 4096)

    def tiles(level: int):
        step = 512
        f = 2**level
        small = block[::f, ::f]
        n = size // f
        for y in range(0, n, step):
            for x in range(0, n, step):
                yy, xx = np.arange(y, y + step) % small.shape[0], np.arange(x, x + step) % small.shape[1]
                yield small[np.ix_(yy, xx)]

    del reps
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        opts = {"tile": (512, 512), "compression": "jpeg", "photometric": "rgb", "compressionargs": {"level": 85}}
        tif.write(tiles(0), shape=(size, size, 3), dtype=np.uint8, subifds=3,
                  resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER", **opts)
        for level in (1, 2, 3):
            n = size // 2**level
            tif.write(tiles(level), shape=(n, n, 3), dtype=np.uint8, subfiletype=1,
                      resolution=(1e4 / (0.25 * 2**level),) * 2, resolutionunit="CENTIMETER", **opts)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--slide-size", type=int, default=40960)
    parser.add_argument("--batch", type=int, default=0, help="model-only batch (0: from free memory)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--shared", type=Path, default=SHARED)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing measured")
        return
    from napari_hoverfast.core.default_model import load_model
    from napari_hoverfast.core.pipeline import RunOptions, run_to_end, segment_slide
    from napari_hoverfast.core.slide import Slide
    from napari_hoverfast.core.speed import cuda_batch_size, usable_cores

    model = load_model(None, device=args.device)
    batch = args.batch or cuda_batch_size(model.device, 1184 * 1184)
    print(f"{torch.cuda.get_device_name(model.device)}, {usable_cores()} cores, torch {torch.__version__}; batch {batch}")
    print(f"model only: {model_only(model, batch, args.seconds):.0f} tiles/s of 1024² (fp16, channels-last)")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = write_slide(Path(tmp) / "slide.tif", args.slide_size, args.shared)
        print(f"synthetic {args.slide_size}² slide written in {time.perf_counter() - t0:.0f} s")
        busy: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    busy.append(torch.cuda.utilization(model.device))
                except Exception:  # no NVML: no busy fraction
                    return
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        with Slide(path) as slide:
            sampler.start()
            start = time.perf_counter()
            result = run_to_end(segment_slide(slide, model, None, RunOptions(tiling=__import__(
                "napari_hoverfast.core.tiling", fromlist=["TilingOptions"]).TilingOptions(tile=1024))))
            seconds = time.perf_counter() - start
            stop.set()
        n = len(result.tiles)
        print(f"end to end: {n} tiles of 1024² cells, {len(result.nuclei):,} nuclei in {seconds:.1f} s "
              f"({n / seconds:.0f} tiles/s); GPU busy {np.mean(busy) if busy else float('nan'):.0f} % of samples")
        print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))


if __name__ == "__main__":
    main()
