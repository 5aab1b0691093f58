"""HoverFast weights in ``.safetensors`` files: read, infer the configuration, write.

Upstream now ships ``hoverfast_crosstissue_best_model.safetensors`` with the same state-dict names as
its ``.pth``. A safetensors file holds tensors and a string→string metadata table, never code. The
configuration is taken from the metadata when it is there (upstream's key names, values as text or
JSON) and otherwise inferred from the tensors' names and shapes; what cannot be inferred is refused
with a sentence, never guessed.
"""

from __future__ import annotations

import contextlib
import json
import math
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from .model import CONFIG_KEYS, CheckpointError, HoverFastNet, ModelConfig

#: The first 8 bytes are the header length (little endian), then the JSON header starts with "{".
HEADER_START = b"{"


def is_safetensors(data: bytes) -> bool:
    """True when ``data`` starts like a safetensors file (header length, then a JSON object)."""
    if len(data) < 10:
        return False
    header = int.from_bytes(data[:8], "little")
    return 2 <= header <= 100_000_000 and data[8:9] == HEADER_START  # a truncated file still says what it is


def read_safetensors(data: bytes, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file already in memory; damage becomes a CheckpointError."""
    from safetensors.torch import load

    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise CheckpointError(f"{name} is truncated or corrupt: its header needs {header_len} bytes, the file has {len(data)}")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError as exc:
        raise CheckpointError(f"{name}: the safetensors header is not valid JSON ({exc}); the file is damaged") from exc
    metadata = header.get("__metadata__") or {} if isinstance(header, dict) else {}
    try:
        state = load(data)
    except Exception as exc:  # the library raises its own error type for every kind of damage
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{name} is truncated or corrupt: {first[0] if first else type(exc).__name__}") from exc
    if not isinstance(metadata, dict):
        metadata = {}
    return state, {str(k): str(v) for k, v in metadata.items()}


def _parse(key: str, text: str, name: str) -> Any:
    """One metadata value: an integer, a boolean or a word, written as text or as JSON."""
    value: Any = text.strip()
    with contextlib.suppress(ValueError):
        value = json.loads(value)
    if key in ("padding", "batch_norm"):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
        if value in (0, 1):
            return bool(value)
    elif key in ("up_mode", "conv_block"):
        if isinstance(value, str):
            return value
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(value, float) and value.is_integer() and math.isfinite(value):
        return int(value)
    raise CheckpointError(f"{name}: metadata {key}={text!r} is not a valid value")


def config_from_metadata(metadata: dict[str, str], name: str) -> dict[str, Any]:
    """The configuration keys the metadata holds (top-level keys, or a JSON ``config`` entry)."""
    table: dict[str, Any] = dict(metadata)
    if "config" in metadata:
        try:
            nested = json.loads(metadata["config"])
        except ValueError as exc:
            raise CheckpointError(f"{name}: metadata 'config' is not JSON ({exc})") from exc
        if isinstance(nested, dict):
            table = {**{k: json.dumps(v) if not isinstance(v, str) else v for k, v in nested.items()}, **metadata}
    return {k: _parse(k, str(table[k]), name) for k in CONFIG_KEYS if k in table}


def _levels(state: dict[str, torch.Tensor], prefix: str) -> set[int]:
    return {int(k.split(".")[1]) for k in state if k.startswith(prefix) and k.split(".")[1].isdigit()}


def infer_config(state: dict[str, torch.Tensor], name: str) -> dict[str, Any]:
    """Depth, width, block type, up-mode and batch norm from the tensors' names and shapes."""
    levels = _levels(state, "down_path.")
    if not levels or levels != set(range(len(levels))):
        raise CheckpointError(f"{name}: no encoder levels 'down_path.N' found: not HoverFast weights")
    if "down_path.0.conv_3.block.0.weight" in state:
        conv_block, first = "msunet", state["down_path.0.conv_3.block.0.weight"]
    elif "down_path.0.block.0.weight" in state:
        conv_block, first = "unet", state["down_path.0.block.0.weight"]
    else:
        raise CheckpointError(f"{name}: cannot tell the block type (neither 'down_path.0.conv_3' nor 'down_path.0.block' tensors)")
    width = int(first.shape[0])
    if width < 1 or width & (width - 1):
        raise CheckpointError(f"{name}: the first layer has {width} channels, not a power of two; cannot infer wf")
    if "up_path.0.up.weight" in state:
        up_mode = "upconv"
    elif "up_path.0.up.1.weight" in state:
        up_mode = "upsample"
    elif len(levels) == 1:
        up_mode = "upconv"  # no decoder levels: the up-mode has no tensors and changes nothing
    else:
        raise CheckpointError(f"{name}: cannot tell the up-sampling mode (no 'up_path.0.up' tensors)")
    if "last.weight" not in state:
        raise CheckpointError(f"{name}: no 'last.weight' tensor: not HoverFast weights")
    return {
        "n_classes": int(state["last.weight"].shape[0]),
        "in_channels": int(first.shape[1]),
        "depth": len(levels),
        "wf": width.bit_length() - 1,
        "padding": True,  # HoverFast pads every convolution; the tensors are the same either way
        "batch_norm": any(k.endswith(".running_mean") for k in state),
        "up_mode": up_mode,
        "conv_block": conv_block,
    }


def safetensors_config(state: dict[str, torch.Tensor], metadata: dict[str, str], name: str) -> ModelConfig:
    """Metadata first, the tensors for the rest; a metadata value the tensors contradict is refused."""
    inferred = infer_config(state, name)
    declared = config_from_metadata(metadata, name)
    for key, value in declared.items():
        unseen = key == "padding" or (key == "up_mode" and inferred["depth"] == 1)  # no tensors show these
        if not unseen and inferred[key] != value:
            raise CheckpointError(f"{name}: metadata says {key}={value!r} but the tensors have {key}={inferred[key]!r}")
    values = {**inferred, **declared}
    if values["n_classes"] != 2:
        raise CheckpointError(f"Unsupported HoverFast configuration: n_classes={values['n_classes']!r} (HoverFast has 2)")
    if values["in_channels"] != 3:
        raise CheckpointError(f"Unsupported HoverFast configuration: in_channels={values['in_channels']!r} (RGB, 3, is needed)")
    return ModelConfig(**values)


def save_safetensors(path: str | PathLike[str], net: HoverFastNet, *, metadata: bool = True) -> None:
    """Write ``net``'s weights as safetensors (upstream names), with the configuration as metadata."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    meta = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in asdict(net.config).items()} if metadata else None
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(Path(path)), metadata=meta)
