"""Pick the compute device at call time (never at import time: CUDA queries are slow and fork-unsafe)."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The requested device is not available on this machine."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; an explicit choice that is absent is an error."""
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("CUDA was requested but no CUDA GPU is available here (use --device cpu or auto)")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError("MPS was requested but Apple's Metal backend is not available here")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise DeviceError(f"Unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)
