"""Command line: ``napari-hoverfast segment``, ``cohort``, ``train`` and ``demo``.

Heavy imports happen inside the commands so ``--help`` is instant. Every expected failure (bad file,
bad option, missing model) exits non-zero with one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

from .core import limits

log = logging.getLogger("napari_hoverfast")


class CliError(ValueError):
    """An error to report as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other refusal of the command line (exit status 2);
    the usage block is what ``--help`` is for."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _rule(parse: Callable[[str], Any], check: Callable[[Any], Any]) -> Callable[[str], Any]:
    """An argument type: ``parse`` the text, then apply ``check``, the rule the Python API applies
    to the same option (``core/limits.py``), so both refuse the same values in the same words."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            kind = "a whole number" if parse is int else "a finite number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        try:
            result = check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value if result is None else result

    return convert


def _set_weight(text: str) -> tuple[str, float]:
    """``NAME=WEIGHT``: a data folder's name and its relative share of the training batches."""
    name, sep, weight = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=WEIGHT (a data folder's name, then its share, e.g. consep_train=2)")
    try:
        value = _finite(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the weight {weight!r} is not a finite number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the weight must be above 0")
    return name, value


def _at_least(low: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not value >= low:
            raise ValueError(f"must be at least {low:g}, got {value:g}")
        return value

    return check


def _above(low: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not value > low:
            raise ValueError(f"must be above {low:g}, got {value:g}")
        return value

    return check


def _within(low: float, high: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not low <= value <= high:
            raise ValueError(f"must be from {low:g} to {high:g}, got {value:g}")
        return value

    return check


_positive_int = _rule(int, _at_least(1))
_positive_float = _rule(_finite, _above(0))
_non_negative_float = _rule(_finite, _at_least(0))
positive_int = _positive_int
cluster_workers = _rule(int, limits.check_cluster_workers)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options of a slide's run, shared by ``segment`` and ``cohort``."""
    parser.add_argument("--model", type=Path, default=None, help="HoverFast weights (.pth or .safetensors); default: the embedded model")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    parser.add_argument("--batch-size", type=_rule(int, limits.check_batch_size), default=None, help="tiles per forward pass")
    parser.add_argument("--tile-size", type=_rule(int, limits.check_tile_size), default=limits.DEFAULT_TILE, metavar="PX",
                        help=f"largest square a tile keeps nuclei from, px; its input adds 80 px of context a side ({limits.DEFAULT_TILE})")
    parser.add_argument("--memory-gb", type=_rule(_finite, limits.check_memory_gb), default=limits.DEFAULT_MEMORY_GB,
                        metavar="GB", help=f"memory one CPU forward pass may use; tiles shrink to fit ({limits.DEFAULT_MEMORY_GB:g})")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network: a faster forward after a compile of tens of seconds (whole slides)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average the tile and its 3 flips (4x the network's time)")
    parser.add_argument("--stain", choices=("he", "ihc_dab"), default="he",
                        help="he, or ihc_dab (DAB and haematoxylin nuclei found; Negative/1+/2+/3+ scored)")
    parser.add_argument("--ihc-thresholds", type=_finite, nargs=3, default=None, metavar=("T1", "T2", "T3"),
                        help="with --stain ihc_dab: DAB OD mean of 1+, 2+, 3+ (QuPath's 0.2 0.4 0.6)")
    parser.add_argument("--stain-vectors", choices=("default", "estimated"), default="default",
                        help="stain measurements' vectors: scikit-image's (default) or estimated from the slide (Macenko)")
    parser.add_argument("--mpp", type=_positive_float, default=None, help="µm per pixel when the file does not say")
    parser.add_argument("--min-area", type=_rule(_finite, limits.check_min_area), default=5.0, metavar="UM2", help="smallest nucleus, µm² (5)")
    parser.add_argument("--max-area", type=_rule(_finite, limits.check_max_area), default=None, metavar="UM2", help="largest nucleus, µm² (none)")
    parser.add_argument("--min-solidity", type=_rule(_finite, _within(0, 1)), default=0.8,
                        help="objects over 100 µm² need this solidity (0.8; 0 keeps ragged ones: keratin, clumps)")
    parser.add_argument("--prob-threshold", type=_rule(_finite, _above(0)), default=0.5, help="nucleus probability threshold (0.5)")
    parser.add_argument("--marker-threshold", type=_rule(_finite, _above(0)), default=None,
                        help="watershed marker threshold on the edge energy (default: the model's; 0.4, upstream's, for HoverFast's weights)")
    parser.add_argument("--simplify", type=_non_negative_float, default=6.0,
                        help="outline simplification, upstream's units (6; 0 keeps pixel outlines)")
    parser.add_argument("--cache", type=Path, default=None, metavar="DIR",
                        help="keep each tile's network output here: a rerun resumes, new thresholds re-use it (off)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="napari-hoverfast", description="HoverFast nuclei segmentation, headless.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment nuclei in a slide or image and write QuPath GeoJSON")
    seg.add_argument("input", type=Path, help="a slide tiffslide opens (SVS, NDPI, tiled TIFF…) or an RGB image")
    seg.add_argument("-o", "--output", type=Path, required=True, help="OUT.geojson or OUT.geojson.gz (.json, .json.gz)")
    seg.add_argument("--roi", type=int, nargs=4, metavar=("X", "Y", "W", "H"), help="region in level-0 pixels")
    seg.add_argument("--tissue-mask", type=Path, default=None, help="binary tissue mask image (any scale) for whole-slide runs")
    seg.add_argument("--csv", type=Path, default=None, help="also write per-nucleus measurements as CSV")
    seg.add_argument("--workers", type=_rule(int, limits.check_workers), default=None,
                     help="post-processing processes (0: in this process; default: half the CPUs, at most 4)")
    add_run_options(seg)

    from .cli_cohort import add_parser as add_cohort

    add_cohort(sub, sys.modules[__name__])

    demo = sub.add_parser("demo", help="segment the bundled H&E tile with the embedded model (a first check)")
    demo.add_argument("-o", "--output", type=Path, default=Path("hoverfast_demo.geojson"), help="where to write the nuclei")
    demo.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")

    tr = sub.add_parser("train", help="train or fine-tune a HoverFast model on annotated tiles")
    tr.add_argument("data", type=Path, nargs="+", help="folders with images/ and masks/ (or NAME.geojson)")
    tr.add_argument("-o", "--output", type=Path, required=True, help="checkpoint to write (upstream format)")
    tr.add_argument("--steps", type=_positive_int, default=2000)
    tr.add_argument("--batch-size", type=_rule(int, limits.check_batch_size), default=8)
    tr.add_argument("--patch-size", type=_rule(int, limits.check_patch_size), default=256,
                    help="px a side; a multiple of 2**(depth - 1) (256)")
    tr.add_argument("--lr", type=_rule(_finite, limits.check_learning_rate), default=1e-3)
    tr.add_argument("--depth", type=_rule(int, limits.check_depth), default=3)
    tr.add_argument("--wf", type=_rule(int, limits.check_wf), default=4, help="2**wf channels at the top level (4)")
    tr.add_argument("--conv-block", choices=("msunet", "unet"), default="msunet")
    tr.add_argument("--up-mode", choices=("upconv", "upsample"), default="upconv")
    tr.add_argument("--val", nargs="*", default=(), metavar="NAME", help="tile names used for validation")
    tr.add_argument("--exclude", nargs="*", default=(), metavar="NAME", help="tile names never used (held out)")
    tr.add_argument("--eval-every", type=_positive_int, default=100)
    tr.add_argument("--seed", type=_rule(int, _at_least(0)), default=0)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    tr.add_argument("--resume", type=Path, default=None, help="continue from a checkpoint written by train")
    tr.add_argument("--init", default=None, metavar="CKPT|default",
                    help="fine-tune: start from these weights ('default': the embedded model) with a fresh schedule")
    tr.add_argument("--max-minutes", type=_positive_float, default=None, help="stop after this long")
    tr.add_argument("--set-weight", type=_set_weight, nargs="+", default=(), metavar="NAME=WEIGHT",
                    help="a data folder's relative share of the batches (others weigh 1: sets drawn equally)")
    tr.add_argument("--haematoxylin-only", type=_rule(_finite, _within(0, 1)), default=0.0, metavar="P",
                    help="share of patches redrawn as haematoxylin only, as IHC tiles reach the network (0)")
    tr.add_argument("--select", choices=limits.SELECT_RULES, default="loss",
                    help="keep the checkpoint with the lowest validation loss (upstream's rule) or the highest "
                         "validation PQ through the product's post-processing (each evaluation about 1 s per 1000² validation tile on 2 bf16 cores)")
    tr.add_argument("--mask-weight", type=_rule(_finite, partial(limits.check_loss_weight, "mask weight")), default=1.0, metavar="W",
                    help="weight of the nucleus-mask loss (cross-entropy + Dice) against the maps' loss (1, as HoVer-Net)")
    return parser


def _init_weights(value: str | None) -> Path | None:
    if value is None:
        return None
    if value == "default":
        from .core.default_model import default_model_path, has_default_model

        if not has_default_model():
            raise CliError("--init default: this installation has no embedded default model")
        return default_model_path()
    return Path(value)


def _run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .core.model import ModelConfig
    from .core.train import TrainOptions, train
    from .core.training_data import AugmentOptions

    options = TrainOptions(  # its own checks (patch size against depth, batch pixels) before any work
        data=tuple(args.data),
        output=args.output,
        config=ModelConfig(depth=args.depth, wf=args.wf, conv_block=args.conv_block, up_mode=args.up_mode),
        steps=args.steps,
        batch_size=args.batch_size,
        patch_size=args.patch_size,
        learning_rate=args.lr,
        eval_every=args.eval_every,
        val_names=tuple(args.val),
        exclude=tuple(args.exclude),
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        resume=args.resume,
        init=_init_weights(args.init),
        max_minutes=args.max_minutes,
        set_weights=tuple(args.set_weight),
        select=args.select,
        mask_weight=args.mask_weight,
        augment=AugmentOptions(haematoxylin_only_probability=args.haematoxylin_only),
    )
    with tqdm(total=options.steps, unit="step", dynamic_ncols=True) as bar:

        def show(p):  # type: ignore[no-untyped-def]
            bar.n = p.step
            if p.best_val_pq is None:
                bar.set_postfix(loss=f"{p.loss:.3f}", best_val=f"{p.best_val_loss:.3f}")
            else:
                bar.set_postfix(loss=f"{p.loss:.3f}", best_pq=f"{p.best_val_pq:.3f}")
            bar.refresh()

        result = train(options, on_progress=show)
    wrote = f"wrote {result.output}" if Path(result.output).is_file() else "no checkpoint was written"
    print(
        f"trained {result.steps_done} steps in {result.seconds:.0f} s on {len(result.train_names)} tiles; "
        f"best validation loss {result.best_val_loss:.4f}"
        + ("" if result.best_val_pq is None else f" (kept for its validation PQ {result.best_val_pq:.4f})")
        + f"; {wrote}"
    )
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from importlib import resources

    from .cli_segment import run_segment

    tile = Path(str(resources.files("napari_hoverfast") / "data" / "tcga_tile.png"))
    seg = build_parser().parse_args(["segment", str(tile), "-o", str(args.output), "--mpp", "0.25", "--device", args.device])
    return run_segment(seg)


#: Set by SIGTERM, which is handled like Ctrl-C (partial results written) but exits 143.
TERMINATED = threading.Event()


def _on_sigterm(signum: int, frame: object) -> None:
    TERMINATED.set()
    raise KeyboardInterrupt


def interrupted_status() -> int:
    """Exit status of a run stopped by a signal: 143 for SIGTERM, 130 for Ctrl-C."""
    return 143 if TERMINATED.is_set() else 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "train":
            return _run_train(args)
        if args.command == "demo":
            return _run_demo(args)
        if args.command == "cohort":
            from .cli_cohort import run_cohort_command

            return run_cohort_command(args)
        from .cli_segment import run_segment

        return run_segment(args)
    except KeyboardInterrupt:
        print("napari-hoverfast: interrupted", file=sys.stderr)
        return interrupted_status()
    except (CliError, ValueError, OSError, FloatingPointError) as exc:  # CacheError and RunError included
        print(f"napari-hoverfast: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m napari_hoverfast.cli`: run the package's module, not this __main__ copy, so that the
    # sub-commands (which import napari_hoverfast.cli) share its state (SIGTERM flag, error classes).
    from napari_hoverfast.cli import main as _main

    sys.exit(_main())
