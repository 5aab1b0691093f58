"""Whole-slide runs: cores kept busy, little system time, peak memory small and flat in slide size.

    python benchmarks/bench_wholeslide.py [--sizes 6144 10240] [--shared ../shared]

Writes synthetic 40× pyramidal TIFFs (0.25 µm/px) made of real tissue — the 2048² MoNuSeg mosaic
and its mirror images, in islands on glass — then runs ``napari-hoverfast segment`` on the whole
slide (tissue found automatically) as a whole process under ``/usr/bin/time -v`` and prints CPU use
(200 % = two cores all along), the share of CPU time spent in the kernel, and the peak memory of
each size with their ratio. Set ``NAPARI_HOVERFAST_NO_MALLOPT=1`` to see the run without the glibc
heap tuning (``core/speed.py``); ``--compare-malloc`` runs both, alternating. ``--compare-compile``
runs each slide with and without ``--compile`` (``torch.compile``, its compile time included) and
prints the wall-time ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _pyramids import glass, write_pyramid  # noqa: E402
from _timed import timed  # noqa: E402
from bench_fidelity import mosaic  # noqa: E402

SHARED = HERE.parent.parent / "shared"


def synthetic_slide(path: Path, size: int, shared: Path) -> tuple[Path, float]:
    """A ``size``² slide: islands of real tissue (2048² blocks, mirrored) on glass; returns its tissue fraction."""
    base = mosaic(shared, 2048)
    variants = [base, base[:, ::-1], base[::-1], base[::-1, ::-1]]
    image = glass(size, size, seed=1)
    step = 2560  # 2048 of tissue, 512 of glass between islands
    k = 0
    for y in range(256, size - 2048 + 1, step):
        for x in range(256, size - 2048 + 1, step):
            image[y : y + 2048, x : x + 2048] = variants[k % 4]
            k += 1
    write_pyramid(path, image, levels=4, tile=256, mpp=0.25, layout="subifds")
    return path, k * 2048 * 2048 / size**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[6144, 10240])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--compare-malloc", action="store_true")
    parser.add_argument("--compare-compile", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_wholeslide_"))
    print(f"{os.cpu_count()} cores; napari-hoverfast segment SLIDE (whole slide, defaults)")
    print("| slide | tissue | variant | wall | CPU use | system / CPU time | peak memory |")
    print("|---|---|---|---|---|---|---|")
    peaks = []
    for size in args.sizes:
        slide, tissue = synthetic_slide(work / f"slide_{size}.tif", size, args.shared)
        variants: dict[str, tuple[dict[str, str], list[str]]] = {"default": ({}, [])}
        if args.compare_malloc:
            variants["no mallopt"] = ({"NAPARI_HOVERFAST_NO_MALLOPT": "1"}, [])
        if args.compare_compile:
            variants["--compile"] = ({}, ["--compile"])
        walls = {}
        for name, (extra_env, extra_args) in variants.items():
            env = {**os.environ, **extra_env}
            command = [sys.executable, "-m", "napari_hoverfast.cli", "segment", str(slide), "-o", str(work / f"n{size}.geojson"), *extra_args]
            t = timed(command, env=env)
            walls[name] = t.wall
            if t.returncode:
                raise SystemExit(f"segment failed on {slide} (exit {t.returncode})")
            print(f"| {size}² | {tissue:.0%} | {name} | {t.wall:.0f} s | {t.cpu_percent:.0f} % | {t.system_share:.1%} | {t.peak_gb:.2f} GB |")
            if name == "default":
                peaks.append(t.peak_gb)
        for name in walls:
            if name != "default":
                print(f"{size}²: wall {name} / default = {walls[name] / walls['default']:.2f}")
    if len(peaks) > 1:
        print(f"peak memory, largest / smallest slide: {peaks[-1] / peaks[0]:.2f} "
              f"({args.sizes[-1] ** 2 / args.sizes[0] ** 2:.1f}× the pixels)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
