"""ROI speed against upstream HoverFast, side by side: whole processes, same weights, same machine.

    python benchmarks/bench_upstream.py --upstream $U/venv/bin/HoverFast [--repeat 2] [--sizes 1024 2048 4096]

Upstream is installed in its own environment as ``../shared/upstream/README.md`` says (its CPU patch
keeps fp32); it runs the embedded model saved in fp32. Ours runs ``napari-hoverfast segment`` with
its defaults (precision ``auto``: bf16 on CPUs with native bf16, else fp32) and, for reference, with
``--precision fp32``. Runs alternate (ours, upstream, ours fp32) ``--repeat`` times; the medians are
printed with peak memory and the ratio upstream / ours. Inputs: ``tcga_tile.png`` (1024²) and
mosaics of real MoNuSeg tissue (2048², 4096²). Upstream pads an ROI once and needs ~4.5 GB per
megapixel on the CPU; a size it cannot fit in this machine's memory is reported, not run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from skimage import io

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _timed import Timed, timed  # noqa: E402
from bench_fidelity import fp32_checkpoint, mosaic  # noqa: E402

SHARED = HERE.parent.parent / "shared"
#: Upstream's measured peak per pixel of ROI, with margin: 18.7 GB for 2048² and 5.8 GB for 1024² with a
#: depth-3 / wf-4 model (HoverFast's own layout), the hungriest measured; the embedded depth-4 / wf-3
#: model needs about 2.7 GB per megapixel (11.1 GB for 2048²). Only decides which sizes are skipped.
UPSTREAM_GB_PER_MPX = 4.6


def total_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def median(runs: list[Timed], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", default=None, help="upstream's HoverFast executable (its own venv)")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_upstream_"))
    model = work / "default_fp32.pth"
    fp32_checkpoint(model)
    memory = total_memory_gb()
    print(f"{os.cpu_count()} cores, {memory:.0f} GB; ours: {sys.executable} -m napari_hoverfast.cli segment")
    print("| ROI | ours (auto) | ours fp32 | upstream | upstream / ours | upstream / ours fp32 | peak ours / upstream |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        image = work / f"roi_{size}.png"
        if size == 1024:
            image = args.shared / "data" / "tcga_tile.png"
        else:
            io.imsave(image, mosaic(args.shared, size) if size <= 3000 else _big_mosaic(args.shared, size), check_contrast=False)
        ours_cmd = [sys.executable, "-m", "napari_hoverfast.cli", "segment", str(image), "-o", str(work / f"o{size}.geojson"), "--mpp", "0.25"]
        runs: dict[str, list[Timed]] = {"ours": [], "fp32": [], "upstream": []}
        fits = size * size / 1e6 * UPSTREAM_GB_PER_MPX < 0.9 * memory
        for _ in range(args.repeat):
            runs["ours"].append(timed(ours_cmd))
            if args.upstream and fits:
                out = work / f"up{size}"
                runs["upstream"].append(timed([args.upstream, "infer_roi", str(image), "-m", str(model), "-o", str(out), "-s", "80"], cwd=work))
            runs["fp32"].append(timed([*ours_cmd, "--precision", "fp32"]))
        ours, fp32 = median(runs["ours"], "wall"), median(runs["fp32"], "wall")
        peak = median(runs["ours"], "peak_gb")
        if runs["upstream"]:
            up, up_peak = median(runs["upstream"], "wall"), median(runs["upstream"], "peak_gb")
            print(f"| {size}² | {ours:.1f} s, {peak:.1f} GB | {fp32:.1f} s | {up:.1f} s, {up_peak:.1f} GB | "
                  f"×{up / ours:.2f} | ×{up / fp32:.2f} | {peak / up_peak:.2f} |")
        else:
            why = "not installed (--upstream)" if not args.upstream else (
                f"not run: needs ~{size * size / 1e6 * UPSTREAM_GB_PER_MPX:.0f} GB, this machine has {memory:.0f}")
            print(f"| {size}² | {ours:.1f} s, {peak:.1f} GB | {fp32:.1f} s | {why} | | | |")


def _big_mosaic(shared: Path, size: int):
    """A ``size``² mosaic of the 2048² MoNuSeg mosaic and its mirror images (real tissue throughout)."""
    import numpy as np

    base = mosaic(shared, 2048)
    row = np.concatenate([base, base[:, ::-1]], axis=1)
    block = np.concatenate([row, row[::-1]], axis=0)
    reps = -(-size // block.shape[0])
    return np.ascontiguousarray(np.tile(block, (reps, reps, 1))[:size, :size])


if __name__ == "__main__":
    main()
