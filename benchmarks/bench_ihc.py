"""IHC on the two shared Ki67 tiles: nuclei found per class, and the positive/negative call.

    python benchmarks/bench_ihc.py [--shared ../shared] [--input ihc_dab he previous] [--mpp 0.25 0.5]
                                   [--thresholds 0.2 0.4 0.6] [--iou 0.5] [--stain-vectors default estimated]
                                   [--model CKPT --marker-threshold 0.5]

Runs the embedded model through the engine (``SlideJob``, as the CLI does) on
``data/nuclei/ihc_ki67`` (237 nuclei marked by hand, 31 Ki67-positive) and prints, per input and pixel
size: the marked nuclei matched at IoU > ``--iou`` per class (recall), the agreement of the
positive/negative call on the matched ones (positive = DAB OD mean ≥ the 1+ threshold), and the %
positive over all detections and over the matched ones against the hand's 13.1 %. Inputs: ``ihc_dab``
(today's IHC input, ``core/ihc.py``), ``he`` (the RGB as if H&E), ``previous`` (the IHC input before
it: scikit-image's haematoxylin channel alone). ``--stain-vectors estimated`` measures the DAB OD with
vectors estimated from each tile (Macenko, ``core/stain_vectors.py``; the ``he`` input's DAB is always
measured with scikit-image's). ``docs/MEASUREMENTS.md`` reports its output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from napari_hoverfast.core import predict, stages
from napari_hoverfast.core.ihc import IhcOptions
from napari_hoverfast.core.ihc_check import IhcCheck, check_against_marks
from napari_hoverfast.core.job import SlideJob, run_slide_job
from napari_hoverfast.core.pipeline import RunOptions, run_to_end

HERE = Path(__file__).resolve().parent


def marked_tiles(shared: Path) -> list[tuple[Path, np.ndarray, dict[int, bool]]]:
    """(image, instance labels, {label: positive}) of each tile."""
    folder = shared / "data" / "nuclei" / "ihc_ki67"
    classes = json.loads((folder / "instance_classes.json").read_text())["instance_class"]
    out = []
    for image in sorted((folder / "images").glob("*.png")):
        marks = np.asarray(Image.open(folder / "masks" / image.name))
        positive = {int(k): v == "Ki67_positive" for k, v in classes[image.stem].items()}
        out.append((image, marks, positive))
    return out


def run_tile(image: Path, mpp: float, stain: str, ihc: IhcOptions, vectors: str = "default",  # type: ignore[no-untyped-def]
             model: Path | None = None, marker: float | None = None, precision: str = "auto"):
    """The nuclei of one tile, with the engine's defaults (no cache, in this process); ``model``
    ``None`` is the embedded one, ``marker`` ``None`` the model's own marker threshold."""
    options = RunOptions(stain=stain, ihc=ihc, workers=0, stain_vectors=vectors, marker_threshold=marker,  # type: ignore[arg-type]
                         precision=precision)
    job = SlideJob(slide=str(image), mpp=mpp, model=None if model is None else str(model), options=options)
    return run_to_end(run_slide_job(job)).run.nuclei


def evaluate(shared: Path, input_: str, mpp: float, ihc: IhcOptions, iou: float,
             vectors: str = "default", model: Path | None = None,
             marker: float | None = None, precision: str = "auto") -> tuple[IhcCheck, list[IhcCheck]]:
    """The check of every tile and their sum, for one input (``previous`` swaps the IHC transform back)."""
    original = stages.prepare
    if input_ == "previous":
        stages.prepare = lambda tiles, stain: np.stack([predict.haematoxylin_only(t) for t in tiles])
    try:
        stain = "he" if input_ == "he" else "ihc_dab"
        checks = []
        for image, marks, positive in marked_tiles(shared):
            nuclei = run_tile(image, mpp, stain, ihc, vectors, model, marker, precision)
            if input_ == "he":  # scored on the same stain measurements as the others
                nuclei = _with_dab(nuclei, image, mpp, ihc)
            checks.append(check_against_marks(nuclei, marks, positive, options=ihc, iou=iou))
    finally:
        stages.prepare = original
    total = checks[0]
    for c in checks[1:]:
        total = total + c
    return total, checks


def _with_dab(nuclei, image: Path, mpp: float, ihc: IhcOptions):  # type: ignore[no-untyped-def]
    """An ``he`` run measures H&E stains; for the call, measure its nuclei's DAB as ``ihc_dab`` would."""
    from napari_hoverfast.core.ihc_check import labels_of
    from napari_hoverfast.core.measurements import stain_statistics
    from napari_hoverfast.core.nuclei import Nuclei

    rgb = np.asarray(Image.open(image).convert("RGB"))
    labels = labels_of(nuclei, rgb.shape[:2])
    stats = stain_statistics(rgb, labels, np.arange(1, len(nuclei) + 1), "ihc_dab")
    out = Nuclei(mpp, ihc=ihc)
    out.append(nuclei.polygons, nuclei.probability, nuclei.tile, measurements=stats)
    return out


def line(name: str, c: IhcCheck) -> str:
    return (f"{name:<24} found pos {c.found_positive:>2}/{c.marked_positive:<2} ({c.recall_positive:5.1%})  "
            f"neg {c.found_negative:>3}/{c.marked_negative:<3} ({c.recall_negative:5.1%})  "
            f"all {c.recall:5.1%}  | call agreement {c.agreement:5.1%} (pp {c.calls[0]} pn {c.calls[1]} np {c.calls[2]} nn {c.calls[3]})  "
            f"| % positive: detections {c.percent_positive_detected:4.1f} ({c.detections_positive}/{c.detections}), "
            f"matched {c.percent_positive_matched:4.1f}, hand {c.percent_positive_marked:4.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--input", nargs="+", default=["ihc_dab", "previous", "he"], choices=["ihc_dab", "previous", "he"])
    parser.add_argument("--mpp", type=float, nargs="+", default=[0.25])
    parser.add_argument("--thresholds", type=float, nargs=3, default=[0.2, 0.4, 0.6])
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument("--stain-vectors", nargs="+", default=["default"], choices=["default", "estimated"])
    parser.add_argument("--model", type=Path, default=None, help="a checkpoint to score (default: the embedded model)")
    parser.add_argument("--marker-threshold", type=float, default=None,
                        help="watershed marker threshold (default: the model's own; a train checkpoint records none)")
    args = parser.parse_args()
    ihc = IhcOptions(tuple(args.thresholds))  # type: ignore[arg-type]
    print(f"IoU > {args.iou}, thresholds {ihc.thresholds}")
    for mpp in args.mpp:
        for input_ in args.input:
            for vectors in args.stain_vectors:
                start = time.perf_counter()
                total, checks = evaluate(args.shared, input_, mpp, ihc, args.iou, vectors, args.model, args.marker_threshold)
                for (image, _, _), c in zip(marked_tiles(args.shared), checks, strict=True):
                    print(line(f"  {image.stem}", c))
                name = input_ if vectors == "default" else f"{input_}, {vectors}"
                print(line(f"{name} @ {mpp} µm/px", total) + f"  [{time.perf_counter() - start:.0f} s]")


if __name__ == "__main__":
    main()
