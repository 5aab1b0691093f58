"""The speed settings change speed, not results: folded batch norm, precision choice, malloc tuning, core plan."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from napari_hoverfast.core.model import HoverFastNet, ModelConfig, build_model
from napari_hoverfast.core.predict import resolve_precision
from napari_hoverfast.core.speed import cpu_plan, fold_batch_norm, native_bf16


def test_folded_batch_norm_gives_the_same_maps() -> None:
    torch.manual_seed(0)
    net = HoverFastNet(ModelConfig(depth=3, wf=3, batch_norm=True))
    with torch.no_grad():  # statistics away from the identity, so folding has something to do
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net.eval()
    model = build_model(net.state_dict(), net.config, device="cpu")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.net.modules())
    assert model.parameter_count == net.parameter_count()  # as trained, not as folded
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        for got, want in zip(model.net(x), net(x), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert fold_batch_norm(model.net) == 0  # nothing left to fold


def test_precision_auto_follows_the_hardware() -> None:
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16() else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="fp16 inference needs a GPU"):
        resolve_precision("fp16", "cpu")


def test_cores_are_shared_between_network_and_post_processing() -> None:
    assert cpu_plan(2, "cpu") == (2, 0)  # measured: a worker on 2 cores only slows the forward
    threads, workers = cpu_plan(16, "cpu")
    assert threads + workers == 16 and workers >= 2
    assert cpu_plan(16, "cuda")[1] >= 8


def test_malloc_tuning_is_applied_in_a_fresh_process() -> None:
    code = "from napari_hoverfast.core.speed import tune_malloc; print(tune_malloc())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert out.stdout.strip() == ("True" if sys.platform.startswith("linux") else "False")


def test_post_processing_workers_start_once_per_process(shared_dir) -> None:
    import os

    from napari_hoverfast.core import worker_pool
    from napari_hoverfast.core.default_model import load_model
    from napari_hoverfast.core.pipeline import RunOptions, run_to_end, segment_slide
    from napari_hoverfast.core.slide import Slide
    from napari_hoverfast.core.tiling import Box, TilingOptions

    model = load_model(None, device="cpu")
    options = RunOptions(tiling=TilingOptions(tile=256), workers=1, precision="fp32")
    pids = []
    with Slide(shared_dir / "data" / "tcga_tile.png", mpp=0.25) as slide:
        for _ in range(2):
            result = run_to_end(segment_slide(slide, model, [Box(0, 0, 512, 512)], options))
            assert result.complete and len(result.nuclei) > 20
            pool = worker_pool.shared_worker_pool(1)
            pids.append(pool.submit(os.getpid).result())
    assert pids[0] == pids[1] != os.getpid()  # the same worker served both runs
    worker_pool.discard_worker_pool(pool)
