"""Does ``--compile`` (``torch.compile``) pay? Forward time per tile, eager against compiled, and the
number of tiles after which the compile time is won back.

    python benchmarks/bench_compile.py [--sides 1152 2208] [--repeats 5] [--precision auto]

For each input side (2208 = the default 2048 px cell plus 80 px of context a side), in one process:
the compiled network's first call (the compile), then ``--repeats`` alternating eager and compiled
forwards of the same tile through the product's ``Predictor``; prints medians, their ratio and the
break-even ``compile time / (eager − compiled)`` in tiles. A 40× whole slide is about 750 default tiles
(3,000 of 1024²). Never asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from napari_hoverfast.core.default_model import load_default_model
from napari_hoverfast.core.predict import PredictOptions, Predictor


def seconds(predictor: Predictor, images: np.ndarray) -> float:
    start = time.perf_counter()
    predictor(images)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[1152, 2208])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    model = load_default_model("cpu")
    print("| input | precision | compile (first call) | eager | compiled | compiled / eager | break-even |")
    print("|---|---|---|---|---|---|---|")
    for side in args.sides:
        images = np.random.default_rng(0).random((1, side, side, 3), dtype=np.float32)
        eager = Predictor(model, PredictOptions(precision=args.precision))
        compiled = Predictor(model, PredictOptions(precision=args.precision, compile=True))
        seconds(eager, images)  # warm-up
        first = seconds(compiled, images)
        e, c = [], []
        for _ in range(args.repeats):
            e.append(seconds(eager, images))
            c.append(seconds(compiled, images))
        me, mc = statistics.median(e), statistics.median(c)
        gain = me - mc
        even = f"{first / gain:.0f} tiles" if gain > 0 else "never"
        print(f"| {side}² | {eager.precision} | {first:.1f} s | {me:.2f} s | {mc:.2f} s | {mc / me:.2f} | {even} |")


if __name__ == "__main__":
    main()
