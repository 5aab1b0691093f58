"""Bad input, huge runs, hostile files and signals: one clear line, bounded cost, no stray tracebacks.

The command line runs as users run it (a subprocess); the Python API is checked to refuse the same
values in the same words. Signals go to the whole process group, as a terminal's Ctrl-C and most
batch schedulers' SIGTERM do, so the post-processing workers receive them too.
"""

from __future__ import annotations

import math
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_hoverfast.core import limits

TILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tcga_tile.png"


@pytest.fixture(scope="module")
def ckpt(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "ckpt_A.pth"


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "napari_hoverfast", *args], capture_output=True, text=True, timeout=timeout)


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --- ranges: the CLI and the API refuse the same values ---------------------------------------------


SEGMENT = ["segment", str(TILE), "-o", "never.geojson"]
TRAIN = ["train", "no-data", "-o", "never.pth"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (SEGMENT + ["--workers", "-1"], "workers must be from 0 to"),
        (SEGMENT + ["--workers", "100000"], "workers must be from 0 to"),
        (SEGMENT + ["--batch-size", "0"], "batch size must be from 1 to 256"),
        (SEGMENT + ["--batch-size", "100000"], "batch size must be from 1 to 256"),
        (SEGMENT + ["--tile-size", "32"], "tile size must be from 64 to 8192"),
        (SEGMENT + ["--tile-size", "100000"], "tile size must be from 64 to 8192"),
        (SEGMENT + ["--min-area", "-1"], "minimum area must be from 0 to"),
        (SEGMENT + ["--min-area", "nan"], "'nan' is not a finite number"),
        (SEGMENT + ["--max-area", "0"], "maximum area must be above 0"),
        (SEGMENT + ["--max-area", "inf"], "'inf' is not a finite number"),
        (SEGMENT + ["--workers", "two"], "'two' is not a whole number"),
        (["cohort", "x.svs", "-o", "out", "--workers", "0"], "workers must be from 1 to"),
        (TRAIN + ["--patch-size", "16"], "patch size must be from 32 to 2048"),
        (TRAIN + ["--depth", "0"], "depth must be from 1 to 8"),
        (TRAIN + ["--depth", "9"], "depth must be from 1 to 8"),
        (TRAIN + ["--wf", "11"], "wf must be from 0 to 10"),
        (TRAIN + ["--lr", "0"], "learning rate must be above 0 and at most 1"),
        (TRAIN + ["--lr", "10"], "learning rate must be above 0 and at most 1"),
        (TRAIN + ["--lr", "nan"], "'nan' is not a finite number"),
        (TRAIN + ["--batch-size", "0"], "batch size must be from 1 to 256"),
        (TRAIN + ["--seed", "-1"], "must be at least 0"),
    ],
)
def test_out_of_range_options_are_one_line_before_any_work(args: list[str], words: str) -> None:
    proc = _cli(*args, timeout=60)
    line = _one_line(proc)
    assert words in line and line.startswith("napari-hoverfast "), line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (TRAIN + ["--patch-size", "254"], "patch size 254 px is not a multiple of 4 (the network halves it 2 times): try 252 or 256"),
        (TRAIN + ["--depth", "6", "--wf", "8"], "depth 6 with wf 8 makes a 8192-channel layer"),
        (TRAIN + ["--patch-size", "2048", "--batch-size", "100"], "batch size 100 of 2048 px tiles is too large"),
        (SEGMENT + ["--min-area", "30", "--max-area", "20", "--mpp", "0.25"], "maximum area must be above the minimum area (30 µm²)"),
        (SEGMENT + ["--tile-size", "8192", "--batch-size", "8", "--mpp", "0.25"], "at most 4 at this size"),
    ],
)
def test_rules_between_options_are_one_line_before_any_work(tmp_path: Path, args: list[str], words: str) -> None:
    """Rules that join two options live in the option classes; the CLI builds them before any work."""
    proc = subprocess.run([sys.executable, "-m", "napari_hoverfast", *args], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    line = _one_line(proc)
    assert line.startswith("napari-hoverfast: error: ") and words in line, line
    assert not list(tmp_path.iterdir())  # nothing written, not even a partial set


def test_the_api_refuses_what_the_cli_refuses(tmp_path: Path) -> None:
    from napari_hoverfast.core.model import ModelConfig
    from napari_hoverfast.core.pipeline import RunOptions
    from napari_hoverfast.core.postprocess import PostprocessOptions
    from napari_hoverfast.core.tiling import TilingOptions
    from napari_hoverfast.core.train import TrainOptions

    cases = [
        (lambda: RunOptions(workers=-1), limits.check_workers, -1),
        (lambda: RunOptions(workers=True), limits.check_workers, True),
        (lambda: RunOptions(batch_size=0), limits.check_batch_size, 0),
        (lambda: TilingOptions(tile=100_000), limits.check_tile_size, 100_000),
        (lambda: PostprocessOptions(min_area_um2=math.nan), limits.check_min_area, math.nan),
        (lambda: RunOptions(max_area_um2=math.inf), limits.check_max_area, math.inf),
        (lambda: TrainOptions(data=(), output=tmp_path / "m.pth", learning_rate=10.0), limits.check_learning_rate, 10.0),
        (lambda: TrainOptions(data=(), output=tmp_path / "m.pth", patch_size=16), limits.check_patch_size, 16),
    ]
    for build, rule, value in cases:
        with pytest.raises(ValueError) as api:
            build()
        with pytest.raises(ValueError) as shared_rule:
            rule(value)
        assert str(shared_rule.value) in str(api.value)
    with pytest.raises(ValueError) as shared_rule:
        limits.check_workers(-1)
    assert _one_line(_cli(*SEGMENT, "--workers", "-1", timeout=60)).endswith(str(shared_rule.value))
    with pytest.raises(ValueError, match="not a multiple of 4"):
        TrainOptions(data=(), output=tmp_path / "m.pth", patch_size=254)
    with pytest.raises(ValueError, match="8192-channel layer"):
        TrainOptions(data=(), output=tmp_path / "m.pth", config=ModelConfig(depth=6, wf=8))
    # what is in range passes, numpy scalars included
    RunOptions(workers=np.int64(0), batch_size=np.int32(4), min_area_um2=np.float32(5.0), max_area_um2=400.0)
    TrainOptions(data=(), output=tmp_path / "m.pth", patch_size=252, config=ModelConfig(depth=3))


# --- a run far larger than usual is announced ----------------------------------------------------------


def test_a_huge_run_prints_its_estimate_first_and_goes_on(tmp_path: Path, ckpt: Path) -> None:
    """``--mpp 50`` on a 256² region is 65,536² working pixels: the estimate comes before the first
    tile, and the run goes on (stopped here as soon as the line appears)."""
    cmd = [sys.executable, "-m", "napari_hoverfast", "segment", str(TILE), "-o", str(tmp_path / "x.geojson"),
           "--model", str(ckpt), "--mpp", "50", "--roi", "0", "0", "256", "256", "--device", "cpu", "--workers", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "large run" in line:
                break
        still_running = proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    line = next((s for s in seen if "large run" in s), "")
    assert line.startswith("napari-hoverfast: a large run: "), "".join(seen)
    assert "tiles of 2048 px, about" in line and "hours on this cpu (an estimate)" in line and "Ctrl-C" in line
    assert still_running


def test_the_estimate_follows_tiles_device_and_threads() -> None:
    from napari_hoverfast.core.job import estimate_seconds

    one = estimate_seconds(1, 2048, "cpu", threads=2)
    assert 20 < one < 80  # 40 s measured for a 2048² tile on 2 CPU threads
    assert estimate_seconds(1000, 2048, "cpu", threads=2) == pytest.approx(1000 * one)
    assert estimate_seconds(1, 2048, "cpu", threads=4) == pytest.approx(one / 2)
    assert estimate_seconds(1000, 2048, "cuda", workers=4) < 3600 < estimate_seconds(1000, 2048, "cpu", threads=8)


# --- huge and hostile image files ----------------------------------------------------------------------


def _zeros_deflated(n: int, chunk: int = 1 << 22) -> bytes:
    """A zlib stream of ``n`` zero bytes, built in milliseconds: after a full flush the compressor
    starts afresh, so every further chunk of zeros compresses to the same bytes; the checksum of
    ``n`` zeros is ``(n mod 65521) << 16 | 1``."""
    c = zlib.compressobj(9)
    zeros = bytes(chunk)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(n, chunk)
    tail = c.compress(bytes(rest)) + c.flush(zlib.Z_FINISH)
    return first + again * (count - 1) + tail[:-4] + (((n % 65521) << 16) | 1).to_bytes(4, "big")


def test_the_zero_stream_is_what_it_claims() -> None:
    n = 3 * (1 << 22) + 123
    assert zlib.decompress(_zeros_deflated(n)) == bytes(n)


@pytest.fixture(scope="module")
def one_strip_tiff(tmp_path_factory) -> Path:
    """2.6 MB on disk declaring a 30000 × 30000 RGB image in one deflated strip (2.5 GiB decoded)."""
    path = tmp_path_factory.mktemp("huge") / "one-strip.tif"
    side = 30_000
    with tifffile.TiffWriter(path) as tw:
        tw.write(iter([_zeros_deflated(side * side * 3)]), shape=(side, side, 3), dtype=np.uint8, photometric="rgb",
                 compression="zlib", rowsperstrip=side)
    assert path.stat().st_size < 3_000_000
    return path


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A valid 1-pixel PNG whose header declares ``width`` × ``height``."""
    from PIL import Image

    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def test_huge_single_strip_tiffs_and_png_bombs_are_refused_before_decoding(one_strip_tiff: Path, tmp_path: Path) -> None:
    """Refused at opening, with how to convert; the peak memory of the process stays that of Python
    and NumPy (decoding would take 2.5 GiB), and the refusal takes about a second."""
    png = _png_declaring(tmp_path / "bomb.png", 30_000, 30_000)
    script = (
        "import resource, sys, time\n"
        "from napari_hoverfast.core.slide import Slide, SlideError\n"
        "for path in sys.argv[1:]:\n"
        "    t = time.perf_counter()\n"
        "    try:\n"
        "        Slide(path, mpp=0.25).read_region(0, 0, 256, 256)\n"
        "        print('READ', path)\n"
        "    except SlideError as exc:\n"
        "        print('REFUSED', round(time.perf_counter() - t, 2), exc)\n"
        # VmHWM, not ru_maxrss: ru_maxrss keeps the forked parent's peak across exec
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print('MAXRSS_MB', int(hwm) // 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(one_strip_tiff), str(png)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tiff_line, png_line, rss_line = proc.stdout.strip().splitlines()
    assert tiff_line.startswith("REFUSED") and "30000 × 30000 px image in one strip" in tiff_line
    assert "would decode 2.5 GiB" in tiff_line and "vips tiffsave" in tiff_line and "bfconvert" in tiff_line
    assert float(tiff_line.split()[1]) < 10
    assert png_line.startswith("REFUSED") and "too large to read into memory" in png_line
    assert int(rss_line.split()[1]) < 500, rss_line


def test_a_huge_strip_is_one_line_from_the_cli(one_strip_tiff: Path, tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "x.geojson"
    line = _one_line(_cli("segment", str(one_strip_tiff), "-o", str(out), "--model", str(ckpt), "--mpp", "0.25",
                          "--roi", "0", "0", "512", "512", "--device", "cpu"))
    assert "one-strip.tif stores its 30000 × 30000 px image in one strip" in line and "tiled pyramidal TIFF" in line
    assert not list(tmp_path.iterdir())


def test_a_strip_that_fits_in_memory_is_decoded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the chunk limit but small enough for memory: read whole at opening, then every region
    comes from memory (not one whole-image decode per read)."""
    from napari_hoverfast.core import slide_formats
    from napari_hoverfast.core.slide import Slide

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, image, photometric="rgb", compression="zlib", rowsperstrip=300)
    reads: list[tuple[int, ...]] = []
    original = slide_formats.TiffBackend.read

    def counting(self, *box):  # type: ignore[no-untyped-def]
        reads.append(box)
        return original(self, *box)

    monkeypatch.setattr(slide_formats.TiffBackend, "read", counting)
    monkeypatch.setattr(slide_formats, "MAX_CHUNK", 300 * 400)  # the strip holds 3 × this
    with Slide(path, mpp=0.25) as slide:
        for x, y in ((0, 0), (100, 50), (250, 200)):
            assert np.array_equal(slide.read_region(x, y, 150, 100), image[y : y + 100, x : x + 150])
    assert reads == [(0, 0, 0, 400, 300)]
    monkeypatch.setattr(slide_formats, "MAX_IN_MEMORY", 1000)
    with pytest.raises(slide_formats.SlideError, match="strip.tif stores its 400 × 300 px image in one strip"):
        Slide(path, mpp=0.25)


# --- signals: no traceback, no leaked semaphore, from any process ---------------------------------------


def test_workers_start_with_ctrl_c_blocked() -> None:
    """A Ctrl-C while a worker still imports torch would end it with a traceback: they start with
    SIGINT blocked (inherited across exec) and then ignore it."""
    from napari_hoverfast.core.worker_pool import start_worker_pool

    pool = start_worker_pool(1)
    try:
        blocked = pool.submit(signal.pthread_sigmask, signal.SIG_BLOCK, []).result(timeout=120)
        handler = pool.submit(signal.getsignal, signal.SIGINT).result(timeout=60)
    finally:
        pool.shutdown()
    assert signal.SIGINT in blocked and handler == signal.SIG_IGN
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # restored here


class _Stderr:
    """A process's stderr read as it comes (tqdm writes its bar with carriage returns, no newlines)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        import threading

        self.chunks: list[bytes] = []
        assert proc.stderr is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stderr.fileno(),), daemon=True)
        self._thread.start()

    def _read(self, fd: int) -> None:
        while chunk := os.read(fd, 4096):
            self.chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def wait_for(self, needle: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while needle not in self.text:
            assert proc.poll() is None, f"the run ended before it could be stopped: {self.text}"
            assert time.monotonic() < end, f"{needle!r} did not appear in time: {self.text}"
            time.sleep(0.05)

    def rest(self) -> str:
        self._thread.join(timeout=60)
        return self.text


@pytest.mark.parametrize(
    ("signum", "status", "when"),
    [(signal.SIGINT, 130, "starting"), (signal.SIGTERM, 143, "busy")],
    ids=["SIGINT-while-workers-start", "SIGTERM-while-workers-work"],
)
def test_a_signal_to_the_process_group_stops_cleanly(tmp_path: Path, ckpt: Path, signum: int, status: int, when: str) -> None:
    """Sent to the run and its two post-processing workers, while the workers still import (the first
    second of the run) or once a tile is done: the partial set is written, the status says which
    signal, and stderr has no traceback and no resource-tracker warning from any process."""
    out = tmp_path / "cells.geojson"
    cmd = [sys.executable, "-m", "napari_hoverfast", "segment", str(TILE), "-o", str(out), "--model", str(ckpt),
           "--mpp", "0.25", "--roi", "0", "0", "1024", "1024", "--tile-size", "192", "--tta", "--workers", "2", "--device", "cpu"]
    # 36 small tiles, each through the network four times (--tta): the run still has about 15 s of
    # work when its first tile is post-processed, so the signal cannot race the run's end (9 tiles
    # without flips left 1.6 s, and under a loaded suite the run sometimes finished first).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    stderr = _Stderr(proc)
    if when == "starting":
        stderr.wait_for("0/", proc)  # planned, workers spawned; they import torch for seconds
        time.sleep(0.5)
    else:
        stderr.wait_for("nuclei=", proc)  # a tile post-processed by a worker
    os.killpg(proc.pid, signum)
    proc.wait(timeout=120)
    text = stderr.rest()
    assert proc.returncode == status, text
    for bad in ("Traceback", "leaked semaphore", "resource_tracker", "KeyboardInterrupt"):
        assert bad not in text, text
    assert (tmp_path / "cells.partial.geojson").exists() and not out.exists()
