"""``napari-hoverfast segment``: build a :class:`SlideJob`, run it with a tqdm bar, report one line."""

from __future__ import annotations

import argparse
import sys

from .cli import CliError, interrupted_status

#: Runs estimated to take longer than this (seconds) are announced before they start.
LARGE_RUN_SECONDS = 3600.0


def run_options(args: argparse.Namespace, *, workers: int | None = None):  # type: ignore[no-untyped-def]
    """The run options the command line gives (shared by ``segment`` and ``cohort``)."""
    from .core.ihc import IhcOptions
    from .core.pipeline import RunOptions
    from .core.tiling import TilingOptions

    try:
        if args.ihc_thresholds is not None and args.stain != "ihc_dab":
            raise ValueError("--ihc-thresholds score IHC runs: give --stain ihc_dab too")
        ihc = IhcOptions(tuple(args.ihc_thresholds)) if args.ihc_thresholds is not None else IhcOptions()
        return RunOptions(
            tiling=TilingOptions(tile=args.tile_size), memory_gb=args.memory_gb, batch_size=args.batch_size, stain=args.stain,
            min_area_um2=args.min_area, max_area_um2=args.max_area, simplify=args.simplify,
            mask_threshold=args.prob_threshold, marker_threshold=args.marker_threshold, workers=workers, ihc=ihc,
            precision=args.precision, compile=args.compile, tta=args.tta, min_solidity=args.min_solidity,
            stain_vectors=args.stain_vectors,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None


def build_job(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The job the command line describes; options are checked here, before any work."""
    from .core.job import SlideJob
    from .core.outputs import check_outputs
    from .core.tiling import Box

    options = run_options(args, workers=args.workers)
    try:
        job = SlideJob(
            slide=str(args.input), mpp=args.mpp, regions=(Box(*args.roi),) if args.roi else None,
            tissue_mask=str(args.tissue_mask) if args.tissue_mask else None, model=str(args.model) if args.model else None,
            device=args.device, options=options, output=str(args.output), csv=str(args.csv) if args.csv else None,
            cache=str(args.cache) if args.cache else None,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    assert job.outputs is not None
    check_outputs(job.outputs, inputs=(args.input, args.model, args.tissue_mask))
    check_outputs(job.outputs.partial(), inputs=(args.input, args.model, args.tissue_mask))
    return job


def announce_large_run(job, tiles: int) -> None:  # type: ignore[no-untyped-def]
    """One line on stderr before a run far larger than usual (a wrong --mpp or --roi, or a whole
    slide on a CPU), with its estimated duration; the run goes on."""
    import torch

    from .core.job import cached_model, estimate_seconds
    from .core.speed import cpu_plan, usable_cores

    device = cached_model(job.model, job.device).device.type  # loaded already: the run has started
    workers = job.options.workers if job.options.workers is not None else cpu_plan(usable_cores(), device)[1]
    tile = job.options.tiling.tile
    seconds = estimate_seconds(tiles, tile, device, workers=workers, threads=torch.get_num_threads())
    if seconds > LARGE_RUN_SECONDS:
        hours = seconds / 3600
        took = f"{hours / 24:,.1f} days" if hours >= 48 else f"{hours:,.1f} hours"
        print(f"napari-hoverfast: a large run: {tiles:,} tiles of {tile} px, about {took} on this {device} "
              "(an estimate); it goes on, and Ctrl-C stops it keeping the nuclei found so far", file=sys.stderr)


def run_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .core.job import run_slide_job
    from .core.pipeline import Progress

    job = build_job(args)
    run = run_slide_job(job)
    first = next(run)  # opens the slide and plans the run: bad input fails here, before the bar
    if isinstance(first, Progress):
        announce_large_run(job, first.tiles_total)
    with tqdm(total=first.tiles_total if isinstance(first, Progress) else 0, unit="tile", dynamic_ncols=True, file=sys.stderr) as bar:
        while True:
            try:
                try:
                    event = next(run)
                except KeyboardInterrupt:  # arrived outside the run's own code: hand it to the run
                    event = run.throw(KeyboardInterrupt())
            except StopIteration as stop:
                done = stop.value
                break
            if isinstance(event, Progress):
                bar.total = event.tiles_total
                bar.n = event.tiles_done
                bar.set_postfix(nuclei=event.nuclei)
                bar.refresh()
    result = done.run
    cached = f" ({result.tiles_cached} from the cache)" if result.tiles_cached else ""
    ihc = ""
    if result.nuclei.ihc is not None:  # IHC runs: QuPath's positivity summary in the same line
        from .core.ihc import summarize

        ihc = f"; IHC {summarize(result.nuclei).line()}"
    summary = (
        f"{len(result.nuclei)} nuclei in {len(result.tiles_done)}/{len(result.tiles)} tiles{cached}{ihc}, "
        f"{result.seconds:.1f} s; wrote {', '.join(str(p) for p in done.written)}"
    )
    print(summary)
    if result.interrupted:
        print("napari-hoverfast: interrupted: the nuclei found so far were written as the partial result above", file=sys.stderr)
        return interrupted_status()
    if result.error:
        raise CliError(f"run stopped early ({result.error}); the nuclei found so far were written as the partial result")
    if result.cancelled:
        raise CliError("run cancelled; the nuclei found so far were written as the partial result")
    return 0
