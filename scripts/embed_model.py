"""Turn a training checkpoint into the embedded default model: float16 weights, no optimiser state.

    python scripts/embed_model.py runs/default.pth [--marker-threshold 0.5]

Writes src/napari_hoverfast/data/hoverfast_default.pth (upstream layout, so HoverFast loads it too)
and records its SHA-256 in src/napari_hoverfast/core/default_model.py, which refuses any other file.
``--marker-threshold`` records the watershed marker threshold chosen for this network on the
validation images (``benchmarks/tune_postprocess.py``); runs use it unless the user gives one.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "src" / "napari_hoverfast" / "data" / "hoverfast_default.pth"
MODULE = ROOT / "src" / "napari_hoverfast" / "core" / "default_model.py"
KEEP = ("epoch", "best_loss_on_test", "n_classes", "in_channels", "depth", "wf", "padding", "batch_norm", "up_mode",
        "conv_block", "train_tiles", "val_tiles")


def main(source: str, marker_threshold: float | None) -> None:
    ckpt = torch.load(source, map_location="cpu", weights_only=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model_dict"].items()}
    out = {"model_dict": state, "optim_dict": {}, **{k: ckpt[k] for k in KEEP if k in ckpt}}
    if marker_threshold is not None:
        out["marker_threshold"] = float(marker_threshold)
    torch.save(out, TARGET)
    digest = hashlib.sha256(TARGET.read_bytes()).hexdigest()
    text = MODULE.read_text()
    text = re.sub(r'^SHA256 = ".*"$', f'SHA256 = "{digest}"', text, flags=re.M)
    MODULE.write_text(text)
    print(f"wrote {TARGET} ({TARGET.stat().st_size / 1e6:.2f} MB), sha256 {digest}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--marker-threshold", type=float, default=None)
    args = parser.parse_args()
    main(args.checkpoint, args.marker_threshold)
