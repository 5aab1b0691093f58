"""Post-processing thresholds against the validation images only (never the held-out ones).

    python benchmarks/tune_postprocess.py [--model PTH] [--shared ../shared]
        [--mask 0.4 0.5 0.6] [--marker 0.3 0.4 0.5 0.6]

The validation images are those ``docs/train_default.sh`` passes to ``--val`` (model selection), so a
threshold chosen here does not look at the held-out scores of ``bench_accuracy.py``. Each image goes
through the product path (``segment_slide``) once per setting, with a tile cache so the network runs
once per image and every other setting only re-thresholds the cached maps. Prints mean PQ per set
and over the sets (each set weighing the same) for every (mask, marker) pair.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np
from skimage import io

from napari_hoverfast.core.cache import TileCache
from napari_hoverfast.core.default_model import load_model
from napari_hoverfast.core.metrics import score
from napari_hoverfast.core.pipeline import RunOptions, run_to_end, segment_slide
from napari_hoverfast.core.slide import Slide
from napari_hoverfast.core.tiling import Box

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_accuracy import labels_from_polygons  # noqa: E402

VALIDATION = {
    "gbm40": ["gbm_03", "gbm_17", "gbm_31"],
    "monuseg_train": ["TCGA-E2-A1B5-01Z-00-DX1"],
    "consep_train": ["train_9", "train_19"],
    "tnbc": ["TNBC_07_1", "TNBC_07_2", "TNBC_07_3"],
    "dsb2018_he": ["15039b3acccc4257a1a442646a89b6e596b5eb4531637e6d8fa1c43203722c99", "4d4f254f3b8b4408d661df3735591554b2f6587ce1952928d619b48010d55467", "87ea72894f6534b28e740cc34cf5c9eb75d0d8902687fce5fcc08a92e9f41386", "bf4a61bb81589c9a67e3343408befd3e135af5e88b50c17f998f2131d24bc271"],  # from stage 4
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--mask", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    parser.add_argument("--marker", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6])
    args = parser.parse_args()
    model = load_model(args.model, device="cpu")
    grid = list(itertools.product(args.mask, args.marker))
    pq: dict[tuple[float, float], dict[str, list[float]]] = {g: {} for g in grid}
    with tempfile.TemporaryDirectory() as tmp:
        cache = TileCache(Path(tmp) / "cache")
        for dataset, names in VALIDATION.items():
            folder = args.shared / "data" / "nuclei" / dataset
            for name in names:
                image = io.imread(folder / "images" / f"{name}.png")[..., :3]
                truth = io.imread(folder / "masks" / f"{name}.png").astype(np.int64)
                path = Path(tmp) / f"{name}.png"
                io.imsave(path, image, check_contrast=False)
                with Slide(path, mpp=0.25) as slide:
                    for mask, marker in grid:
                        options = RunOptions(workers=0, mask_threshold=mask, marker_threshold=marker)
                        result = run_to_end(segment_slide(slide, model, [Box(0, 0, *slide.dimensions)], options, cache=cache))
                        pred = labels_from_polygons(result.nuclei.polygons, image.shape[:2])
                        pq[(mask, marker)].setdefault(dataset, []).append(score(truth, pred).pq)
    sets = list(VALIDATION)
    print("| mask | marker | " + " | ".join(sets) + " | mean of sets |")
    print("|---|---|" + "---|" * (len(sets) + 1))
    for (mask, marker), per in pq.items():
        means = [float(np.mean(per[s])) for s in sets]
        print(f"| {mask} | {marker} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {np.mean(means):.3f} |")


if __name__ == "__main__":
    main()
