"""Same weights, same ROI: how many of upstream HoverFast's nuclei napari-hoverfast finds, and vice versa.

    python benchmarks/bench_fidelity.py --upstream /path/to/venv/bin/HoverFast [--shared ../shared]

Runs upstream HoverFast 1.1 ``infer_roi`` (installed in its own environment, see
``../shared/upstream/README.md``) and napari-hoverfast's product path (slide reader → tiled inference →
post-processing → polygons) on the same inputs with the same weights (the embedded model saved in
fp32 for both): the shared ``tcga_tile.png`` (1024²) and a 2048² mosaic of nine MoNuSeg tiles. Prints,
per input, both counts, the fraction of upstream's nuclei that have a match in ours at IoU > 0.5, the
fraction of ours that have one in upstream's, and the mean IoU of the matches.

Upstream's outlines pass through the centres of a nucleus's boundary pixels, ours along their outer
edges; upstream's are therefore rasterised with those boundary pixels (grown by half a pixel), ours by
pixel centres, so that both stand for the same pixels. Without ``--upstream`` only our counts print.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely
import torch
from skimage import io

from napari_hoverfast.core.default_model import default_model_path, load_model
from napari_hoverfast.core.metrics import match_instances, rasterize
from napari_hoverfast.core.model import UPSTREAM_MARKER_THRESHOLD
from napari_hoverfast.core.pipeline import RunOptions, run_to_end, segment_slide
from napari_hoverfast.core.slide import Slide
from napari_hoverfast.core.tiling import Box

HERE = Path(__file__).resolve().parent
MPP = 0.25
MIN_AREA_UM2 = 5.0


def mosaic(shared: Path, size: int = 2048) -> np.ndarray:
    """Nine 1000² MoNuSeg tiles in a 3×3 grid, cropped to ``size``² (real 40× tissue, several organs)."""
    names = sorted((shared / "data" / "nuclei" / "monuseg_train" / "images").glob("*.png"))[:9]
    tiles = [io.imread(p)[..., :3] for p in names]
    rows = [np.concatenate(tiles[i : i + 3], axis=1) for i in (0, 3, 6)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


def fp32_checkpoint(path: Path) -> None:
    """The embedded model with fp32 tensors, in upstream's layout (upstream reads ``model_dict``)."""
    checkpoint = torch.load(default_model_path(), map_location="cpu", weights_only=True)
    checkpoint["model_dict"] = {k: v.float() for k, v in checkpoint["model_dict"].items()}
    torch.save(checkpoint, path)


def run_upstream(executable: str, image: Path, model: Path, outdir: Path) -> tuple[list[shapely.Polygon], float]:
    """Upstream ``infer_roi`` on one image; its polygons (x, y pixels) and wall seconds."""
    min_px = str(round(MIN_AREA_UM2 / MPP**2))  # upstream's ROI size rule is in pixels
    start = time.perf_counter()
    subprocess.run([executable, "infer_roi", str(image), "-m", str(model), "-o", str(outdir), "-s", min_px],
                   check=True, capture_output=True, cwd=outdir.parent)
    seconds = time.perf_counter() - start
    with gzip.open(outdir / "json" / f"{image.stem}.json.gz", "rt") as handle:
        text = handle.read()
    features = json.loads(text) if text.strip() else []
    return [shapely.Polygon(f["geometry"]["coordinates"][0]) for f in features], seconds


def run_ours(image: Path, model_path: Path) -> tuple[list[shapely.Polygon], float]:
    model = load_model(model_path, device="cpu")
    # upstream's marker threshold, whatever the model records: this compares the post-processing;
    # no memory budget, so the ROI is one tile as upstream's is (fp32 tiles would shrink to fit 3 GB)
    options = RunOptions(workers=0, precision="fp32", min_area_um2=MIN_AREA_UM2, marker_threshold=UPSTREAM_MARKER_THRESHOLD,
                         memory_gb=None)
    start = time.perf_counter()
    with Slide(image, mpp=MPP) as slide:
        result = run_to_end(segment_slide(slide, model, [Box(0, 0, *slide.dimensions)], options))
    return list(result.nuclei.polygons), time.perf_counter() - start


def labels(polygons: list[shapely.Polygon], shape: tuple[int, int], grow: float = 0.0) -> np.ndarray:
    out = np.zeros(shape, np.int32)
    for i, polygon in enumerate(polygons, start=1):
        if grow:
            polygon = polygon.buffer(grow, join_style="mitre")
        out[rasterize(polygon, shape)] = i
    return out


def agreement(ours: list[shapely.Polygon], upstream: list[shapely.Polygon], shape: tuple[int, int]) -> dict[str, float]:
    """Fractions of each side matched in the other at IoU > 0.5, and the matches' mean IoU."""
    m = match_instances(labels(upstream, shape, grow=0.5), labels(ours, shape))
    return {
        "ours": m.n_pred, "upstream": m.n_true,
        "upstream_matched": m.tp / max(m.n_true, 1), "ours_matched": m.tp / max(m.n_pred, 1),
        "mean_iou": float(np.mean(m.ious)) if m.tp else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", default=os.environ.get("HOVERFAST_UPSTREAM"),
                        help="upstream's HoverFast executable (default: $HOVERFAST_UPSTREAM)")
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--only", choices=("tcga", "mosaic"), default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "model_fp32.pth"
        fp32_checkpoint(model)
        inputs = {"tcga": work / "tcga_tile.png", "mosaic": work / "mosaic_2048.png"}
        io.imsave(inputs["tcga"], io.imread(args.shared / "data" / "tcga_tile.png")[..., :3], check_contrast=False)
        io.imsave(inputs["mosaic"], mosaic(args.shared), check_contrast=False)
        print("| input | ours | upstream | upstream's matched in ours | ours matched in upstream's | mean IoU | s ours | s upstream |")
        print("|---|---|---|---|---|---|---|---|")
        for key, image in inputs.items():
            if args.only and key != args.only:
                continue
            shape = io.imread(image).shape[:2]
            ours, t_ours = run_ours(image, model)
            if not args.upstream:
                print(f"| {image.name} | {len(ours)} | – | – | – | – | {t_ours:.1f} | – |")
                continue
            upstream, t_up = run_upstream(args.upstream, image, model, work / f"up_{key}")
            a = agreement(ours, upstream, shape)
            print(f"| {image.name} | {a['ours']} | {a['upstream']} | {a['upstream_matched']:.3f} | {a['ours_matched']:.3f} | "
                  f"{a['mean_iou']:.3f} | {t_ours:.1f} | {t_up:.1f} |")


if __name__ == "__main__":
    main()
