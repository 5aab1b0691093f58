"""Two models' run time on the same slide region, in the same process, alternating: the ratio.

    python benchmarks/bench_models.py [--candidate benchmarks/models/stage9_fp16.pth] [--baseline default]
        [--slide ../shared/data/CMU-1-Small-Region.svs] [--size 1400] [--repeats 2]

A deeper network reaches farther, so its tiles carry wider margins (``TilingOptions.resolved``
from the model's padding reach, as ``fit_tiles_to_memory`` plans every run) but may cost less per pixel (fewer channels at full resolution):
only the whole run, tiling included, says which wins. Prints the best of ``--repeats`` per model
and their ratio; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from napari_hoverfast.core.default_model import load_model
from napari_hoverfast.core.pipeline import RunOptions, run_to_end, segment_slide
from napari_hoverfast.core.run_types import fit_tiles_to_memory
from napari_hoverfast.core.slide import Slide
from napari_hoverfast.core.tiling import Box

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", default=str(HERE / "models" / "stage9_fp16.pth"))
    parser.add_argument("--baseline", default="default", help="checkpoint, or 'default' for the embedded model")
    parser.add_argument("--slide", type=Path, default=HERE.parent.parent / "shared" / "data" / "CMU-1-Small-Region.svs")
    parser.add_argument("--size", type=int, default=1400, help="square region at the slide's own resolution (px)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    models = {name: load_model(None if path == "default" else Path(path), device="cpu")
              for name, path in (("baseline", args.baseline), ("candidate", args.candidate))}
    region = Box(0, 0, args.size, args.size)
    options = RunOptions(workers=0)
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, model in models.items():
            with Slide(args.slide) as slide:
                started = time.perf_counter()
                result = run_to_end(segment_slide(slide, model, [region], options))
                seconds = time.perf_counter() - started
            best[name] = min(best.get(name, seconds), seconds)
            tiling = fit_tiles_to_memory(options, model).tiling  # the tiling the run planned with
            print(f"{name}: {model.describe()}; {seconds:.1f} s, {len(result.nuclei)} nuclei, {len(result.tiles)} tiles, "
                  f"overlap {tiling.overlap_px} px", flush=True)
    print(f"candidate / baseline time, best of {args.repeats}: {best['candidate'] / best['baseline']:.2f}")


if __name__ == "__main__":
    main()
