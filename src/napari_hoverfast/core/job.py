"""One slide job, one runner: what the CLI, the widget and the cohort runner all build and run.

A :class:`SlideJob` is small, frozen and picklable (paths and options, no open file or model), so a
cohort can ship it to another process or machine. :func:`run_slide_job` opens the slide, applies the
rules every caller must agree on, runs the pipeline and, when the job names outputs, writes them as
one set. The rules, once:

- a slide without a resolution is an error unless the job gives one (``mpp``); none is assumed;
- a plain image or a small single-level scan (≤ 8192 px a side) without regions is processed whole;
- otherwise a whole-slide job runs on tissue (found automatically, or from ``tissue_mask``), and a
  slide on which no tissue is found is an error that says what to do.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Generator
from dataclasses import asdict, astuple, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .cache import TileCache
from .focus import Focus
from .model import LoadedModel
from .outputs import OutputSet, write_outputs
from .pipeline import (
    NucleusBatch,
    Progress,
    RunError,
    RunOptions,
    RunResult,
    segment_slide,
    slide_geometry,
)
from .pipeline import run_to_end as drain  # noqa: F401 - drains a job generator too
from .tiling import Box
from .tissue import TissueMask

log = logging.getLogger(__name__)

#: Single-level images up to this size (px a side) without regions are segmented whole, no tissue step.
SMALL_IMAGE = 8192


@dataclass(frozen=True)
class SlideJob:
    """Everything one slide's run needs, by value.

    ``regions`` are level-0 boxes (``None``: the whole slide, on tissue); ``model`` a checkpoint path
    (``None``: the embedded model); ``output``/``csv`` the files to write (none: the caller handles
    the result); ``cache`` a folder for the tile cache (``None``: off) and ``cache_max_bytes`` its cap.
    ``skip_glass`` keeps only the regions' tiles that touch tissue (found automatically).
    """

    slide: str
    mpp: float | None = None
    regions: tuple[Box, ...] | None = None
    tissue_mask: str | None = None
    model: str | None = None
    device: str = "auto"
    options: RunOptions = field(default_factory=RunOptions)
    output: str | None = None
    csv: str | None = None
    cache: str | None = None
    cache_max_bytes: int | None = None
    priority: tuple[float, float] | None = None
    skip_glass: bool = False

    def __post_init__(self) -> None:
        if self.csv is not None and self.output is None:
            raise RunError("a CSV output needs a GeoJSON output beside it")
        if self.regions is not None and self.tissue_mask is not None:
            raise RunError("a tissue mask applies to whole-slide runs; with regions (--roi) it would be ignored: give one or the other")

    def signature(self) -> dict[str, Any]:
        """What decides the nuclei (not where they go, nor how fast): a rerun with an equal
        signature and the same model hash may skip this slide. JSON-ready."""
        options = {k: v for k, v in asdict(self.options).items() if k not in ("workers", "read_ahead", "batch_size")}
        if self.options.stain != "ihc_dab":  # IHC thresholds classify IHC runs only: H&E signatures stay as they were
            options.pop("ihc", None)
        if self.options.stain_vectors == "default":  # only then: earlier signatures stay valid
            options.pop("stain_vectors", None)
        data = {
            "slide": str(Path(self.slide).resolve()), "mpp": self.mpp, "tissue_mask": self.tissue_mask,
            "regions": [astuple(r) for r in self.regions] if self.regions else None, "device": self.device,
            "options": options,
        }
        if self.skip_glass:  # only then: earlier signatures stay valid
            data["skip_glass"] = True
        return json.loads(json.dumps(data, default=str))

    @property
    def outputs(self) -> OutputSet | None:
        if self.output is None:
            return None
        return OutputSet(Path(self.output), Path(self.csv) if self.csv else None)


@dataclass
class JobResult:
    """A job's run and the files written (the partial set when the run did not complete)."""

    run: RunResult
    written: list[Path]
    mpp_source: str

    @property
    def complete(self) -> bool:
        return self.run.complete


@lru_cache(maxsize=4)
def cached_model(path: str | None, device: str) -> LoadedModel:
    """A model loaded once per process (cohort workers run many slides with one)."""
    from .default_model import load_model

    return load_model(Path(path) if path else None, device=device)


def open_cache(job: SlideJob) -> TileCache | None:
    """The job's tile cache, or ``None``; an unusable folder is a :class:`~napari_hoverfast.core.cache.CacheError`."""
    if job.cache is None:
        return None
    return TileCache(job.cache, max_bytes=job.cache_max_bytes)


