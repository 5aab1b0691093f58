"""Shared fixtures: the read-only data folder next to the repository and the QuPath GeoJSON checker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist, pin each worker to its own share of the cores.

    The product sizes its torch threads and workers from the affinity mask (``speed.usable_cores``),
    so two workers on 2 cores each run on one core instead of both spinning OpenMP threads on both;
    subprocesses the tests start inherit the mask.
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker.startswith("gw") or not count or not hasattr(os, "sched_getaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    index, count_ = int(worker[2:]), int(count)
    if len(cores) >= count_:
        os.sched_setaffinity(0, set(cores[index::count_]))


_share_the_cores_between_workers()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder (real test data, tools): ``$HOVERFAST_SHARED`` or ``<repo root>/../shared``."""
    folder = Path(os.environ.get("HOVERFAST_SHARED", REPO_ROOT.parent / "shared"))
    if not folder.is_dir():
        pytest.skip(f"shared folder {folder} not found (set HOVERFAST_SHARED to the folder holding data/ and tools/)")
    return folder


@pytest.fixture(scope="session")
def qupath_check(shared_dir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``tools/qupath_geojson_check.py FILE *args``; the result has ``returncode`` and ``stdout``."""
    script = shared_dir / "tools" / "qupath_geojson_check.py"
    if not script.is_file():
        pytest.skip(f"QuPath GeoJSON checker {script} not found")

    def run(path: str | os.PathLike[str], *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), str(path), *args],
            capture_output=True, text=True, timeout=120, check=False,
        )

    return run


@pytest.fixture(autouse=True)
def _own_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own user cache folder (the widget's tile cache lives there): no test sees
    another's cached tiles, and none writes into the real user cache."""
    monkeypatch.setenv("NAPARI_HOVERFAST_CACHE", str(tmp_path / "user-cache"))
    monkeypatch.setenv("NAPARI_HOVERFAST_TILE_CACHE", str(tmp_path / "tile-cache"))


@pytest.fixture
def checkpoint(shared_dir: Path) -> Path:
    """The shared random-weight reference checkpoint (the widget tests' small, real model)."""
    path = shared_dir / "reference" / "ckpt_A.pth"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture
def slide_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One user cache folder for the whole session (slides opened once, not per test)."""
    folder = tmp_path_factory.getbasetemp() / "hoverfast-cache"
    monkeypatch.setenv("NAPARI_HOVERFAST_CACHE", str(folder))
    return folder
