"""The command line on real files: output QuPath accepts, a summary line, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from napari_hoverfast.cli import main
from napari_hoverfast.core.default_model import has_default_model
from napari_hoverfast.core.geojson import read_geojson


@pytest.fixture(scope="module")
def ckpt(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "ckpt_A.pth"


@pytest.fixture(scope="module")
def tile(shared_dir: Path) -> Path:
    return shared_dir / "data" / "tcga_tile.png"


def test_segment_writes_geojson_csv_and_sidecar(tmp_path: Path, tile: Path, ckpt: Path, capsys, qupath_check) -> None:
    out = tmp_path / "cells.geojson.gz"
    rc = main(["segment", str(tile), "-o", str(out), "--model", str(ckpt), "--roi", "100", "200", "300", "250",
               "--mpp", "0.25", "--device", "cpu", "--csv", str(tmp_path / "cells.csv"), "--workers", "0"])
    assert rc == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "nuclei in 1/1 tiles" in summary and str(out) in summary
    objects = read_geojson(out)
    assert all(o.object_type == "detection" for o in objects)
    for obj in objects:  # ownership is by pixel centroid; the simplified outline's may be off by < 1 px
        c = obj.geometry.centroid
        assert 99 <= c.x <= 401 and 199 <= c.y <= 451
    check = qupath_check(out, "--expect-type", "detection")
    assert check.returncode == 0, check.stdout
    rows = (tmp_path / "cells.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == len(objects) + 1
    sidecar = json.loads((tmp_path / "cells.run.json").read_text())
    assert sidecar["model_sha256"] and sidecar["regions"] == [{"x": 100, "y": 200, "w": 300, "h": 250}]
    assert sidecar["mpp"] == 0.25 and sidecar["nuclei"] == len(objects)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "napari_hoverfast.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda d: d / "missing.svs", "no such file"),
        (lambda d: (d / "notes.svs").write_text("not a slide") and d / "notes.svs", "notes.svs"),
        (lambda d: (d / "empty.tif").write_bytes(b"") or d / "empty.tif", "empty"),
    ],
    ids=["missing", "text-with-slide-extension", "empty"],
)
def test_bad_input_is_one_line(tmp_path: Path, ckpt: Path, make_input, message: str) -> None:
    path = make_input(tmp_path)
    proc = _cli("segment", str(path), "-o", str(tmp_path / "x.geojson"), "--model", str(ckpt))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("napari-hoverfast: error:") and message in lines[0]
    assert not (tmp_path / "x.geojson").exists()


def test_bad_model_unwritable_output_and_bad_roi(tmp_path: Path, tile: Path, ckpt: Path) -> None:
    (tmp_path / "weights.pth").write_text("nope")
    proc = _cli("segment", str(tile), "-o", str(tmp_path / "x.geojson"), "--model", str(tmp_path / "weights.pth"))
    assert proc.returncode == 2 and "not a PyTorch checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "afile").write_text("")
    proc = _cli("segment", str(tile), "-o", str(tmp_path / "afile" / "x.geojson"), "--model", str(ckpt))
    assert proc.returncode == 2 and "Cannot write" in proc.stderr
    proc = _cli("segment", str(tile), "-o", str(tmp_path / "x.geojson"), "--model", str(ckpt), "--roi", "5000", "0", "10", "10", "--mpp", "0.25")
    assert proc.returncode == 2 and "outside" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli("segment", str(tile), "-o", str(tmp_path / "x.txt"), "--model", str(ckpt))
    assert proc.returncode == 2 and ".geojson" in proc.stderr
    proc = _cli("segment", str(tile), "-o", str(tmp_path / "x.geojson"), "--model", str(ckpt), "--device", "quantum")
    assert proc.returncode == 2 and "Unknown device" in proc.stderr


@pytest.mark.skipif(has_default_model(), reason="the embedded default model exists")
def test_missing_model_without_default_is_an_error(tmp_path: Path, tile: Path) -> None:
    proc = _cli("segment", str(tile), "-o", str(tmp_path / "x.geojson"))
    assert proc.returncode == 2 and "--model" in proc.stderr


def test_help_lists_the_options() -> None:
    proc = _cli("segment", "--help")
    for option in ("--model", "--roi", "--device", "--batch-size", "--stain", "--min-area", "--mpp"):
        assert option in proc.stdout


def _wait_for_entries(cache: Path, n: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import time

    end = time.monotonic() + timeout
    while len(list(cache.glob("??/*.npz"))) < n:
        assert proc.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < end, "no tile reached the cache in time"
        time.sleep(0.05)


@pytest.mark.skipif(not has_default_model(), reason="needs the embedded default model")
def test_killed_or_interrupted_runs_resume_from_the_cache(tmp_path: Path, tile: Path) -> None:
    """Killed: nothing is written, the tiles done are cached. Ctrl-C: the partial set is written,
    exit 130, no traceback (post-processing worker processes included). The same command again
    resumes and writes the complete set, replacing nothing it should not."""
    import os
    import signal

    out, cache = tmp_path / "cells.geojson", tmp_path / "cache"
    cmd = [sys.executable, "-m", "napari_hoverfast.cli", "segment", str(tile), "-o", str(out), "--mpp", "0.25",
           "--roi", "0", "0", "896", "896", "--tile-size", "384", "--cache", str(cache), "--workers", "1", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_entries(cache, 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker processes, as a closed terminal does
    proc.communicate(timeout=60)
    assert not out.exists() and not (tmp_path / "cells.partial.geojson").exists()
    killed_at = len(list(cache.glob("??/*.npz")))

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_entries(cache, killed_at + 2, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    partial = tmp_path / "cells.partial.geojson"
    assert partial.exists() and not out.exists() and str(partial) in stdout
    side = json.loads((tmp_path / "cells.partial.run.json").read_text())
    assert side["complete"] is False and side["interrupted"] is True and side["tiles_cached"] >= killed_at

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "from the cache" in done.stdout
    side = json.loads((tmp_path / "cells.run.json").read_text())
    assert side["complete"] is True and side["tiles_done"] == side["tiles_total"] == 9  # 896² in cells of at most 384
    assert side["mpp_source"] == "user" and not partial.exists()
    assert len(read_geojson(out)) == side["nuclei"] > 100


def test_an_unusable_cache_folder_is_one_line(tmp_path: Path, tile: Path, ckpt: Path) -> None:
    (tmp_path / "a-file").write_text("")
    proc = _cli("segment", str(tile), "-o", str(tmp_path / "x.geojson"), "--model", str(ckpt), "--mpp", "0.25",
                "--cache", str(tmp_path / "a-file" / "cache"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"napari-hoverfast: error: Cannot use cache folder {tmp_path / 'a-file' / 'cache'}: Not a directory"]


@pytest.mark.skipif(not has_default_model(), reason="needs the embedded default model")
def test_sigterm_writes_the_partial_set_and_exits_143(tmp_path: Path, tile: Path) -> None:

    out, cache = tmp_path / "cells.geojson", tmp_path / "cache"
    cmd = [sys.executable, "-m", "napari_hoverfast.cli", "segment", str(tile), "-o", str(out), "--mpp", "0.25",
           "--roi", "0", "0", "896", "896", "--tile-size", "384", "--cache", str(cache), "--workers", "0", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_entries(cache, 2, proc)
    proc.terminate()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in stderr
    assert (tmp_path / "cells.partial.geojson").exists() and not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mpp", "100"], "not a microscope pixel size"),
        (["--mpp", "0.0001"], "not a microscope pixel size"),
        (["--mpp", "0.25", "--roi", "0", "0", "10", "10", "--tissue-mask", "m.png"], "tissue mask applies to whole-slide runs"),
    ],
)
def test_implausible_or_conflicting_options_are_one_line(tmp_path: Path, tile: Path, ckpt: Path, extra, message) -> None:
    proc = _cli("segment", str(tile), "-o", str(tmp_path / "x.geojson"), "--model", str(ckpt), *extra)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr


def test_the_memory_budget_reaches_the_run(tmp_path: Path, tile: Path, ckpt: Path) -> None:
    """``--memory-gb`` from the command line shrinks the CPU tiles and is recorded in run.json."""
    from napari_hoverfast.core.speed import tile_for_memory

    out = tmp_path / "cells.geojson"
    proc = _cli("segment", str(tile), "-o", str(out), "--model", str(ckpt), "--mpp", "0.25", "--device", "cpu",
                "--precision", "fp32", "--memory-gb", "0.5", "--roi", "0", "0", "1024", "1024", "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    run = json.loads((tmp_path / "cells.run.json").read_text())
    assert run["memory_gb"] == 0.5
    assert run["tiling"]["tile"] == tile_for_memory(2048, 160, "fp32", 0.5) < 1024
    assert run["tiles_total"] == 4  # 1024² in 2 × 2 fitted cells, not one 2048 px tile
