"""The embedded default model: shipped inside the package, checked by hash before use.

See ``docs/MODEL_CARD.md`` for its data, terms, recipe and scores.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import torch

from .model import CheckpointError, LoadedModel, load_checkpoint

FILENAME = "hoverfast_default.pth"
#: SHA-256 of the shipped file; loading refuses a file that differs (damaged or replaced install).
SHA256 = "11fd0eee2e38a615d7e29e3d46f6f7659036b8f677fa68f28d686a85717d660e"


def default_model_path() -> Path:
    """Where the embedded weights live (inside the installed package)."""
    return Path(str(resources.files("napari_hoverfast") / "data" / FILENAME))


def has_default_model() -> bool:
    return bool(SHA256) and default_model_path().is_file()


def load_default_model(device: str | torch.device = "auto") -> LoadedModel:
    """Load the embedded model after checking its SHA-256."""
    path = default_model_path()
    if not SHA256 or not path.is_file():
        raise CheckpointError("This installation has no embedded default model: choose a checkpoint (--model FILE.pth)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256:
        raise CheckpointError(f"The embedded model {path} is damaged (SHA-256 {digest[:12]}… instead of {SHA256[:12]}…): reinstall napari-hoverfast")
    return load_checkpoint(path, device=device)


def load_model(path: str | Path | None, device: str | torch.device = "auto") -> LoadedModel:
    """A checkpoint the user chose, or the embedded default when ``path`` is None."""
    return load_default_model(device) if path is None else load_checkpoint(path, device=device)
