"""``benchmarks/tune_ihc_input.py`` as a user runs it: a subprocess scoring IHC input gains of a model.

One setting with a checkpoint given by path (what a new model's search starts from): the gains it
searches are put back afterwards, and a setting that misses the suite's recalls is not called best.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "tune_ihc_input.py"


def test_one_setting_is_scored_on_the_ki67_tiles_with_a_given_model(shared_dir: Path) -> None:
    ckpt = shared_dir / "reference" / "ckpt_A.pth"  # a real HoverFast checkpoint, not trained on IHC
    run = subprocess.run([sys.executable, str(SCRIPT), "--shared", str(shared_dir), "--model", str(ckpt),
                          "--marker-threshold", "0.5", "--h-gain", "2", "--dab-gain", "0.75", "--cap", "0.8"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("(2.0, 0.75, 0.8) auto: found pos")]
    assert len(rows) == 1, run.stdout
    assert "/31" in rows[0] and "/206" in rows[0]
    assert run.stdout.splitlines()[-1].startswith("best: ")
