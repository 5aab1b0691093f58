"""``napari-hoverfast cohort``: many slides on dask.distributed, with a table of outcomes in OUTDIR."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .cli import CliError, interrupted_status


def add_parser(sub: Any, common: Any) -> None:
    """The ``cohort`` sub-command and its options (those of ``segment`` that make sense for many slides)."""
    co = sub.add_parser("cohort", help="segment many slides (paths, globs or a CSV manifest) on dask.distributed")
    co.add_argument("inputs", nargs="+", help="slide paths, globs ('slides/*.svs') or a CSV manifest (path[, mpp, tissue_mask, roi])")
    co.add_argument("-o", "--outdir", type=Path, required=True, help="folder for each slide's GeoJSON, CSV, run.json and cohort.csv")
    co.add_argument("--scheduler", default=None, metavar="ADDRESS", help="an existing dask scheduler (default: a LocalCluster here)")
    co.add_argument("--workers", type=common.cluster_workers, default=None,
                    help="LocalCluster worker processes (default: one per GPU, else one per 4 cores, at least 1)")
    co.add_argument("--format", choices=(".geojson.gz", ".geojson"), default=".geojson.gz", help="GeoJSON output (.geojson.gz)")
    co.add_argument("--no-csv", action="store_true", help="do not write the per-nucleus CSV")
    co.add_argument("--force", action="store_true", help="run slides again even if their run.json says complete")
    common.add_run_options(co)


def run_cohort_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .cli_segment import run_options
    from .core.cohort import (
        CohortError,
        SlideOutcome,
        local_cluster,
        plan_jobs,
        read_inputs,
        run_cohort,
        write_table,
    )
    from .core.job import SlideJob

    try:
        entries = read_inputs(args.inputs)
    except CohortError as exc:
        raise CliError(str(exc)) from None
    outdir = args.outdir
    outdir.mkdir(parents=True, exist_ok=True)
    if not os.access(outdir, os.W_OK):
        raise CliError(f"cannot write to {outdir}")
    options = run_options(args, workers=0)  # a worker runs one slide at a time; dask runs the slides side by side
    template = SlideJob(slide="", mpp=args.mpp, model=str(args.model) if args.model else None, device=args.device,
                        options=options, cache=str(args.cache) if args.cache else None)
    jobs = plan_jobs(entries, outdir, template, suffix=args.format, csv_out=not args.no_csv)

    import logging

    from distributed import Client

    if not args.verbose:  # distributed logs every connection at INFO: keep the terminal to the bar
        logging.getLogger("distributed").setLevel(logging.WARNING)

    cluster = None
    if args.scheduler:
        client = Client(args.scheduler)
        threads = None
    else:
        cluster, threads = local_cluster(args.workers)
        client = Client(cluster)
    print(f"dask: {len(client.scheduler_info()['workers'])} worker(s); dashboard {client.dashboard_link}", file=sys.stderr)
    outcomes: list[SlideOutcome] = []
    table = outdir / "cohort.csv"
    cancel = threading.Event()
    started = time.perf_counter()
    interrupted = False
    try:
        with tqdm(total=len(jobs), unit="slide", dynamic_ncols=True, file=sys.stderr) as bar:
            def tiles(done: int, total: int) -> None:
                if total:
                    bar.set_postfix_str(f"running slides: {done}/{total} tiles", refresh=True)

            run = run_cohort(jobs, client, skip_done=not args.force, threads=threads, cancel=cancel, on_progress=tiles)
            while True:
                try:
                    outcome = next(run)
                except StopIteration:
                    break
                except KeyboardInterrupt:
                    if cancel.is_set():
                        raise
                    interrupted = True
                    cancel.set()  # running slides stop after their batch and write their partial sets
                    bar.set_description("stopping")
                    continue
                outcomes.append(outcome)
                write_table(table, outcomes)
                bar.update(1)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "partial", "failed", "not started")}
    stopped = f", {counts['not started']} not started" if counts["not started"] else ""
    print(f"{len(jobs)} slides: {counts['done']} done, {counts['skipped']} skipped, {counts['partial']} partial, "
          f"{counts['failed']} failed{stopped} in {time.perf_counter() - started:.1f} s; table {table}")
    if interrupted or cancel.is_set():
        print("napari-hoverfast: interrupted: finished slides are kept, running ones wrote their partial results",
              file=sys.stderr)
        return interrupted_status()
    return 1 if counts["failed"] else 0
