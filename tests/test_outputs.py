"""A run's files as one set, and the slide job's rules: partial results never replace complete ones."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import shapely
import yaml

from napari_hoverfast.core.formats import (
    FORMATS,
    GEOJSON_SUFFIXES,
    find_format,
    format_of,
    stem_of,
    with_stem_tag,
)
from napari_hoverfast.core.job import SlideJob, drain, run_slide_job
from napari_hoverfast.core.model import load_checkpoint
from napari_hoverfast.core.nuclei import Nuclei
from napari_hoverfast.core.outputs import OutputSet, check_outputs, read_sidecar, write_outputs
from napari_hoverfast.core.pipeline import RunError, RunOptions
from napari_hoverfast.core.tiling import Box, TilingOptions

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_hoverfast"


@pytest.fixture(scope="module")
def model(shared_dir: Path):
    return load_checkpoint(shared_dir / "reference" / "ckpt_A.pth", device="cpu")


def _nuclei(n: int = 3) -> Nuclei:
    nuclei = Nuclei(mpp=0.25)
    nuclei.append([shapely.box(10 * i, 0, 10 * i + 8, 8) for i in range(n)], 0.9, 0)
    return nuclei


# ---- formats -----------------------------------------------------------------------------------


def test_one_table_of_formats_and_napari_yaml_agrees() -> None:
    manifest = yaml.safe_load((PACKAGE / "napari.yaml").read_text(encoding="utf-8"))
    (writer,) = manifest["contributions"]["writers"]
    assert tuple(writer["filename_extensions"]) == GEOJSON_SUFFIXES
    geojson_reader = next(r for r in manifest["contributions"]["readers"] if "geojson" in r["command"])
    assert tuple(p[1:] for p in geojson_reader["filename_patterns"]) == GEOJSON_SUFFIXES
    assert format_of("a/cells.JSON.GZ").kind == "geojson" and format_of("t.csv.gz").compressed
    assert find_format("cells.txt") is None
    with pytest.raises(ValueError, match="must end in .geojson, .geojson.gz, .json, .json.gz"):
        format_of("cells.txt", "geojson")
    assert stem_of("x/cells.geojson.gz") == "cells" and stem_of("cells.tar.bz2") == "cells.tar"
    assert with_stem_tag("x/cells.json.gz", "partial") == Path("x/cells.partial.json.gz")
    assert len({f.suffix for f in FORMATS}) == len(FORMATS)


# ---- the output set ----------------------------------------------------------------------------


def test_a_complete_set_then_a_partial_one_beside_it(tmp_path: Path, qupath_check) -> None:
    outputs = OutputSet(tmp_path / "cells.geojson.gz", tmp_path / "cells.csv")
    written = write_outputs(_nuclei(3), outputs, complete=True, sidecar={"mpp_source": "file"})
    assert written == [outputs.geojson, outputs.csv, tmp_path / "cells.run.json"]
    assert qupath_check(outputs.geojson, "--expect-type", "detection").returncode == 0
    side = read_sidecar(outputs.sidecar)
    assert side["complete"] is True and side["nuclei"] == 3 and side["mpp_source"] == "file"
    before = outputs.geojson.read_bytes()
    partial = write_outputs(_nuclei(1), outputs, complete=False, sidecar={"tiles_done": 1, "tiles_total": 4})
    assert partial[0] == tmp_path / "cells.partial.geojson.gz"
    assert outputs.geojson.read_bytes() == before and read_sidecar(outputs.sidecar)["nuclei"] == 3
    assert read_sidecar(tmp_path / "cells.partial.run.json")["complete"] is False
    # a later complete set supersedes the partial one
    write_outputs(_nuclei(4), outputs, complete=True, sidecar={})
    assert not (tmp_path / "cells.partial.geojson.gz").exists() and read_sidecar(outputs.sidecar)["nuclei"] == 4


def test_a_set_that_cannot_be_completed_leaves_the_old_one(tmp_path: Path) -> None:
    outputs = OutputSet(tmp_path / "cells.geojson", tmp_path / "cells.csv")
    write_outputs(_nuclei(3), outputs, complete=True, sidecar={})
    before = {p: p.read_bytes() for p in outputs.files()}
    outputs.csv.unlink()
    outputs.csv.mkdir()  # the CSV cannot be written now
    with pytest.raises(OSError, match="cells.csv"):
        write_outputs(_nuclei(5), outputs, complete=True, sidecar={})
    assert outputs.geojson.read_bytes() == before[outputs.geojson]
    assert outputs.sidecar.read_bytes() == before[outputs.sidecar]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_links_are_followed_and_permissions_kept(tmp_path: Path) -> None:
    real = tmp_path / "real.geojson"
    write_outputs(_nuclei(1), OutputSet(real), complete=True, sidecar={})
    os.chmod(real, 0o600)
    link = tmp_path / "link.geojson"
    link.symlink_to(real)
    write_outputs(_nuclei(2), OutputSet(link), complete=True, sidecar={})
    assert link.is_symlink() and len(json.loads(real.read_text())["features"]) == 2
    assert (real.stat().st_mode & 0o777) == 0o600


def test_outputs_may_not_overwrite_inputs(tmp_path: Path, shared_dir: Path) -> None:
    annotations = shared_dir / "data" / "tcga_tile.geojson"
    with pytest.raises(ValueError, match="is the input"):
        check_outputs(OutputSet(annotations), inputs=(shared_dir / "data" / "tcga_tile.png", annotations))
    (tmp_path / "x.csv").symlink_to(tmp_path / "x.geojson")
    with pytest.raises(ValueError, match="same file twice"):
        check_outputs(OutputSet(tmp_path / "x.geojson", tmp_path / "x.csv"))


# ---- the slide job -----------------------------------------------------------------------------


def test_a_job_is_small_and_picklable(tmp_path: Path) -> None:
    import pickle

    job = SlideJob(slide="s.svs", mpp=0.25, regions=(Box(0, 0, 10, 10),), options=RunOptions(min_area_um2=3.0),
                   output=str(tmp_path / "o.geojson"), cache=str(tmp_path / "c"))
    blob = pickle.dumps(job)
    assert len(blob) < 2000 and pickle.loads(blob) == job


def test_an_image_without_resolution_is_refused_unless_given(shared_dir: Path, model) -> None:
    tile = str(shared_dir / "data" / "tcga_tile.png")
    with pytest.raises(RunError, match="no resolution"):
        drain(run_slide_job(SlideJob(slide=tile, regions=(Box(0, 0, 64, 64),)), model=model))
    done = drain(run_slide_job(SlideJob(slide=tile, mpp=0.25, regions=(Box(0, 0, 200, 200),),
                                        options=RunOptions(tiling=TilingOptions(tile=224), workers=0)), model=model))
    assert done.complete and done.mpp_source == "user"


def test_a_small_image_is_done_whole(shared_dir: Path, model) -> None:
    job = SlideJob(slide=str(shared_dir / "data" / "tcga_tile.png"), mpp=0.25, options=RunOptions(workers=0))
    done = drain(run_slide_job(job, model=model))
    assert [t.owned for t in done.run.tiles] == [Box(0, 0, 1024, 1024)]


def test_no_tissue_is_a_clear_message(tmp_path: Path, shared_dir: Path, model) -> None:
    import numpy as np
    from skimage import io

    mask = tmp_path / "mask.png"
    io.imsave(mask, np.zeros((2967 // 3, 2220 // 3), np.uint8), check_contrast=False)  # the slide's shape / 3
    job = SlideJob(slide=str(shared_dir / "data" / "CMU-1-Small-Region.svs"), tissue_mask=str(mask))
    with pytest.raises(RunError, match="No tissue found"):
        drain(run_slide_job(job, model=model))


def test_a_cancelled_job_writes_its_partial_set_beside_the_complete_one(tmp_path: Path, shared_dir: Path, model) -> None:
    out = tmp_path / "cells.geojson"
    job = SlideJob(slide=str(shared_dir / "data" / "tcga_tile.png"), mpp=0.25, regions=(Box(0, 0, 700, 700),),
                   options=RunOptions(tiling=TilingOptions(tile=224), workers=0), output=str(out), csv=str(tmp_path / "cells.csv"))
    complete = drain(run_slide_job(job, model=model))
    assert complete.complete and complete.written[0] == out
    before = out.read_bytes()
    cancel = threading.Event()
    run = run_slide_job(job, model=model, cancel=cancel)
    next(run)
    cancel.set()
    partial = drain(run)
    assert not partial.complete and partial.written[0] == tmp_path / "cells.partial.geojson"
    assert out.read_bytes() == before
    side = read_sidecar(tmp_path / "cells.partial.run.json")
    assert side["complete"] is False and side["cancelled"] is True
    assert side["tiles_done"] < side["tiles_total"] and side["mpp_source"] == "user"


def test_a_script_without_a_main_guard_still_gets_its_result(tmp_path: Path, shared_dir: Path) -> None:
    """Post-processing workers are spawned processes that import the calling script again. Without
    `if __name__ == "__main__":` the run must neither start twice nor race its own files: the
    workers refuse, and the run post-processes in its own process, with a warning."""
    import subprocess
    import sys

    out = tmp_path / "cells.geojson"
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from napari_hoverfast.core.job import SlideJob, drain, run_slide_job\n"
        "from napari_hoverfast.core.pipeline import RunOptions\n"
        "from napari_hoverfast.core.tiling import Box, TilingOptions\n"
        f"job = SlideJob(slide={str(shared_dir / 'data' / 'tcga_tile.png')!r}, mpp=0.25, regions=(Box(0, 0, 600, 600),),\n"
        f"               model={str(shared_dir / 'reference' / 'ckpt_A.pth')!r}, device='cpu',\n"
        f"               options=RunOptions(tiling=TilingOptions(tile=224), workers=1), output={str(out)!r})\n"
        "done = drain(run_slide_job(job))\n"
        "print('nuclei', len(done.run.nuclei), done.complete)\n",
        encoding="utf-8",
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("nuclei") == 1 and proc.stdout.strip().endswith("True")
    assert "__main__" in proc.stderr  # the warning says what to add
    side = read_sidecar(tmp_path / "cells.run.json")
    assert side["complete"] is True and side["nuclei"] == int(proc.stdout.split()[1])
    assert not (tmp_path / "cells.partial.geojson").exists()


def test_pixel_sizes_and_regions_are_checked(shared_dir: Path, model) -> None:
    import numpy as np

    from napari_hoverfast.core.pipeline import segment_slide
    from napari_hoverfast.core.slide import Slide, SlideError

    tile = shared_dir / "data" / "tcga_tile.png"
    with Slide(tile, mpp=np.float32(0.25)) as slide:
        assert slide.mpp == pytest.approx(0.25)
        with pytest.raises(RunError, match="regions is empty"):
            next(segment_slide(slide, model, []))
    for bad in (True, 100.0, 0.0001, float("nan"), "0.25"):
        with pytest.raises(SlideError, match="mpp"):
            Slide(tile, mpp=bad)
    with pytest.raises(RunError, match="tissue mask applies to whole-slide runs"):
        SlideJob(slide=str(tile), regions=(Box(0, 0, 10, 10),), tissue_mask="m.png")
