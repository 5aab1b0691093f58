"""What makes inference fast on the machine at hand, decided in one place.

- ``native_bf16``: bfloat16 autocast pays only where the CPU computes bf16 natively (AVX512-BF16 or
  AMX); elsewhere it is emulated and slower than float32.
- ``fold_batch_norm``: at inference a batch norm is an affine map, so it folds into the convolution
  before it (one pass over the activations fewer).
- ``tune_malloc``: glibc hands large blocks (the activations of a 2048² tile are hundreds of MB) back
  to the kernel on every free and maps them fresh on the next forward, and the kernel zeroes every
  page again: millions of page faults per tile, a third of the CPU time in the kernel. Keeping freed
  memory in the heap removes that; the cost is that the peak stays reserved.
- ``cpu_plan``: the network's threads and the post-processing workers share the cores.
- ``tile_for_memory``: on a CPU one forward pass holds all of a tile's activations at once, so the
  tile's side is what bounds a run's memory; it shrinks to fit the budget at the precision in use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
import logging
import os
import sys

import torch
from torch import nn

from .worker_pool import usable_cores  # noqa: F401 - re-exported: the core plan lives here

log = logging.getLogger(__name__)

#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: Freed memory kept by the heap before it is returned to the system.
TRIM_THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """True when this CPU has bf16 arithmetic units (Linux ``/proc/cpuinfo`` flags)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


@functools.lru_cache(maxsize=1)
def tune_malloc() -> bool:
    """Keep large freed blocks in glibc's heap (once per process); False where there is no glibc."""
    if not sys.platform.startswith("linux") or os.environ.get("NAPARI_HOVERFAST_NO_MALLOPT"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("glibc heap tuned for large activations: %s", ok)
    return ok


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).to(conv.weight.device)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def fold_batch_norm(module: nn.Module) -> int:
    """Fold every Conv2d → BatchNorm2d pair of ``nn.Sequential`` children in place; return how many.

    Only for inference (eval mode): the folded network no longer updates batch statistics.
    """
    folded = 0
    for child in module.modules():
        if not isinstance(child, nn.Sequential):
            continue
        names = list(child._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = child._modules[a], child._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                child._modules[a] = _fold(conv, bn)
                child._modules[b] = nn.Identity()
                folded += 1
    return folded


def cpu_plan(cores: int, device_type: str) -> tuple[int, int]:
    """(network threads, post-processing workers) for ``cores``.

    On a GPU the network needs one feeding thread; the rest post-process (up to 8 workers). On a
    CPU with 4 cores or fewer every core goes to the network and post-processing runs between
    batches: a worker process there only takes cores from the forward (measured on 2 cores: the
    pipelined run 1.2–2.7× slower). With more cores, a quarter post-process, as post-processing is
    about a fifth of a tile's CPU time with bf16.
    """
    if device_type != "cpu":
        return max(1, min(4, cores)), max(0, min(8, cores - 2))
    if cores <= 4:
        return cores, 0
    workers = cores // 4
    return cores - workers, workers


def reader_threads(cores: int, device_type: str) -> int:
    """Threads decoding slide tiles: one on a CPU (its cores run the network), more to feed a GPU."""
    return 1 if device_type == "cpu" else max(2, min(8, cores // 2))


#: Device memory one pixel of a tile's input needs in a forward pass at half precision (activations of
#: both decoders with the skips; measured on the CPU at float32: 630 bytes, halved), with margin.
CUDA_BYTES_PER_PIXEL = 400


def cuda_batch_size(device: torch.device, tile_pixels: int, *, most: int = 32) -> int:
    """Tiles per forward pass that fit in the GPU's free memory (60 % of it), at least 1."""
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(most, int(0.6 * free // (tile_pixels * CUDA_BYTES_PER_PIXEL))))


#: Peak process memory per input pixel of one CPU forward pass (bytes), with the heap tuning above on,
#: process and model included: the most measured at the inputs the budget chooses between
#: (``benchmarks/bench_memory.py``). float32, the forward in row strips (``network.by_rows``), on a
#: 2-core AVX2 CPU: 2048² 2.52–2.79 GB, 2208² 2.52–3.09 GB (517–665 B/px: the heap's kept blocks
#: fragment differently from run to run). bf16: 600 B/px at 2208², measured on an AVX512-BF16 CPU
#: before the row strips, so an upper bound (a CPU without bf16 units emulates it: no use measuring).
CPU_FORWARD_BYTES_PER_PIXEL = {"fp32": 640, "bf16": 600, "fp16": 600}
#: Cells shrink in steps of this (px), and never below ``SMALLEST_FITTED_TILE``.
TILE_STEP = 64
SMALLEST_FITTED_TILE = 512


def tile_for_memory(tile: int, overlap: int, precision: str, memory_gb: float | None, batch_size: int = 1) -> int:
    """The largest cell ≤ ``tile`` px whose forward pass (input = cell + ``overlap``) fits ``memory_gb``.

    ``None`` keeps ``tile``. A budget too small even for ``SMALLEST_FITTED_TILE`` is refused with the
    least that would do, rather than silently run over it.
    """
    if memory_gb is None:
        return tile
    per_pixel = CPU_FORWARD_BYTES_PER_PIXEL[precision] * max(1, batch_size)
    side = int((memory_gb * 1e9 / per_pixel) ** 0.5)
    fitted = (side - overlap) // TILE_STEP * TILE_STEP
    if fitted < min(tile, SMALLEST_FITTED_TILE):
        least = per_pixel * (min(tile, SMALLEST_FITTED_TILE) + overlap) ** 2 / 1e9
        raise ValueError(f"a memory budget of {memory_gb:g} GB is too small for a {precision} forward pass "
                         f"of a {min(tile, SMALLEST_FITTED_TILE)} px tile: give at least {least:.1f} GB")
    return min(tile, fitted)
