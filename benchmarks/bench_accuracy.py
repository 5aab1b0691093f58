"""Accuracy of a model on held-out annotated tiles: detection F1 (IoU > 0.5), PQ and pixel Dice, per image.

    python benchmarks/bench_accuracy.py [--model PTH] [--shared ../shared] [--precision fp32 bf16]
        [--sets gbm40 consep_train] [--skip-20x] [--tta] [--marker-threshold 0.5]

With two precisions, every image is scored with both and the set means are printed side by side
(bf16 autocast is kept as the CPU default only within 0.005 PQ of fp32). ``--tta`` scores each
precision again with test-time flips (``RunOptions.tta``) and prints the gap the same way. A
checkpoint from ``train`` records no marker threshold, so it runs with upstream's 0.4 unless
``--marker-threshold`` gives the one it would ship with (``scripts/embed_model.py`` records it).

Runs the whole product path (slide reader → tiled inference → watershed → polygons) on each held-out
tile at 40×, and again at a simulated 20× (the tile downsampled ×2 and given mpp 0.5, so the engine
upsamples it back as it does for real 20× scans). Also reports, for the 4 hand-drawn nuclei of
``tcga_tile.geojson``, the IoU of the best-matching predicted nucleus. The held-out names are those
excluded in ``docs/train_default.sh``: never used for training or model selection.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from skimage import io
from skimage.transform import resize

from napari_hoverfast.core.default_model import load_model
from napari_hoverfast.core.geojson import read_geojson
from napari_hoverfast.core.metrics import Scores, best_match_iou, rasterize, score
from napari_hoverfast.core.pipeline import RunOptions, run_to_end, segment_slide
from napari_hoverfast.core.slide import Slide
from napari_hoverfast.core.tiling import Box

HERE = Path(__file__).resolve().parent
HOLDOUT = {
    "gbm40": ["gbm_06", "gbm_13", "gbm_20", "gbm_27", "gbm_34", "gbm_40"],
    "monuseg_train": ["TCGA-21-5786-01Z-00-DX1", "TCGA-AR-A1AS-01Z-00-DX1", "TCGA-B0-5711-01Z-00-DX1"],
    "consep_train": ["train_5", "train_14", "train_23"],
    "tnbc": ["TNBC_10_1", "TNBC_10_2", "TNBC_10_3", "TNBC_10_4", "TNBC_11_1", "TNBC_11_2", "TNBC_11_3"],  # by patient
    # every 14th tile by name (docs/train_default.sh); magnification not recorded, scored as 40×
    "dsb2018_he": ["0bf33d3db4282d918ec3da7112d0bf0427d4eafe74b3ee0bb419770eefe8d7d6", "24a20f2a529cede5695df2422a3986505b5826bb10b10781d6db2074cf3de7b3", "4590d7d47f521df62f3bcb0bf74d1bca861d94ade614d8afc912d1009d607b94", "5d75a63972ef643efd7c42f20668b167f2af43635d6263962d84e62e7609ab51", "79fe419488ba98494e3baa35c6fef9662eda1efe325d0ab0ac002f5383245d96", "a08166d91d2cca263d2dd52764dc25c9c582b7a5ece2b802749fa4be33187c49", "b214800de5ed4cc558f44d569495970f93c8c047f8e464c51d4bd5c276118423", "ebc18868864ad075548cc1784f4f9a237bb98335f9645ee727dac8332a3e3716"],
}


def labels_from_polygons(polygons, shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    out = np.zeros(shape, np.int32)
    for i, polygon in enumerate(polygons, start=1):
        if scale != 1.0:
            from shapely import affinity

            polygon = affinity.scale(polygon, scale, scale, origin=(0, 0))
        out[rasterize(polygon, shape)] = i
    return out


def predict_labels(model, image: np.ndarray, mpp: float, options: RunOptions) -> tuple[np.ndarray, int]:
    """Run the product pipeline on an in-memory image written to a temporary PNG."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tile.png"
        io.imsave(path, image, check_contrast=False)
        with Slide(path, mpp=mpp) as slide:
            result = run_to_end(segment_slide(slide, model, [Box(0, 0, *slide.dimensions)], options))
    return labels_from_polygons(result.nuclei.polygons, image.shape[:2]), len(result.nuclei)


