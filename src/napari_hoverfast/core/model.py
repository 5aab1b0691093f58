"""A strict loader for upstream HoverFast checkpoints (``.pth`` and ``.safetensors``).

The network itself is in :mod:`.network`; its names are re-exported here, where callers have always
found them.
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
from typing import Any

import torch

from .device import resolve_device
from .network import CONFIG_KEYS, CheckpointError, ConvBlock, HoverFastNet, ModelConfig, UpMode

__all__ = ["CONFIG_KEYS", "CheckpointError", "ConvBlock", "HoverFastNet", "LoadedModel", "ModelConfig", "UpMode",
           "build_model", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

log = logging.getLogger(__name__)

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