def run_slide_job(
    job: SlideJob,
    *,
    model: LoadedModel | None = None,
    cancel: threading.Event | None = None,
    cache: TileCache | None = None,
    tissue: TissueMask | None = None,
    cache_only: bool = False,
    focus: Focus | None = None,
) -> Generator[Progress | NucleusBatch, None, JobResult]:
    """Run ``job``: yields progress and nucleus batches, returns a :class:`JobResult`.

    ``model`` and ``cache`` may be handed in already open (the widget keeps both); otherwise they
    come from the job. Outputs, when the job names them, are written whatever the outcome: the final
    set for a complete run, ``NAME.partial.*`` otherwise. ``tissue`` is the slide's tissue mask when
    the caller keeps one (else found when needed); ``cache_only`` and ``focus`` go to
    :func:`~napari_hoverfast.core.pipeline.segment_slide`.
    """
    from .slide import Slide

    outputs = job.outputs
    model = model or cached_model(job.model, job.device)
    cache = cache if cache is not None else open_cache(job)
    with Slide(job.slide, mpp=job.mpp) as slide:
        slide_geometry(slide)  # the pixel-size rule, checked before any tissue detection
        mpp_source = "user" if job.mpp is not None else "file"
        regions, tissue = _scope(job, slide, tissue)
        result = yield from segment_slide(
            slide, model, regions, job.options, tissue=tissue, priority=job.priority, cancel=cancel, cache=cache,
            cache_only=cache_only, focus=focus,
        )
    written: list[Path] = []
    if outputs is not None:
        sidecar = {
            **result.parameters, "tiles_done": len(result.tiles_done), "tiles_total": len(result.tiles),
            "tiles_cached": result.tiles_cached, "error": result.error, "cancelled": result.cancelled,
            "interrupted": result.interrupted, "mpp_source": mpp_source, "seconds": round(result.seconds, 3),
            "job": job.signature(),
        }
        written = write_outputs(result.nuclei, outputs, complete=result.complete, sidecar=sidecar)
    return JobResult(run=result, written=written, mpp_source=mpp_source)


def _scope(job: SlideJob, slide: Any, known: TissueMask | None = None) -> tuple[list[Box] | None, Any]:
    """The job's regions (on tissue with ``skip_glass``), or the whole small image, or ``None`` with the slide's tissue."""
    from .tissue import mask_from_image, tissue_mask

    if job.regions is not None:
        return list(job.regions), (known or tissue_mask(slide)) if job.skip_glass else None
    if job.tissue_mask is None and slide.level_count == 1 and max(slide.dimensions) <= SMALL_IMAGE:
        return [Box(0, 0, *slide.dimensions)], None
    if job.tissue_mask:
        tissue = mask_from_image(job.tissue_mask, slide.dimensions)
    else:
        tissue = known or tissue_mask(slide)
    if not tissue.mask.any():
        where = f"the mask {job.tissue_mask}" if job.tissue_mask else slide.name
        raise RunError(f"No tissue found on {where}: give regions (--roi) or a tissue mask (--tissue-mask)")
    return None, tissue


#: Seconds per tile pixel of the default network's forward pass, by device type. CPU: 9.4 µs/px
#: measured at 2048² on 2 threads, so 19 µs per thread (it scales with the threads torch uses); the
#: GPU figures are deliberately rough. Post-processing, 0.3 µs/px on one core, overlaps the network
#: in the worker processes, so the slower of the two sets the pace (without workers they take turns).
FORWARD_SECONDS_PER_PX = {"cpu": 1.9e-5, "cuda": 5e-8, "mps": 5e-7}
POSTPROCESS_SECONDS_PER_PX = 3e-7


def estimate_seconds(tiles: int, tile: int, device: str, *, workers: int = 1, threads: int = 1) -> float:
    """Roughly how long ``tiles`` tiles of ``tile`` px take on ``device`` (``cpu``, ``cuda``, ``mps``)
    with ``workers`` post-processing processes and ``threads`` CPU threads for the network: enough to
    warn before a run far larger than usual (a wrong ``--mpp`` or ``--roi``), not a promise."""
    pixels = tiles * tile * tile
    forward = pixels * FORWARD_SECONDS_PER_PX.get(device, FORWARD_SECONDS_PER_PX["cpu"])
    if device == "cpu":
        forward /= max(1, threads)
    post = pixels * POSTPROCESS_SECONDS_PER_PX
    return forward + post if workers < 1 else max(forward, post / workers)  # without workers: in turn
