"""Which of the network's two outputs limits PQ: each map swapped for the truth, on chosen tiles.

    python benchmarks/diagnose_maps.py [--model PTH] [--shared ../shared]
        [--split train validation held-out] [--sets monuseg_train consep_train] [--per-set 4]
        [--marker-threshold 0.5]

For each tile, the network's nucleus probability and H/V maps go through the product's
post-processing (marker threshold of the model, minimum area, shape rule) four times: as predicted;
with the true nucleus mask in place of the probability; with the true H/V maps (built from the
labels as in training) in place of the predicted ones; and with both true (the ceiling of the
post-processing itself). A large gain from the true mask means the foreground is what to improve
(missed and false nuclei, wrong extents); a large gain from the true maps means the separation of
touching nuclei. ``--split train`` scores tiles the model was trained on: when those score about as
low as the held-out ones, the model underfits (capacity or training length), not overfits.

The splits are those of ``docs/train_default.sh`` (``bench_accuracy.HOLDOUT``,
``tune_postprocess.VALIDATION``); the first ``--per-set`` tiles by name of each split are used.
A diagnosis, not a selection: nothing here picks a model or a threshold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from skimage import io

from napari_hoverfast.core.default_model import load_model
from napari_hoverfast.core.postprocess import PostprocessOptions
from napari_hoverfast.core.predict import resolve_precision
from napari_hoverfast.core.targets import hv_maps
from napari_hoverfast.core.train_select import maps_pq, tile_maps

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_accuracy import HOLDOUT  # noqa: E402
from tune_postprocess import VALIDATION  # noqa: E402

VARIANTS = ("predicted", "true mask", "true H/V", "both true")


def split_names(folder: Path, dataset: str, split: str) -> list[str]:
    """Tile names of one split of a data set, sorted."""
    if split == "held-out":
        return sorted(HOLDOUT[dataset])
    if split == "validation":
        return sorted(VALIDATION.get(dataset, []))
    taken = set(HOLDOUT[dataset]) | set(VALIDATION.get(dataset, []))
    return sorted(p.stem for p in (folder / "images").glob("*.png") if p.stem not in taken)


def tile_variants(prob: np.ndarray, hv: np.ndarray, truth: np.ndarray, options: PostprocessOptions) -> list[float]:
    """PQ of the four (mask, maps) combinations of one tile, in ``VARIANTS`` order."""
    true_mask = (truth > 0).astype(np.float32)
    true_hv = hv_maps(truth).astype(np.float32)
    pairs = ((prob, hv), (true_mask, hv), (prob, true_hv), (true_mask, true_hv))
    return [maps_pq(m, h, truth, options) for m, h in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the embedded model)")
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--split", nargs="+", default=["train", "held-out"], choices=["train", "validation", "held-out"])
    parser.add_argument("--sets", nargs="+", default=["monuseg_train", "consep_train"], choices=list(HOLDOUT))
    parser.add_argument("--per-set", type=int, default=4, help="tiles per set and split (first by name)")
    parser.add_argument("--marker-threshold", type=float, default=None,
                        help="watershed marker threshold (default: the checkpoint's own, upstream's 0.4 when it records none)")
    args = parser.parse_args()
    model = load_model(args.model, device="cpu")
    marker = model.marker_threshold if args.marker_threshold is None else args.marker_threshold
    options = PostprocessOptions(mpp=0.25, marker_threshold=marker)
    bf16 = resolve_precision("auto", model.device.type) == "bf16"
    multiple = model.config.multiple
    print(f"model: {model.source} ({model.describe()}), marker threshold {marker}, bf16 {bf16}")
    print("| set | split | tile | " + " | ".join(VARIANTS) + " |\n|---|---|---|---|---|---|---|")
    means: dict[tuple[str, str], list[list[float]]] = {}
    for dataset in args.sets:
        folder = args.shared / "data" / "nuclei" / dataset
        for split in args.split:
            for name in split_names(folder, dataset, split)[: args.per_set]:
                image = io.imread(folder / "images" / f"{name}.png")[..., :3]
                truth = io.imread(folder / "masks" / f"{name}.png").astype(np.int64)
                with torch.inference_mode():
                    prob, hv = tile_maps(model.net, image, multiple, model.device, bf16)
                pqs = tile_variants(prob, hv, truth, options)
                means.setdefault((dataset, split), []).append(pqs)
                print(f"| {dataset} | {split} | {name} | " + " | ".join(f"{v:.3f}" for v in pqs) + " |", flush=True)
    print("\n| set | split | tiles | " + " | ".join(VARIANTS) + " |\n|---|---|---|---|---|---|---|")
    for (dataset, split), rows in means.items():
        print(f"| {dataset} | {split} | {len(rows)} | " + " | ".join(f"{v:.3f}" for v in np.mean(rows, axis=0)) + " |")


if __name__ == "__main__":
    main()
