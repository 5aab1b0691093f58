"""Cohorts on a real dask LocalCluster (worker processes): failures recorded, reruns skip, a killed
worker loses no slide, manifests override the pixel size, the model is loaded once per worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _pyramids import write_plain_tiff
from skimage import io

from napari_hoverfast.core.cohort import (
    SlideOutcome,
    plan_jobs,
    read_inputs,
    run_cohort,
    write_table,
)
from napari_hoverfast.core.job import SlideJob
from napari_hoverfast.core.outputs import read_sidecar
from napari_hoverfast.core.pipeline import RunOptions
from napari_hoverfast.core.tiling import TilingOptions

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def slides(tmp_path_factory, shared_dir: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("slides")
    image = io.imread(shared_dir / "data" / "tcga_tile.png")[..., :3]
    out = {
        "a": write_plain_tiff(folder / "a.tif", np.ascontiguousarray(image[:512, :512]), mpp=0.25),
        "b": write_plain_tiff(folder / "b.tif", np.ascontiguousarray(image[512:, 512:]), mpp=0.25),
        "big": write_plain_tiff(folder / "big.tif", image, mpp=0.25),
        "nompp": write_plain_tiff(folder / "nompp.tif", np.ascontiguousarray(image[:400, 600:])),
    }
    bad = folder / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\x00garbage" * 20)
    out["bad"] = bad
    return out


def _template(shared_dir: Path, **options) -> SlideJob:
    return SlideJob(slide="", model=str(shared_dir / "reference" / "ckpt_A.pth"), device="cpu",
                    options=RunOptions(workers=0, **options))


def _by_slide(outcomes: list[SlideOutcome]) -> dict[str, str]:
    return {Path(o.slide).stem: o.status for o in outcomes}


def test_three_slides_one_corrupt_then_a_rerun_skips_the_done(client, slides, shared_dir, tmp_path) -> None:
    entries = read_inputs([slides["a"], slides["b"], slides["bad"]])
    jobs = plan_jobs(entries, tmp_path, _template(shared_dir))
    first = list(run_cohort(jobs, client))
    assert _by_slide(first) == {"a": "done", "b": "done", "bad": "failed"}
    bad = next(o for o in first if o.status == "failed")
    assert "bad.tif" in bad.error and "\n" not in bad.error
    for name in ("a", "b"):
        side = read_sidecar(tmp_path / f"{name}.run.json")
        assert side["complete"] is True and (tmp_path / f"{name}.geojson.gz").exists() and (tmp_path / f"{name}.csv").exists()
    assert not list(tmp_path.glob(".*"))  # nothing half-written under any name
    write_table(tmp_path / "cohort.csv", first)
    rows = (tmp_path / "cohort.csv").read_text().splitlines()
    assert rows[0] == "slide,status,nuclei,tiles,seconds,error,output" and len(rows) == 4

    again = list(run_cohort(jobs, client))
    assert _by_slide(again) == {"a": "skipped", "b": "skipped", "bad": "failed"}
    assert all(o.nuclei > 0 for o in again if o.status == "skipped")
    # other options decide other nuclei: not skipped
    changed = plan_jobs(entries[:1], tmp_path, _template(shared_dir, min_area_um2=9.0))
    assert [o.status for o in run_cohort(changed, client)] == ["done"]


def test_a_manifest_overrides_the_pixel_size(client, slides, shared_dir, tmp_path) -> None:
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"path,mpp\n{slides['nompp']},0.25\n", encoding="utf-8")
    with_mpp = plan_jobs(read_inputs([manifest]), tmp_path / "with", _template(shared_dir))
    without = plan_jobs(read_inputs([slides["nompp"]]), tmp_path / "without", _template(shared_dir))
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    [ok] = run_cohort(with_mpp, client)
    [refused] = run_cohort(without, client)
    assert ok.status == "done" and read_sidecar(tmp_path / "with" / "nompp.run.json")["mpp_source"] == "user"
    assert refused.status == "failed" and "no resolution" in refused.error


def test_a_killed_worker_loses_no_slide(client, slides, shared_dir, tmp_path) -> None:
    """Kill the worker process running a slide: dask reschedules it; every slide ends done."""
    template = _template(shared_dir, tiling=TilingOptions(tile=224))
    jobs = plan_jobs(read_inputs([slides["big"], slides["a"]]), tmp_path, template)
    run = run_cohort(jobs, client)
    deadline = time.monotonic() + 60
    victim = None
    while victim is None:
        assert time.monotonic() < deadline, "no task started"
        busy = {w: tasks for w, tasks in client.processing().items() if tasks}
        victim = next(iter(busy), None)
        time.sleep(0.2)
    pid = client.run(os.getpid, workers=[victim])[victim]
    time.sleep(1.0)  # let it get into the slide
    os.kill(pid, signal.SIGKILL)
    outcomes = list(run)
    assert _by_slide(outcomes) == {"big": "done", "a": "done"}
    assert read_sidecar(tmp_path / "big.run.json")["tiles_done"] == 25


def test_the_model_is_loaded_once_per_worker(client, slides, shared_dir, tmp_path) -> None:
    jobs = plan_jobs(read_inputs([slides["a"], slides["b"]]), tmp_path, _template(shared_dir))
    list(run_cohort(jobs, client, skip_done=False))
    list(run_cohort(jobs, client, skip_done=False))

    def loads() -> int:
        from napari_hoverfast.core.job import cached_model

        return cached_model.cache_info().misses

    assert all(n <= 1 for n in client.run(loads).values())


def test_cohort_command_writes_the_table_and_reruns_skip(slides, shared_dir, tmp_path) -> None:
    cmd = [sys.executable, "-m", "napari_hoverfast.cli", "cohort", str(slides["a"]), str(slides["bad"]), "-o", str(tmp_path / "out"),
           "--model", str(shared_dir / "reference" / "ckpt_A.pth"), "--device", "cpu", "--workers", "1"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 1, first.stderr  # one slide failed
    assert "dashboard" in first.stderr and "Traceback" not in first.stderr
    assert first.stdout.strip().splitlines()[-1].startswith("2 slides: 1 done, 0 skipped, 0 partial, 1 failed")
    table = (tmp_path / "out" / "cohort.csv").read_text().splitlines()
    assert len(table) == 3
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert "1 skipped" in again.stdout.strip().splitlines()[-1]


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes_from_the_cache(slides, shared_dir, tmp_path) -> None:
    """Ctrl-C in the terminal (SIGINT to the whole process group): exit 130, no traceback, running
    slides keep their partial sets, none half-written; the same command again finishes from the cache."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = [sys.executable, "-m", "napari_hoverfast.cli", "cohort", str(slides["big"]), str(slides["a"]), "-o", str(out),
           "--model", str(shared_dir / "reference" / "ckpt_A.pth"), "--device", "cpu", "--workers", "1",
           "--tile-size", "384", "--cache", str(cache)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(cache.glob("*/??/*.npz")) + list(cache.glob("??/*.npz"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "the cohort ended before it could be stopped"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "1 partial" in stdout and "1 not started" in stdout
    assert (out / "big.partial.geojson.gz").exists() and not (out / "big.geojson.gz").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 done" in done.stdout
    side = read_sidecar(out / "big.run.json")
    assert side["complete"] is True and side["tiles_cached"] >= 3 and not (out / "big.partial.geojson.gz").exists()


def test_without_a_client_a_local_cluster_is_started_and_closed(slides, shared_dir, tmp_path) -> None:
    jobs = plan_jobs(read_inputs([slides["a"]]), tmp_path, _template(shared_dir))
    assert [o.status for o in run_cohort(jobs)] == ["done"]