def row(name: str, s: Scores) -> str:
    return f"| {name} | {s.n_true} | {s.n_pred} | {s.f1:.3f} | {s.pq:.3f} | {s.dice:.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the embedded model)")
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--precision", nargs="+", default=["auto"])
    parser.add_argument("--sets", nargs="+", default=list(HOLDOUT), choices=list(HOLDOUT))
    parser.add_argument("--skip-20x", action="store_true")
    parser.add_argument("--tta", action="store_true", help="also score every precision with test-time flips")
    parser.add_argument("--marker-threshold", type=float, default=None,
                        help="watershed marker threshold (default: the checkpoint's own, upstream's 0.4 when it records none)")
    args = parser.parse_args()
    model = load_model(args.model, device="cpu")
    marker = args.marker_threshold
    runs = {p: RunOptions(workers=0, precision=p, marker_threshold=marker) for p in args.precision}
    if args.tta:
        runs.update({f"{p}+tta": RunOptions(workers=0, precision=p, tta=True, marker_threshold=marker) for p in args.precision})
    options = runs[args.precision[0]]
    variants = list(runs)
    print(f"model: {model.source} ({model.describe()})")
    print("| image | precision | true | predicted | F1 | PQ | Dice |\n|---|---|---|---|---|---|---|")
    summary: dict[tuple[str, str], list[Scores]] = {}
    for dataset in args.sets:
        for name in HOLDOUT[dataset]:
            folder = args.shared / "data" / "nuclei" / dataset
            image = io.imread(folder / "images" / f"{name}.png")[..., :3]
            truth = io.imread(folder / "masks" / f"{name}.png").astype(np.int64)
            for precision, run in runs.items():
                pred, _ = predict_labels(model, image, 0.25, run)
                s = score(truth, pred)
                summary.setdefault((f"{dataset} 40×", precision), []).append(s)
                print(row(f"{name} (40×) | {precision}", s))
                if not args.skip_20x:
                    small = (resize(image, (image.shape[0] // 2, image.shape[1] // 2), order=1, anti_aliasing=True) * 255).astype(np.uint8)
                    pred20, _ = predict_labels(model, small, 0.5, run)
                    pred20 = resize(pred20, image.shape[:2], order=0, preserve_range=True, anti_aliasing=False).astype(np.int64)
                    s20 = score(truth, pred20)
                    summary.setdefault((f"{dataset} 20×", precision), []).append(s20)
                    print(row(f"{name} (20×) | {precision}", s20))
    print("\n| set | precision | images | mean F1 | mean PQ | mean Dice |\n|---|---|---|---|---|---|")
    for (key, precision), scores in summary.items():
        print(f"| {key} | {precision} | {len(scores)} | {np.mean([s.f1 for s in scores]):.3f} | "
              f"{np.mean([s.pq for s in scores]):.3f} | {np.mean([s.dice for s in scores]):.3f} |")
    if len(runs) == 2:
        a, b = variants
        sets = sorted({k for k, _ in summary})
        gaps = {k: np.mean([s.pq for s in summary[(k, b)]]) - np.mean([s.pq for s in summary[(k, a)]]) for k in sets}
        print(f"\nPQ {b} − {a}: " + ", ".join(f"{k} {v:+.4f}" for k, v in gaps.items())
              + f"; largest |gap| {max(abs(v) for v in gaps.values()):.4f}")
        for res in ("40×", "20×"):
            pooled = {v: [s.pq for (k, w), scores in summary.items() if w == v and k.endswith(res) for s in scores] for v in (a, b)}
            if pooled[a]:
                print(f"all {len(pooled[a])} held-out images at {res}: mean PQ {a} {np.mean(pooled[a]):.4f}, {b} {np.mean(pooled[b]):.4f}, "
                      f"{b} − {a} {np.mean(pooled[b]) - np.mean(pooled[a]):+.4f}")
    tile = io.imread(args.shared / "data" / "tcga_tile.png")[..., :3]
    pred, count = predict_labels(model, tile, 0.25, options)
    ious = [best_match_iou(obj.geometry, pred) for obj in read_geojson(args.shared / "data" / "tcga_tile.geojson")]
    print(f"\ntcga_tile.png: {count} nuclei; best-match IoU of the 4 hand-drawn nuclei: "
          + ", ".join(f"{v:.2f}" for v in ious) + f" ({sum(v > 0.5 for v in ious)}/4 above 0.5)")


if __name__ == "__main__":
    main()
