"""The HoverFast network and its configuration, module for module as upstream names them.

HoverFast is a U-Net with one shared encoder and two decoders: ``up_path``/``last`` give nucleus vs
background logits, ``up_path_m``/``last_m`` the horizontal and vertical distance maps. Module names
here reproduce upstream state-dict keys exactly, so official checkpoints load as they are and
checkpoints we write load in HoverFast itself. The forward is arranged for memory (a tile's
activations are what bounds a CPU run): one decoder after the other, no concatenated copies kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

UpMode = Literal["upconv", "upsample"]
ConvBlock = Literal["msunet", "unet"]

#: Checkpoint keys holding the network configuration (upstream names).
CONFIG_KEYS = ("n_classes", "in_channels", "depth", "wf", "padding", "batch_norm", "up_mode", "conv_block")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be turned into a HoverFast network; the message says why."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a HoverFast network, as stored in upstream checkpoints."""

    n_classes: int = 2
    in_channels: int = 3
    depth: int = 3
    wf: int = 4
    padding: bool = True
    batch_norm: bool = True
    up_mode: UpMode = "upconv"
    conv_block: ConvBlock = "msunet"

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_classes", "in_channels", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name}={value!r} (a positive integer is needed)")
        if not isinstance(self.wf, int) or isinstance(self.wf, bool) or not 0 <= self.wf <= 10:
            problems.append(f"wf={self.wf!r} (an integer from 0 to 10 is needed)")
        for name in ("padding", "batch_norm"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}={getattr(self, name)!r} (true or false is needed)")
        if self.up_mode not in ("upconv", "upsample"):
            problems.append(f"up_mode={self.up_mode!r} (supported: 'upconv', 'upsample')")
        if self.conv_block not in ("msunet", "unet"):
            problems.append(f"conv_block={self.conv_block!r} (supported: 'msunet', 'unet')")
        if self.padding is False:
            problems.append("padding=False (valid convolutions shrink the output; only padded networks are supported)")
        if problems:
            raise CheckpointError("Unsupported HoverFast configuration: " + "; ".join(problems))

    @property
    def multiple(self) -> int:
        """Input height and width must be a multiple of this (one halving per level)."""
        return 2 ** (self.depth - 1)

    @property
    def receptive_radius(self) -> int:
        """Pixels of input on each side that one output pixel depends on (the receptive field's radius).

        Each block holds two convolutions of its largest kernel (7 for multi-scale blocks, 3 for
        plain ones) at its level's stride; pooling and upsampling add half a stride each. 63 px for
        the default configuration, where changing one input pixel changes no output pixel 64 px away.
        """
        reach = 2 * ((7 if self.conv_block == "msunet" else 3) - 1) / 2
        down = sum(reach * 2**i + (0.5 * 2**i if i < self.depth - 1 else 0) for i in range(self.depth))
        up = sum(reach * 2**i + 0.5 * 2**i for i in range(self.depth - 1))
        return int(round(down + up))

    @property
    def padding_reach(self) -> int:
        """How far in from a tile's border the convolutions' zero padding visibly changes the maps.

        Measured for the default configuration on a real TCGA tile, outputs with 64 px of context
        against outputs with full context: maps differ by up to 0.19 at 16 px from the border, 0.05
        at 32 px and 0.002 at 48 px, where no nucleus-mask pixel changes. So 3/4 of the receptive
        radius, rounded up to 8 px (48 px for the default). Post-processing skips this border.
        """
        return -(-int(0.75 * self.receptive_radius) // 8) * 8


def _plain_block(in_ch: int, out_ch: int, kernel: int, padding: bool, batch_norm: bool) -> nn.Sequential:
    """conv → [BN] → ReLU, twice; indices match upstream ``block.N`` keys."""
    layers: list[nn.Module] = []
    for i in range(2):
        layers.append(nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, kernel, padding=kernel // 2 if padding else 0))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PlainBlock(nn.Module):
    """U-Net double convolution (``conv_block = "unet"``)."""

    def __init__(self, in_ch: int, out_ch: int, padding: bool, batch_norm: bool, kernel: int = 3) -> None:
        super().__init__()
        self.block = _plain_block(in_ch, out_ch, kernel, padding, batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class MultiScaleBlock(nn.Module):
    """MSU-Net block: 3×3 and 7×7 double convolutions side by side, mixed by a 1×1 convolution."""

    def __init__(self, in_ch: int, out_ch: int, padding: bool, batch_norm: bool) -> None:
        super().__init__()
        self.conv_3 = PlainBlock(in_ch, out_ch, padding, batch_norm, kernel=3)
        self.conv_7 = PlainBlock(in_ch, out_ch, padding, batch_norm, kernel=7)
        self.conv = nn.Conv2d(2 * out_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # conv(cat[a, b]) computed as conv_a(a) + conv_b(b): the same sum without the concatenated
        # copy, and one branch's activations are freed before the other is computed.
        n = self.conv.out_channels
        out = F.conv2d(self.conv_3(x), self.conv.weight[:, :n], self.conv.bias)
        return out.add_(F.conv2d(self.conv_7(x), self.conv.weight[:, n:]))


def _make_block(config: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    cls = MultiScaleBlock if config.conv_block == "msunet" else PlainBlock
    return cls(in_ch, out_ch, config.padding, config.batch_norm)


class UpBlock(nn.Module):
    """Upsample ×2, concatenate the (centre-cropped) encoder skip, then a block."""

    def __init__(self, config: ModelConfig, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up: nn.Module
        if config.up_mode == "upconv":
            self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(nn.Upsample(mode="bilinear", scale_factor=2), nn.Conv2d(in_ch, out_ch, kernel_size=1))
        self.conv_block = _make_block(config, in_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        h, w = 2 * x.shape[-2], 2 * x.shape[-1]  # both up modes double the size
        dy, dx = (skip.shape[-2] - h) // 2, (skip.shape[-1] - w) // 2
        # the upsampled tensor is a temporary: freed once concatenated, not held through the block
        return self.conv_block(torch.cat([self.up(x), skip[..., dy : dy + h, dx : dx + w]], dim=1))


#: At inference, a level whose output is larger than this many pixels is computed in row strips of
#: about this size: a 2208² fp32 tile then peaks at a fraction of the memory of the whole pass.
STRIP_PIXELS = 1 << 20
#: Rows of context each strip takes from its neighbours, at the level it outputs: more than the
#: reach of one block (two 7×7 convolutions: 6 rows; up-sampling adds at most one) and even, so
#: that a strip's rows map onto whole rows of the level below.
STRIP_HALO = 8

Block = Callable[..., torch.Tensor]


def by_rows(block: Block, sources: Sequence[tuple[torch.Tensor, float]], limit: float) -> torch.Tensor:
    """``block(*tensors)``, computed in row strips when its output has more than ``limit`` pixels.

    Why: on a CPU a forward pass holds a tile's activations at once, and a tile's side is what a
    run's memory budget bounds. ``block`` must be local in rows: each output row depends on input
    rows at most ``STRIP_HALO`` away (true of every HoverFast block). Each source is given with
    ``factor``, its rows per output row (2: the finer level, pooled inside ``block``; 0.5: the
    coarser one, up-sampled inside it). Each strip takes ``STRIP_HALO`` rows of real context on
    both sides, so the zero padding a strip's edge sees is cropped away, and only the image's own
    border is padded, as in the whole pass: the output equals the whole pass's up to rounding.
    """
    first, factor = sources[0]
    rows, width = round(first.shape[-2] / factor), round(first.shape[-1] / factor)
    if rows * width <= limit:
        return block(*(t for t, _ in sources))
    step = max(STRIP_HALO, int(limit // width) // STRIP_HALO * STRIP_HALO)
    out: torch.Tensor | None = None
    for a in range(0, rows, step):
        b = min(rows, a + step)
        lo, hi = max(0, a - STRIP_HALO), min(rows, b + STRIP_HALO)
        piece = block(*(t[..., round(lo * f) : round(hi * f), :] for t, f in sources))[..., a - lo : b - lo, :]
        if out is None:
            out = torch.empty((*piece.shape[:2], rows, piece.shape[-1]), dtype=piece.dtype, device=piece.device,
                              memory_format=torch.channels_last)
        out[..., a:b, :] = piece
        del piece
    assert out is not None  # rows > 0: at least one strip
    return out


class HoverFastNet(nn.Module):
    """HoverFast: shared encoder, a nucleus-logit decoder and a distance-map decoder.

    ``forward(x)`` takes float32 N×3×H×W in [0, 1] (H and W multiples of ``config.multiple``) and
    returns ``(logits N×n_classes×H×W, maps N×2×H×W)``; channel 1 of the logits is "nucleus", map
    channel 0 is horizontal (x) and channel 1 vertical (y).
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        widths = [2 ** (c.wf + i) for i in range(c.depth)]
        self.down_path = nn.ModuleList()
        prev = c.in_channels
        for w in widths:
            self.down_path.append(_make_block(c, prev, w))
            prev = w
        # Registration order matches upstream, so saved state dicts list keys in the same order.
        bottom = prev
        self.up_path = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up_path.append(UpBlock(c, prev, w))
            prev = w
        self.last = nn.Conv2d(prev, c.n_classes, kernel_size=1)
        prev = bottom
        self.up_path_m = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up_path_m.append(UpBlock(c, prev, w))
            prev = w
        self.last_m = nn.Conv2d(prev, 2, kernel_size=1)
        #: Output pixels per row strip at inference (see ``by_rows``); not part of the state dict.
        self.strip_pixels: float = STRIP_PIXELS

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # In eval mode a large input goes through every level in row strips (`by_rows`): the same
        # maps, with only the tensors that cross levels held whole. One decoder runs after the
        # other, each ending in its 1×1 output, so one decoder's activations are alive at a time.
        limit = math.inf if self.training else self.strip_pixels
        skips: list[torch.Tensor] = []
        for i, down in enumerate(self.down_path):
            if i == 0:
                skips.append(by_rows(down, [(x, 1.0)], limit))
            else:
                skips.append(by_rows(lambda t, down=down: down(F.max_pool2d(t, 2)), [(skips[-1], 2.0)], limit))
        bottom = skips.pop()
        outputs = []
        for ups, last in ((self.up_path, self.last), (self.up_path_m, self.last_m)):
            y = bottom if ups else last(bottom)
            for j, (up, skip) in enumerate(zip(ups, reversed(skips), strict=True)):
                block = (lambda a, s, up=up, last=last: last(up(a, s))) if j == len(ups) - 1 else up
                y = by_rows(block, [(y, 0.5), (skip, 1.0)], limit)
            outputs.append(y)
        return outputs[0], outputs[1]

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
