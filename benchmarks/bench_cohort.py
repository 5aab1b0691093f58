"""Cohort layer: four small slides, one dask worker against two, and against the same slides run one
after another in one process (what ``segment`` does), measured one after the other in this run.

    python benchmarks/bench_cohort.py [--shared ../shared]

The slides are the 2048² MoNuSeg mosaic (real 40× tissue) and its three mirror images, written as
TIFFs with their pixel size (``--size`` crops them); each is one tile. Prints seconds, the overhead of the cohort layer with
one worker (goal: within 10 %; shown with and without the LocalCluster's start) and the speed-up of
two workers over one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_fidelity import mosaic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--size", type=int, default=2048, help="slide side, px (at most 2048; one tile each)")
    args = parser.parse_args()
    import torch
    from distributed import Client, LocalCluster

    from napari_hoverfast.core.cohort import plan_jobs, read_inputs, run_cohort, run_one
    from napari_hoverfast.core.job import SlideJob, cached_model, run_slide_job
    from napari_hoverfast.core.pipeline import RunOptions, run_to_end

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image = mosaic(args.shared)
        size = args.size
        views = (image, image[:, ::-1], image[::-1], image[::-1, ::-1])  # four slides of the same real tissue
        paths = []
        for i, view in enumerate(views):
            path = work / f"slide{i}.tif"
            tile = np.ascontiguousarray(view[:size, :size])
            tifffile.imwrite(path, tile, photometric="rgb", resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
            paths.append(path)
        template = SlideJob(slide="", device="cpu", options=RunOptions(workers=0))
        entries = read_inputs(paths)

        # baseline: one process, one slide after another, as `segment` runs them
        model = cached_model(None, "cpu")
        (work / "warm").mkdir()
        run_to_end(run_slide_job(plan_jobs(entries[:1], work / "warm", template)[0], model=model))  # warm-up
        (work / "seq").mkdir()
        start = time.perf_counter()
        counts = [len(run_to_end(run_slide_job(job, model=model)).run.nuclei) for job in plan_jobs(entries, work / "seq", template)]
        t_seq = time.perf_counter() - start

        rows = [("one process, one slide after another", t_seq, None, sum(counts))]
        for n in (1, 2):
            out = work / f"cohort{n}"
            out.mkdir()
            start = time.perf_counter()
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
            client = Client(cluster)
            ready = time.perf_counter()
            jobs = plan_jobs(entries, out, template)
            # warm each worker (model load, oneDNN kernels) with one slide, as the baseline was warmed
            warm = plan_jobs(entries[:1], work / f"warm{n}", template)[0]
            (work / f"warm{n}").mkdir()
            client.run(run_one, warm, None, max(1, cores // n))
            warmed = time.perf_counter()
            outcomes = list(run_cohort(jobs, client, threads=max(1, cores // n)))
            end = time.perf_counter()
            client.close()
            cluster.close()
            assert all(o.status == "done" for o in outcomes), outcomes
            rows.append((f"cohort, {n} worker(s) × {max(1, cores // n)} thread(s)", end - warmed, ready - start,
                         sum(o.nuclei for o in outcomes)))
    print(f"torch {torch.__version__}, {cores} cores; 4 slides of {args.size}² (one tile each)")
    print("| run | seconds (slides) | cluster start (s) | nuclei | / one process |\n|---|---|---|---|---|")
    for name, seconds, startup, nuclei in rows:
        print(f"| {name} | {seconds:.1f} | {'' if startup is None else f'{startup:.1f}'} | {nuclei} | {seconds / t_seq:.2f} |")
    one, two = rows[1][1], rows[2][1]
    print(f"\ncohort layer with one worker: {one / t_seq - 1:+.1%} against one process "
          f"({(one + rows[1][2]) / t_seq - 1:+.1%} counting the cluster's start; goal within 10 %); "
          f"two workers: ×{one / two:.2f} over one")


if __name__ == "__main__":
    main()
