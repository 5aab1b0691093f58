"""``benchmarks/diagnose_maps.py`` as a user runs it: a subprocess on one real held-out tile.

The diagnosis rests on two facts checked here: with both maps true the post-processing finds
(nearly) every nucleus, so a gap below that is the network's; and the embedded model's own maps
score as in ``bench_accuracy`` on glioblastoma.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "diagnose_maps.py"


def test_diagnose_maps_scores_the_four_variants_of_a_real_tile(shared_dir: Path) -> None:
    from napari_hoverfast.core.default_model import has_default_model

    if not has_default_model():
        pytest.skip("no embedded default model")
    run = subprocess.run([sys.executable, str(SCRIPT), "--shared", str(shared_dir), "--sets", "gbm40",
                          "--split", "held-out", "--per-set", "1"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| gbm40 | held-out | gbm_06 |")]
    assert len(rows) == 1, run.stdout
    predicted, true_mask, true_hv, both = (float(v) for v in rows[0].strip("| ").split(" | ")[3:])
    assert both > 0.95, rows[0]  # the post-processing's own ceiling
    assert 0.6 < predicted < both and true_mask > predicted, rows[0]
    summary = [line for line in run.stdout.splitlines() if line.startswith("| gbm40 | held-out | 1 |")]
    assert len(summary) == 1, run.stdout
