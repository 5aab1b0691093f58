"""Large GeoJSON files read by worker processes as well as by the caller: same nuclei, same errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely

from napari_hoverfast.core import geojson_parallel, geojson_read
from napari_hoverfast.core.geojson import GeoJSONError, write_detections
from napari_hoverfast.core.nuclei import Nuclei


@pytest.fixture
def in_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any file counts as large, slices are small, and one worker may start (xdist pins this
    test process to one core, where the reader would use none)."""
    monkeypatch.setattr(geojson_read, "PARSE_CHUNK", 64 << 10)
    monkeypatch.setattr(geojson_parallel, "PARALLEL_FROM", 0)
    monkeypatch.setattr(geojson_parallel, "usable_cores", lambda: 2)


def nuclei_file(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    centres = rng.uniform(50, 20_000, (n, 2))
    polygons = [shapely.Point(*c).buffer(rng.uniform(4, 9), quad_segs=5) for c in centres]
    classes = [("2+", (200, 50, 0)) if i % 5 == 0 else None for i in range(n)]
    write_detections(path, polygons, {"Area": rng.uniform(10, 90, n), "Tile": np.arange(n) // 50},
                     classifications=classes)
    return path


def same_nuclei(a: Nuclei, b: Nuclei) -> bool:
    return (len(a) == len(b)
            and np.array_equal(shapely.get_coordinates(a.polygons), shapely.get_coordinates(b.polygons))
            and list(a.classifications()) == list(b.classifications())
            and all(np.array_equal(a.measurements()[k], b.measurements()[k], equal_nan=True) for k in a.measurements()))


def test_workers_read_the_same_nuclei(tmp_path: Path, in_workers: None, caplog: pytest.LogCaptureFixture) -> None:
    path = nuclei_file(tmp_path / "many.geojson", 12_000)  # ~40 slices
    with caplog.at_level(logging.DEBUG, logger="napari_hoverfast.core.geojson"):
        parallel = Nuclei.read_geojson(path, 0.25)
    share = [r.getMessage() for r in caplog.records if "worker(s) read" in r.getMessage()]
    assert share and " 0 of " not in share[0], share  # the worker read some slices, this process the rest
    geojson_parallel.PARALLEL_FROM = 1 << 62  # monkeypatch restores it
    serial = Nuclei.read_geojson(path, 0.25)
    assert len(parallel) == 12_000 and same_nuclei(parallel, serial)
    assert list(parallel.classifications()).count("2+") == 2_400


def test_a_slice_the_workers_cannot_read_is_read_here_with_its_exact_error(tmp_path: Path, in_workers: None) -> None:
    path = nuclei_file(tmp_path / "bad.geojson", 8_000)
    data = json.loads(path.read_text())
    data["features"][37]["geometry"]["coordinates"][0].pop()  # an open ring near the start: a worker's slice
    data["features"][5000]["properties"]["measurements"]["Area"] = "NaN"  # QuPath's string form: the careful path
    path.write_text(json.dumps(data, separators=(",", ":")))
    with pytest.raises(GeoJSONError, match=r"feature 37 \(id [0-9a-f-]+\): geometry ring 0 is not closed"):
        Nuclei.read_geojson(path, 0.25)
    del data["features"][37]
    path.write_text(json.dumps(data, separators=(",", ":")))
    nuclei = Nuclei.read_geojson(path, 0.25)
    assert len(nuclei) == 7_999 and np.isnan(nuclei.measurements()["Area"][4999])


def test_a_worker_refuses_a_file_changed_under_it(tmp_path: Path) -> None:
    path = nuclei_file(tmp_path / "one.geojson", 20)
    raw = path.read_bytes()
    (start, stop), = geojson_read.slice_bounds(raw, 1 << 20)
    stat = path.stat()
    from napari_hoverfast.core.nuclei_columns import pack_part

    count, _ = geojson_read.read_slice_in_worker(str(path), start, stop, (stat.st_size, stat.st_mtime_ns), pack_part)
    assert count == 20
    assert geojson_read.read_slice_in_worker(str(path), start, stop, (stat.st_size + 1, stat.st_mtime_ns), pack_part) is None


def test_a_script_without_a_main_guard_reads_once(tmp_path: Path) -> None:
    """Workers are spawned and import the calling script again: without `if __name__ == "__main__":`
    the worker refuses to read (it would run the script twice), and this process reads it all."""
    path = nuclei_file(tmp_path / "many.geojson", 6_000)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from napari_hoverfast.core import geojson_parallel, geojson_read\n"
        "from napari_hoverfast.core.nuclei import Nuclei\n"
        "geojson_read.PARSE_CHUNK = 64 << 10\n"
        "geojson_parallel.PARALLEL_FROM = 0\n"
        "geojson_parallel.usable_cores = lambda: 2\n"
        f"print('nuclei', len(Nuclei.read_geojson({str(path)!r}, 0.25)))\n",
        encoding="utf-8",
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["nuclei", "6000"]
    assert "__main__" in proc.stderr  # the warning says what to add


def test_gzip_and_small_files_stay_in_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(geojson_parallel, "usable_cores", lambda: 8)
    assert geojson_parallel._workers_for(tmp_path / "a.geojson", geojson_parallel.PARALLEL_FROM, 40) == 3
    assert geojson_parallel._workers_for(tmp_path / "a.geojson", geojson_parallel.PARALLEL_FROM - 1, 40) == 0
    assert geojson_parallel._workers_for(tmp_path / "a.geojson.gz", geojson_parallel.PARALLEL_FROM, 40) == 0
    monkeypatch.setattr(geojson_parallel, "usable_cores", lambda: 1)
    assert geojson_parallel._workers_for(tmp_path / "a.geojson", geojson_parallel.PARALLEL_FROM, 40) == 0
