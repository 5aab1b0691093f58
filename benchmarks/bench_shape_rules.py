"""Shape rules on held-out tiles: does dropping large, non-convex objects help more than it costs?

    python benchmarks/bench_shape_rules.py [--model PTH] [--shared ../shared]

Runs the model once per held-out image (the sets and names of ``bench_accuracy.py``) and scores the
nuclei with each candidate rule applied afterwards: a maximum area, a minimum solidity (area over
convex-hull area) for objects above an area, and both. Keratin, cornified layers and merged nuclei
come out as large objects of low solidity. Prints mean PQ per set for each rule, and on
``CMU-1-Small-Region.svs`` how many objects each rule leaves above 150 µm².
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import shapely
from skimage import io

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_accuracy import HOLDOUT, labels_from_polygons  # noqa: E402

from napari_hoverfast.core.default_model import load_model  # noqa: E402
from napari_hoverfast.core.metrics import score  # noqa: E402
from napari_hoverfast.core.pipeline import RunOptions, run_to_end, segment_slide  # noqa: E402
from napari_hoverfast.core.slide import Slide  # noqa: E402
from napari_hoverfast.core.tiling import Box  # noqa: E402

#: name → (max area µm² or None, (area above which solidity is checked, min solidity) or None)
RULES = {
    "none": (None, None),
    "max 200 µm²": (200.0, None),
    "max 300 µm²": (300.0, None),
    "solidity ≥ 0.8 above 100 µm²": (None, (100.0, 0.8)),
    "solidity ≥ 0.75 above 80 µm²": (None, (80.0, 0.75)),
    "solidity ≥ 0.7": (None, (0.0, 0.7)),
    "max 300 + solidity ≥ 0.8 above 100": (300.0, (100.0, 0.8)),
}


def keep(polygons: np.ndarray, mpp: float, rule: tuple) -> np.ndarray:
    max_area, solidity = rule
    area = shapely.area(polygons) * mpp * mpp
    ok = np.ones(len(polygons), bool)
    if max_area is not None:
        ok &= area <= max_area
    if solidity is not None:
        above, least = solidity
        solid = shapely.area(polygons) / np.maximum(shapely.area(shapely.convex_hull(polygons)), 1e-9)
        ok &= (area <= above) | (solid >= least)
    return ok


def run(model, path: Path, mpp: float | None) -> np.ndarray:
    with Slide(path, mpp=mpp) as slide:
        result = run_to_end(segment_slide(slide, model, None if mpp is None else [Box(0, 0, *slide.dimensions)],
                                          RunOptions(workers=0)))
    return np.asarray(result.nuclei.polygons, dtype=object)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    args = parser.parse_args()
    model = load_model(args.model, device="cpu")
    print(f"model: {model.source}")
    pq: dict[tuple[str, str], list[float]] = {}
    for dataset, names in HOLDOUT.items():
        for name in names:
            folder = args.shared / "data" / "nuclei" / dataset
            truth = io.imread(folder / "masks" / f"{name}.png").astype(np.int64)
            polygons = run(model, folder / "images" / f"{name}.png", 0.25)
            for rule_name, rule in RULES.items():
                kept = polygons[keep(polygons, 0.25, rule)] if len(polygons) else polygons
                pq.setdefault((dataset, rule_name), []).append(score(truth, labels_from_polygons(kept, truth.shape)).pq)
    svs = args.shared / "data" / "CMU-1-Small-Region.svs"
    with tempfile.TemporaryDirectory():
        cmu = run(model, svs, None)
    with Slide(svs) as slide:
        mpp = slide.mpp
    print("| rule | " + " | ".join(HOLDOUT) + " | mean | CMU-1 objects > 150 µm² |")
    print("|---|" + "---|" * (len(HOLDOUT) + 2))
    for rule_name, rule in RULES.items():
        means = [float(np.mean(pq[(d, rule_name)])) for d in HOLDOUT]
        kept = cmu[keep(cmu, mpp, rule)]
        big = int((shapely.area(kept) * mpp * mpp > 150).sum())
        print(f"| {rule_name} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {np.mean(means):.3f} | {big} of {len(kept)} |")


if __name__ == "__main__":
    main()
