"""Memory and kernel time of one CPU forward pass, per tile side and precision: what ``memory_gb`` rests on.

    python benchmarks/bench_memory.py [--sides 1440 2048 2208] [--precision auto] [--repeats 3]

Each side runs in a fresh process (peak RSS is per process): the embedded model, ``--repeats``
forwards of a random tile of ``side``² through the product's ``Predictor``, with the glibc heap tuning
(the default) and without it (``NAPARI_HOVERFAST_NO_MALLOPT=1``). Prints seconds per forward, the
kernel's share of CPU time, minor page faults, peak RSS and bytes per input pixel, next to
``speed.CPU_FORWARD_BYTES_PER_PIXEL`` and the tile that ``tile_for_memory`` picks for the default budget. Never
asserts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
from napari_hoverfast.core.default_model import load_default_model
from napari_hoverfast.core.predict import PredictOptions, Predictor
side, repeats, precision = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
predictor = Predictor(load_default_model("cpu"), PredictOptions(precision=precision))
image = np.random.default_rng(0).uniform(0, 1, (1, side, side, 3)).astype(np.float32)
predictor(image[:, :256, :256])
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(repeats):
    predictor(image)
r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
print(json.dumps({"precision": predictor.precision, "wall": (t1 - t0) / repeats, "user": r1.ru_utime - r0.ru_utime,
                  "sys": r1.ru_stime - r0.ru_stime, "faults": (r1.ru_minflt - r0.ru_minflt) / repeats,
                  "peak": r1.ru_maxrss * 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[1440, 2048, 2208])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from napari_hoverfast.core.run_types import RunOptions
    from napari_hoverfast.core.speed import CPU_FORWARD_BYTES_PER_PIXEL, tile_for_memory

    print("| input | precision | heap tuning | s / forward | kernel / CPU time | minor faults / forward | peak RSS | bytes / input px |")
    print("|---|---|---|---|---|---|---|---|")
    used = None
    for side in args.sides:
        for tuned in (True, False):
            env = dict(os.environ)
            env.pop("NAPARI_HOVERFAST_NO_MALLOPT", None)
            if not tuned:
                env["NAPARI_HOVERFAST_NO_MALLOPT"] = "1"
            out = subprocess.run([sys.executable, "-c", CHILD, str(side), str(args.repeats), args.precision],
                                 capture_output=True, text=True, env=env, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            used = r["precision"]
            share = r["sys"] / (r["user"] + r["sys"])
            print(f"| {side}² | {used} | {'on' if tuned else 'off'} | {r['wall']:.2f} | {100 * share:.1f} % "
                  f"| {r['faults']:,.0f} | {r['peak'] / 1e9:.2f} GB | {r['peak'] / side**2:,.0f} |", flush=True)
    if used is not None:
        budget = RunOptions().memory_gb
        print(f"\nspeed.CPU_FORWARD_BYTES_PER_PIXEL[{used!r}] = {CPU_FORWARD_BYTES_PER_PIXEL[used]}; "
              f"tile_for_memory(2048, 160, {used!r}, {budget:g} GB) = {tile_for_memory(2048, 160, used, budget)} px")


if __name__ == "__main__":
    main()
