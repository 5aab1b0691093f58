"""The values each option may take: one rule per option, shared by the option classes and the CLI.

A run or a training started with a value outside these ranges either fails late (hours in, or in a
worker process), allocates without bound (a batch of 10,000 tiles, a 100,000 px tile, a network
with 2^18 channels) or quietly does something else (``workers=-1`` meant "no pool"). The option
dataclasses (:class:`~napari_hoverfast.core.pipeline.RunOptions`,
:class:`~napari_hoverfast.core.postprocess.PostprocessOptions`,
:class:`~napari_hoverfast.core.tiling.TilingOptions`, :class:`~napari_hoverfast.core.train.TrainOptions`)
call these in ``__post_init__`` and the command line's argument types call the same functions, so
the Python API refuses exactly what the CLI refuses, with the same words. Each raises
:class:`ValueError` with one line that says what is allowed.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

#: Tiles (network inputs) in px a side: below 64 the zero-padding reach leaves nothing valid; above
#: 8192 one tile's maps and activations need tens of GB (2048 px needs 3.5 GB on the CPU).
TILE_RANGE = (64, 8192)
#: What may pick the checkpoint a training run keeps (``TrainOptions.select``, ``train --select``).
SELECT_RULES = ("loss", "pq")
#: Largest weight of one loss term against the others: beyond it the other terms are noise.
MAX_LOSS_WEIGHT = 100.0
#: Tiles per forward pass; and pixels per pass, whatever the tile (64 tiles of 2048 px).
MAX_BATCH = 256
MAX_BATCH_PIXELS = 64 * 2048 * 2048
#: µm²: a smallest nucleus above this (a 113 µm disc) would keep nothing.
MAX_MIN_AREA = 10_000.0
#: Network depth (levels) and width factor (2**wf channels at the top level) a training may use;
#: the widest layer (2**(wf + depth - 1) channels) at most 1024, about 100 M parameters, where
#: HoverFast's default (depth 3, wf 4) has 64 channels and 0.9 M parameters.
DEPTH_RANGE = (1, 8)
WF_RANGE = (0, 10)
MAX_CHANNELS = 1024
#: Training patches in px a side.
PATCH_RANGE = (32, 2048)
#: Learning rates above 1 diverge at once with AdamW (the default is 1e-3).
MAX_LEARNING_RATE = 1.0


def max_workers() -> int:
    """More post-processing processes than twice this machine's CPUs only add start-up and memory."""
    return max(4, 2 * (os.cpu_count() or 1))


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _within(name: str, value: int, bounds: tuple[int, int], why: str = "") -> int:
    lo, hi = bounds
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be from {lo} to {hi}, got {value}{why}")
    return value


def check_workers(value: Any) -> int:
    """Post-processing processes: 0 (in the run's own process) up to :func:`max_workers`."""
    return _within("workers", _integer("workers", value), (0, max_workers()), " (0 post-processes in the run's own process)")


def check_cluster_workers(value: Any) -> int:
    """Worker processes of a local cohort cluster: 1 up to :func:`max_workers`."""
    return _within("workers", _integer("workers", value), (1, max_workers()))


def check_batch_size(value: Any) -> int:
    return _within("batch size", _integer("batch size", value), (1, MAX_BATCH))


def check_tile_size(value: Any) -> int:
    return _within("tile size", _integer("tile size", value), TILE_RANGE, " px")


def check_batch_pixels(batch: int, side: int) -> None:
    """A batch of ``batch`` tiles (or patches) of ``side`` px must fit what one pass can hold."""
    if batch * side * side > MAX_BATCH_PIXELS:
        most = max(1, MAX_BATCH_PIXELS // (side * side))
        raise ValueError(f"batch size {batch} of {side} px tiles is too large for one pass (at most {most} at this size)")


#: GB a CPU forward pass may use (``RunOptions.memory_gb``): below 0.5 no useful tile fits.
MEMORY_GB_RANGE = (0.5, 4096.0)
#: The defaults of a run that the command line and the dock show too: kept here, which both import
#: without the engine (torch), so that each default is written once.
DEFAULT_TILE = 2048
#: A float32 2048 px cell's forward (2208² input) peaks at 2.5–3.1 GB; whole slides then stay under 4 GB.
DEFAULT_MEMORY_GB = 3.5


def check_memory_gb(value: Any) -> float:
    gb = _finite("memory budget", value)
    lo, hi = MEMORY_GB_RANGE
    if not lo <= gb <= hi:
        raise ValueError(f"memory budget must be from {lo:g} to {hi:g} GB, got {value!r}")
    return gb


def check_min_area(value: Any) -> float:
    area = _finite("minimum area", value)
    if not 0 <= area <= MAX_MIN_AREA:
        raise ValueError(f"minimum area must be from 0 to {MAX_MIN_AREA:g} µm², got {value!r}")
    return area


def check_max_area(value: Any) -> float:
    area = _finite("maximum area", value)
    if not area > 0:
        raise ValueError(f"maximum area must be above 0 µm², got {value!r}")
    return area


def check_areas(min_area: Any, max_area: Any) -> None:
    """The nucleus size filter, µm²: ``max_area`` (or ``None``) above ``min_area``."""
    low = check_min_area(min_area)
    if max_area is not None and not check_max_area(max_area) > low:
        raise ValueError(f"maximum area must be above the minimum area ({low:g} µm²), got {max_area!r}")


def check_depth(value: Any) -> int:
    return _within("depth", _integer("depth", value), DEPTH_RANGE)


def check_wf(value: Any) -> int:
    return _within("wf", _integer("wf", value), WF_RANGE, " (2**wf channels at the top level)")


def check_network(depth: int, wf: int) -> None:
    """A network a training may build: depth and wf in range, the widest layer at most 1024 channels."""
    check_depth(depth)
    check_wf(wf)
    widest = 2 ** (wf + depth - 1)
    if widest > MAX_CHANNELS:
        raise ValueError(
            f"depth {depth} with wf {wf} makes a {widest}-channel layer (at most {MAX_CHANNELS}: "
            f"depth + wf at most {int(math.log2(MAX_CHANNELS)) + 1})"
        )


def check_patch_size(value: Any, multiple: int = 1) -> int:
    """Training patches: in range, and a multiple of what the network halves to (``2**(depth - 1)``)."""
    size = _within("patch size", _integer("patch size", value), PATCH_RANGE, " px")
    if size % multiple:
        low = size // multiple * multiple
        raise ValueError(
            f"patch size {size} px is not a multiple of {multiple} (the network halves it "
            f"{int(math.log2(multiple))} times): try {max(low, multiple)} or {low + multiple}"
        )
    return size


def check_loss_weight(name: str, value: Any) -> float:
    """A loss term's weight: finite and above 0 (at 0 the term would silently stop training it)."""
    weight = _finite(name, value)
    if not 0 < weight <= MAX_LOSS_WEIGHT:
        raise ValueError(f"{name} must be above 0 and at most {MAX_LOSS_WEIGHT:g}, got {value!r}")
    return weight


def check_learning_rate(value: Any) -> float:
    rate = _finite("learning rate", value)
    if not 0 < rate <= MAX_LEARNING_RATE:
        raise ValueError(f"learning rate must be above 0 and at most {MAX_LEARNING_RATE:g}, got {value!r}")
    return rate
