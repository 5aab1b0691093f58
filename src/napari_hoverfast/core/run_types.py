"""What a run takes and gives: its options, progress messages, nucleus batches, result and geometry.

Kept apart from the engine (``pipeline.py``) so that the CLI, the widget and the cohort runner can
build options and read results without the engine's threads and pools, and so each stays small.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

from .ihc import IhcOptions
from .limits import (
    DEFAULT_MEMORY_GB,
    check_batch_pixels,
    check_batch_size,
    check_memory_gb,
    check_workers,
)
from .model import UPSTREAM_MARKER_THRESHOLD, LoadedModel
from .nuclei import Nuclei
from .postprocess import PostprocessOptions
from .predict import Precision, PredictOptions, Stain, resolve_precision
from .speed import tile_for_memory
from .stain_vectors import check_setting
from .tiling import TileSpec, TilingOptions

log = logging.getLogger(__name__)


#: Upstream's reference resolution for 40× (µm per pixel).
REFERENCE_MPP = 0.2425


class RunError(ValueError):
    """A run that cannot start (bad region, missing resolution…); the message says what to change."""


@dataclass(frozen=True)
class RunOptions:
    """Everything that shapes a run besides the slide, the model and the regions."""

    tiling: TilingOptions = field(default_factory=TilingOptions)
    batch_size: int | None = None
    stain: Stain = "he"
    precision: Precision = "auto"
    #: ``torch.compile`` the network: faster forward after a compile of tens of seconds (whole slides).
    compile: bool = False
    #: Test-time augmentation: mean over the tile and its 3 flips (4× the forward; docs/MODEL_CARD.md).
    tta: bool = False
    min_area_um2: float = 5.0
    max_area_um2: float | None = None
    simplify: float = 6.0
    #: Watershed marker threshold; ``None``: the model's own (``LoadedModel.marker_threshold``).
    marker_threshold: float | None = None
    mask_threshold: float = 0.5
    min_solidity: float = 0.8
    workers: int | None = None
    read_ahead: int = 2
    #: GB one CPU forward pass may use: tiles shrink to fit it at the precision in use (float32 needs
    #: about twice the memory of bfloat16 per pixel), so whole-slide runs stay under 4 GB; ``None``:
    #: tiles as given. GPUs size their batch from free device memory instead.
    memory_gb: float | None = DEFAULT_MEMORY_GB
    #: IHC positivity thresholds (``stain="ihc_dab"`` runs classify nuclei Negative/1+/2+/3+).
    ihc: IhcOptions = field(default_factory=IhcOptions)
    #: The stain measurements' vectors: ``"default"`` (scikit-image's), ``"estimated"`` (from the
    #: slide, once per run: ``stain_vectors.py``) or two RGB OD vectors, haematoxylin first.
    stain_vectors: str | tuple[tuple[float, float, float], tuple[float, float, float]] = "default"

    def __post_init__(self) -> None:
        try:  # the ranges live in limits.py, shared with the command line
            if self.batch_size is not None:
                check_batch_pixels(check_batch_size(self.batch_size), self.tiling.tile)
            if self.workers is not None:
                check_workers(self.workers)
            if self.memory_gb is not None:
                check_memory_gb(self.memory_gb)
            self.postprocess(0.25)
            object.__setattr__(self, "stain_vectors", check_setting(self.stain_vectors, self.stain))
        except ValueError as exc:
            raise RunError(str(exc)) from None
        PredictOptions(stain=self.stain, precision=self.precision)

    def postprocess(self, work_mpp: float) -> PostprocessOptions:
        """The post-processing options at the working resolution (changing them re-uses cached maps)."""
        return PostprocessOptions(
            mpp=work_mpp, min_area_um2=self.min_area_um2, max_area_um2=self.max_area_um2, simplify=self.simplify,
            marker_threshold=UPSTREAM_MARKER_THRESHOLD if self.marker_threshold is None else self.marker_threshold, mask_threshold=self.mask_threshold, min_solidity=self.min_solidity,
        )


@dataclass(frozen=True)
class Progress:
    """Sent after every finished tile."""

    tiles_done: int
    tiles_total: int
    nuclei: int
    seconds: float

    @property
    def eta(self) -> float | None:
        """Seconds left at the pace so far; ``None`` before the first tile."""
        if self.tiles_done == 0:
            return None
        return self.seconds / self.tiles_done * (self.tiles_total - self.tiles_done)


@dataclass(frozen=True)
class NucleusBatch:
    """Nuclei new since the last batch (level-0 coordinates), and the tiles they came from."""

    nuclei: Nuclei
    tiles: tuple[int, ...]


@dataclass
class RunResult:
    """What a run found. ``cancelled``/``error`` say why it ended early; nuclei found so far are kept.

    ``interrupted`` is a Ctrl-C (KeyboardInterrupt) during the run; ``tiles_cached`` the tiles whose
    maps came from the cache instead of the network.
    """

    nuclei: Nuclei
    tiles: list[TileSpec]
    tiles_done: list[int]
    work_mpp: float
    scale: float
    cancelled: bool = False
    error: str | None = None
    interrupted: bool = False
    tiles_cached: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.cancelled and self.error is None


@dataclass(frozen=True)
class Geometry:
    """How level-0 pixels map to the working resolution: ``work = level0 · scale``."""

    mpp: float
    work_mpp: float

    @property
    def scale(self) -> float:
        return self.mpp / self.work_mpp


def working_geometry(mpp: float) -> Geometry:
    """Resample by a power of two to reach ≈40×, as upstream: ``40 · 2^round(log2(0.2425 / mpp))``."""
    factor = 2.0 ** round(math.log2(mpp / REFERENCE_MPP))
    geometry = Geometry(mpp=mpp, work_mpp=mpp / factor)
    if factor > 1:
        log.warning(
            "Slide resolution %.3f µm/px is coarser than 40×: upsampling ×%g to %.3f µm/px (upstream HoverFast refuses such slides)",
            mpp, factor, geometry.work_mpp,
        )
    return geometry


def slide_geometry(slide: Any) -> Geometry:
    """The slide's working geometry; a slide without a resolution is an error (never assumed)."""
    if slide.mpp is None:
        raise RunError(f"{slide.name} has no resolution (µm per pixel) in its metadata: give one (--mpp)")
    return working_geometry(float(slide.mpp))


def fit_tiles_to_memory(options: RunOptions, model: LoadedModel) -> RunOptions:
    """``options`` with the tiling resolved for ``model`` and, on a CPU, cells fitted to ``memory_gb``.

    One place for both, so that every run plans with the same tiling: a forward holds a tile's
    activations at once (in row strips, ``network.by_rows``), and float32 needs about twice the
    bytes of bf16, so the tile's side is what bounds a CPU run's memory.
    """
    tiling = options.tiling.resolved(model.config.padding_reach)
    if model.device.type == "cpu" and options.memory_gb is not None:
        precision = resolve_precision(options.precision, "cpu")
        try:
            tile = tile_for_memory(tiling.tile, tiling.overlap_px, precision, options.memory_gb, options.batch_size or 1)
        except ValueError as exc:
            raise RunError(str(exc)) from None
        if tile != tiling.tile:
            log.info("tiles of %d px instead of %d, so that one %s forward pass fits %.1f GB (--memory-gb)",
                     tile, tiling.tile, precision, options.memory_gb)
            tiling = replace(tiling, tile=tile)
    return replace(options, tiling=tiling)
