"""Batches of RGB tiles → nucleus probability and horizontal/vertical maps.

Inference runs under ``torch.inference_mode`` with channels-last tensors. Precision follows the
device (``resolve_precision``): CUDA uses float16 autocast (as upstream); the CPU bfloat16 autocast
where it has bf16 units (about 2× faster, held-out PQ within 0.005 of float32) and float32
elsewhere; ``precision="fp32"`` gives results comparable with the reference bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from skimage.color import hed2rgb, rgb2hed

from .model import LoadedModel
from .speed import native_bf16, tune_malloc

Stain = Literal["he", "ihc_dab"]
#: Compiled runs pad tiles to multiples of this (px): one graph for a run's near-equal tile shapes.
COMPILE_STEP = 64
Precision = Literal["auto", "fp32", "fp16", "bf16"]


@dataclass(frozen=True)
class PredictOptions:
    stain: Stain = "he"
    precision: Precision = "auto"
    #: ``torch.compile`` the network (``--compile``): a one-off compile (≈ 15–30 s on a CPU, again for
    #: each new tile shape) for a faster forward; pays on whole slides only (docs/PERFORMANCE.md).
    compile: bool = False
    #: Test-time augmentation (``--tta``): the mean of the network's outputs over the tile and its
    #: three flips (the maps' signs flipped back), at 4× the forward's cost.
    tta: bool = False

    def __post_init__(self) -> None:
        if self.stain not in ("he", "ihc_dab"):
            raise ValueError(f"Unknown stain {self.stain!r}: use 'he' or 'ihc_dab'")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"Unknown precision {self.precision!r}: use auto, fp32, fp16 or bf16")


def haematoxylin_only(rgb: np.ndarray) -> np.ndarray:
    """IHC-DAB → an H&E-like image: Ruifrok–Johnston deconvolution, keep haematoxylin, back to RGB.

    Returns float32 in [0, 1] with the input's shape (…×3).
    """
    hed = rgb2hed(rgb)
    hed[..., 1:] = 0.0
    return np.clip(hed2rgb(hed), 0.0, 1.0).astype(np.float32)


def prepare(tiles: np.ndarray, stain: Stain) -> np.ndarray:
    """uint8 N×H×W×3 → float32 N×H×W×3 in [0, 1], stain-adjusted (runs on the reading thread)."""
    if tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"Expected tiles N×H×W×3, got shape {tiles.shape}")
    if stain == "ihc_dab":  # brown and pale blue nuclei both drawn as haematoxylin (core/ihc.py)
        from .ihc import haematoxylin_like

        return haematoxylin_like(tiles)
    return tiles.astype(np.float32) / np.float32(255.0)


def resolve_precision(precision: Precision, device_type: str) -> str:
    """``auto``: fp16 on CUDA (as upstream), bf16 on CPUs with native bf16 units, else fp32.

    bf16 halves the CPU forward time on AVX512-BF16/AMX (``benchmarks/bench_precision.py`` prints the
    time and the held-out PQ of both); emulated elsewhere, it would be slower than fp32.
    """
    if precision == "auto":
        if device_type == "cuda":
            return "fp16"
        return "bf16" if device_type == "cpu" and native_bf16() else "fp32"
    if precision == "fp16" and device_type == "cpu":
        raise ValueError("fp16 inference needs a GPU; on the CPU use fp32 or bf16")
    return precision


class Predictor:
    """Runs a loaded HoverFast network on prepared tiles."""

    def __init__(self, model: LoadedModel, options: PredictOptions | None = None) -> None:
        self.model = model
        self.options = options or PredictOptions()
        device = model.device
        precision = resolve_precision(self.options.precision, device.type)
        if device.type == "cpu":
            tune_malloc()
        self.precision: str = precision  # resolved: what the cache key and the sidecar record
        self.dtype: torch.dtype | None = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self._net = torch.compile(model.net, dynamic=False) if self.options.compile else model.net

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nucleus probability and maps of a batch; with ``tta`` their mean over the four flips.

        Flipping columns mirrors the horizontal map (channel 0) and flipping rows the vertical one
        (channel 1), so each flipped output is flipped back and those channels negated.
        """
        flips: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3)) if self.options.tta else ((),)
        prob_sum: torch.Tensor | None = None
        maps_sum: torch.Tensor | None = None
        for dims in flips:
            logits, maps = self._net(torch.flip(x, dims) if dims else x)
            prob = torch.softmax(logits.float(), dim=1)[:, 1]
            if len(flips) > 1:  # summed in float32; a single pass keeps the network's precision
                maps = maps.float()
            if dims:
                prob = torch.flip(prob, [d - 1 for d in dims])
                sign = torch.tensor([-1.0 if 3 in dims else 1.0, -1.0 if 2 in dims else 1.0], device=maps.device)
                maps = torch.flip(maps, dims) * sign.view(1, 2, 1, 1)
            prob_sum = prob if prob_sum is None else prob_sum + prob
            maps_sum = maps if maps_sum is None else maps_sum + maps
        assert prob_sum is not None and maps_sum is not None
        return prob_sum / len(flips), maps_sum / len(flips)

    def _padded(self, images: np.ndarray) -> np.ndarray:
        """With ``compile``, tiles are padded (reflected) to multiples of ``COMPILE_STEP`` px so that
        the few tile shapes of a run share one compiled graph instead of compiling one each; the
        padding lies beyond the tile's context margin and is cropped off again."""
        if not self.options.compile:
            return images
        h, w = images.shape[1:3]
        ph, pw = -h % COMPILE_STEP, -w % COMPILE_STEP
        if not (ph or pw):
            return images
        return np.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 N×H×W×3 in [0, 1] → (nucleus probability N×H×W, maps N×2×H×W).

        float32 on the CPU. On a GPU the input goes through pinned memory with a non-blocking copy and
        the outputs come back as float16 (what the tile cache stores anyway: half the transfer).
        """
        device = self.model.device
        h, w = images.shape[1:3]
        x = torch.from_numpy(np.ascontiguousarray(self._padded(images))).permute(0, 3, 1, 2)
        if device.type == "cuda":
            x = x.pin_memory()
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            prob, maps = self._forward(x)
            prob, maps = prob[:, :h, :w], maps[:, :, :h, :w]
            if device.type == "cuda":
                return prob.half().cpu().numpy(), maps.half().cpu().numpy()
        return prob.cpu().numpy(), maps.float().cpu().numpy()
