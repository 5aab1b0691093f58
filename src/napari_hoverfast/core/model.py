"""The HoverFast network and a strict loader for upstream checkpoints.

HoverFast is a U-Net with one shared encoder and two decoders: ``up_path``/``last`` give nucleus vs
background logits, ``up_path_m``/``last_m`` the horizontal and vertical distance maps. Module names
here reproduce upstream state-dict keys exactly, so official checkpoints load as they are and
checkpoints we write load in HoverFast itself.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import pickle
import uuid
import zipfile
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .device import resolve_device

log = logging.getLogger(__name__)

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
        return self.conv(torch.cat([self.conv_3(x), self.conv_7(x)], dim=1))


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
        up = self.up(x)
        dy = (skip.shape[-2] - up.shape[-2]) // 2
        dx = (skip.shape[-1] - up.shape[-1]) // 2
        skip = skip[..., dy : dy + up.shape[-2], dx : dx + up.shape[-1]]
        return self.conv_block(torch.cat([up, skip], dim=1))


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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for i, down in enumerate(self.down_path):
            x = down(x)
            if i != len(self.down_path) - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        y, m = x, x
        for up, up_m, skip in zip(self.up_path, self.up_path_m, reversed(skips)):
            y = up(y, skip)
            m = up_m(m, skip)
        return self.last(y), self.last_m(m)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


#: HoverFast's marker threshold (its ``infer`` default), used for checkpoints that do not record one.
UPSTREAM_MARKER_THRESHOLD = 0.4


def recorded_marker_threshold(extras: dict[str, Any], name: str) -> float:
    """The checkpoint's ``marker_threshold`` entry, checked; upstream's when there is none."""
    value = extras.get("marker_threshold")
    if value is None:
        return UPSTREAM_MARKER_THRESHOLD
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 < number < 1.0:
        raise CheckpointError(f"{name}: its marker_threshold entry must be a number between 0 and 1, not {value!r}")
    return number


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference plus what the user should see about it."""

    net: HoverFastNet
    config: ModelConfig
    device: torch.device
    source: str
    sha256: str
    #: Parameters of the network as trained (before batch norm was folded for inference).
    parameters: int = 0
    #: The watershed marker threshold for this network's maps: what its checkpoint records (chosen on
    #: validation images when it was trained, ``scripts/embed_model.py``), else upstream's 0.4, so
    #: HoverFast's own weights give HoverFast's nuclei. ``RunOptions.marker_threshold`` overrides it.
    marker_threshold: float = UPSTREAM_MARKER_THRESHOLD

    @property
    def parameter_count(self) -> int:
        return self.parameters or self.net.parameter_count()

    def describe(self) -> str:
        c = self.config
        return (
            f"HoverFast depth {c.depth}, wf {c.wf} ({2**c.wf} channels), {c.conv_block}/{c.up_mode}, "
            f"{self.parameter_count:,} parameters, on {self.device.type}"
        )


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise CheckpointError(f"Checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint is not a file: {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"Cannot read checkpoint {path}: {exc.strerror or exc}") from exc


def _torch_load(data: bytes, name: str) -> Any:
    """``torch.load`` with ``weights_only=True`` and errors turned into plain sentences."""
    if len(data) == 0:
        raise CheckpointError(f"{name} is empty (0 bytes): not a PyTorch checkpoint")
    is_zip = data[:4] == b"PK\x03\x04"
    is_legacy_pickle = data[:1] == b"\x80"
    if not (is_zip or is_legacy_pickle):
        raise CheckpointError(f"{name} is not a PyTorch checkpoint (it starts with {data[:8]!r})")
    if is_zip:
        try:
            zipfile.ZipFile(io.BytesIO(data)).testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CheckpointError(f"{name} is truncated or corrupt ({exc}); copy the file again") from exc
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Weights only load failed" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
            first = msg.strip().splitlines()
            detail = next((line for line in first if "Unsupported" in line or "GLOBAL" in line), first[0] if first else "")
            raise CheckpointError(
                f"{name} contains Python objects beyond tensors and plain values ({detail.strip()}); "
                "it was refused because loading it could run code. Re-save only the state dict and config."
            ) from exc
        raise CheckpointError(f"{name} is truncated or corrupt: {msg.splitlines()[0] if msg else exc}") from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{name} is truncated or corrupt: {first[0] if first else type(exc).__name__}") from exc


def _config_from_checkpoint(ckpt: dict[str, Any], name: str) -> ModelConfig:
    missing = [k for k in CONFIG_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{name} holds no HoverFast configuration (missing {', '.join(missing)}); "
            "pass config=ModelConfig(...) to load a bare state dict"
        )
    values = {k: ckpt[k] for k in CONFIG_KEYS}
    if values["n_classes"] != 2:
        raise CheckpointError(f"Unsupported HoverFast configuration: n_classes={values['n_classes']!r} (HoverFast has 2)")
    if values["in_channels"] != 3:
        raise CheckpointError(f"Unsupported HoverFast configuration: in_channels={values['in_channels']!r} (RGB, 3, is needed)")
    return ModelConfig(**values)


def check_state(state: Any, config: ModelConfig, name: str) -> None:
    """Refuse, before any network is built, tensors that do not fit ``config`` or are not finite.

    The depth and width a file declares are checked against its tensors first, so a small file that
    declares depth 9 / wf 10 is refused instead of allocating a network of hundreds of GiB.
    """
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{name}: 'model_dict' is not a state dict of tensors")
    levels = {int(k.split(".")[1]) for k in state if k.startswith("down_path.") and k.split(".")[1].isdigit()}
    if levels and len(levels) != config.depth:
        raise CheckpointError(f"{name} declares depth {config.depth} but holds {len(levels)} encoder levels")
    first = [v for k, v in sorted(state.items()) if k.startswith("down_path.0.") and k.endswith("weight") and v.ndim == 4]
    if first and first[0].shape[0] != 2**config.wf:
        raise CheckpointError(f"{name} declares wf {config.wf} ({2**config.wf} channels) but its first layer has {first[0].shape[0]}")
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{name}: tensor {key!r} holds NaN or infinite values; the file is damaged")


def _apply_state_dict(net: HoverFastNet, state: dict[str, Any], name: str) -> None:
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, first {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, first {unexpected[0]!r}")
        raise CheckpointError(
            f"{name} is not a checkpoint of this HoverFast network ({net.config.depth=}, {net.config.wf=}, "
            f"{net.config.conv_block=}): " + "; ".join(parts)
        )
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(f"{name}: {len(wrong)} tensors have the wrong shape, first {k!r} is {got}, expected {want}")
    net.load_state_dict(state, strict=True)


def build_model(
    state: dict[str, torch.Tensor], config: ModelConfig, *, device: str | torch.device = "auto", name: str = "state dict"
) -> LoadedModel:
    """A network for inference from a state dict and its configuration: eval mode on ``device``, batch norm folded."""
    check_state(state, config, name)
    net = HoverFastNet(config)
    _apply_state_dict(net, state, name)
    dev = resolve_device(device)
    net = net.to(dev).eval()
    parameters = net.parameter_count()
    from .speed import fold_batch_norm

    fold_batch_norm(net)  # inference only: the network is never trained or saved from here
    if dev.type in ("cpu", "cuda"):  # NHWC: oneDNN and tensor cores both prefer it
        net = net.to(memory_format=torch.channels_last)
    # raw bytes (a bfloat16 tensor has no numpy form)
    digest = hashlib.sha256(b"".join(v.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
                                     for v in state.values())).hexdigest()
    return LoadedModel(net=net, config=config, device=dev, source=name, sha256=digest, parameters=parameters)


def read_checkpoint(path: str | PathLike[str], *, config: ModelConfig | None = None) -> tuple[dict[str, Any], ModelConfig, dict[str, Any], str]:
    """State dict, configuration, the file's other entries and its SHA-256, checked, no network built.

    One reader for ``load_checkpoint`` and ``train --init``/``--resume``: an upstream ``.pth`` (read with
    ``weights_only=True``) or a ``.safetensors`` file (configuration from its metadata, else inferred
    from the tensors), told apart by content, not by name.
    """
    path = Path(path)
    name = path.name
    data = _read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    from .safetensors_file import is_safetensors, read_safetensors, safetensors_config

    if is_safetensors(data):
        state, metadata = read_safetensors(data, name)
        cfg = config or safetensors_config(state, metadata, name)
        check_state(state, cfg, name)
        return state, cfg, {}, digest
    ckpt = _torch_load(data, name)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{name} holds a {type(ckpt).__name__}, not a HoverFast checkpoint dict")
    if "model_dict" in ckpt:
        state = ckpt["model_dict"]
        cfg = config or _config_from_checkpoint(ckpt, name)
        extras = {k: v for k, v in ckpt.items() if k != "model_dict"}
    elif config is not None:
        state, cfg, extras = ckpt, config, {}
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"{name} is a bare state dict: pass config=ModelConfig(...) to say its architecture")
    else:
        raise CheckpointError(f"{name} is not a HoverFast checkpoint (no 'model_dict'; keys: {', '.join(map(str, list(ckpt)[:6]))})")
    check_state(state, cfg, name)
    return state, cfg, extras, digest


def load_checkpoint(
    path: str | PathLike[str], device: str | torch.device = "auto", *, config: ModelConfig | None = None
) -> LoadedModel:
    """Load HoverFast weights (``.pth`` or ``.safetensors``, or a bare state dict with ``config``) for inference.

    Configuration comes from the file itself, so every legal depth, width, up-mode, batch-norm and block
    type loads. A pickle that would execute code is refused; safetensors files cannot hold code.
    """
    state, cfg, extras, digest = read_checkpoint(path, config=config)
    marker = recorded_marker_threshold(extras, Path(path).name)
    loaded = build_model(state, cfg, device=device, name=Path(path).name)
    log.info("Loaded %s: %s", Path(path).name, loaded.describe())
    return LoadedModel(net=loaded.net, config=cfg, device=loaded.device, source=str(path), sha256=digest,
                       parameters=loaded.parameters, marker_threshold=marker)


def save_checkpoint(
    path: str | PathLike[str],
    net: HoverFastNet,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    epoch: int = 0,
    best_loss: float = float("inf"),
    half: bool = False,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint in the upstream layout, so HoverFast itself can load it.

    ``half`` stores floating tensors as float16 (shipping size); loading converts back to float32.
    """
    state = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu()) for k, v in net.state_dict().items()}
    ckpt: dict[str, Any] = {
        "model_dict": state,
        "optim_dict": optimizer.state_dict() if optimizer is not None else {},
        "epoch": int(epoch),
        "best_loss_on_test": float(best_loss),
        **asdict(net.config),
    }
    if extra:
        ckpt.update(extra)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")  # unique: two runs never share it
    try:
        torch.save(ckpt, tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
