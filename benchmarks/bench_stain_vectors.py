"""How much the stain measurements move with vectors estimated from the image (Macenko) instead of
scikit-image's, on real tiles.

    python benchmarks/bench_stain_vectors.py [--shared ../shared] [--mpp 0.25]

Each tile is segmented once (embedded model, tile cache in a temporary folder), then re-measured
from the cache with ``stain_vectors="estimated"``: the same nuclei, only the unmixing differs. Per
tile it prints the estimated vectors' angles to scikit-image's, and per nucleus the haematoxylin
OD mean (and the second stain's) under both: medians, the median change, the correlation; for IHC
tiles also the share of nuclei at or above 0.2 DAB OD mean (QuPath's 1+). ``docs/MEASUREMENTS.md``
reports its output.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_hoverfast.core.cache import TileCache
from napari_hoverfast.core.job import SlideJob, run_slide_job
from napari_hoverfast.core.measurements import STAINS, stain_column
from napari_hoverfast.core.pipeline import RunOptions, run_to_end

HERE = Path(__file__).resolve().parent


def tiles(shared: Path) -> list[tuple[Path, str]]:
    data = shared / "data"
    out = [(data / "tcga_tile.png", "he")]
    out += [(p, "he") for p in sorted((data / "nuclei" / "monuseg_train" / "images").glob("*.png"))[:2]]
    out += [(data / "ihc_roi.png", "ihc_dab")]
    out += [(p, "ihc_dab") for p in sorted((data / "nuclei" / "ihc_ki67" / "images").glob("*.png"))]
    return out


def compare(image: Path, stain: str, mpp: float, cache: TileCache) -> str:
    def run(vectors: str):  # type: ignore[no-untyped-def]
        options = RunOptions(stain=stain, workers=0, stain_vectors=vectors)  # type: ignore[arg-type]
        return run_to_end(run_slide_job(SlideJob(slide=str(image), mpp=mpp, options=options), cache=cache)).run

    default, estimated = run("default"), run("estimated")
    assert estimated.tiles_cached == len(estimated.tiles) and len(default.nuclei) == len(estimated.nuclei)
    used = estimated.parameters["stain_vectors_used"]
    a, b = default.nuclei.measurements(), estimated.nuclei.measurements()
    parts = [f"{image.name} ({stain}, {len(default.nuclei)} nuclei; vectors {used['deviation_deg'][0]:.1f}° / "
             f"{used['deviation_deg'][1]:.1f}° from scikit-image's, {used['angle_deg']:.1f}° apart)"]
    for name in STAINS[stain]:
        col = stain_column(name, "mean")
        x, y = a[col], b[col]
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        rel = np.median(np.abs(y - x) / np.maximum(np.abs(x), 1e-3)) * 100
        parts.append(f"    {name} OD mean: median {np.median(x):.3f} -> {np.median(y):.3f}, median |change| "
                     f"{np.median(np.abs(y - x)):.3f} ({rel:.0f} %), r = {np.corrcoef(x, y)[0, 1]:.3f}")
    if stain == "ihc_dab":
        col = stain_column("DAB", "mean")
        parts.append(f"    DAB OD mean >= 0.2: {np.mean(a[col] >= 0.2):.1%} -> {np.mean(b[col] >= 0.2):.1%}")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--mpp", type=float, default=0.25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cache = TileCache(Path(folder))
        for image, stain in tiles(args.shared):
            start = time.perf_counter()
            print(compare(image, stain, args.mpp, cache) + f"  [{time.perf_counter() - start:.0f} s]")


if __name__ == "__main__":
    main()
