"""Prediction: device choice, precision, stain preparation (IHC-DAB → haematoxylin only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io
from skimage.color import rgb2hed

from napari_hoverfast.core.device import DeviceError, resolve_device
from napari_hoverfast.core.model import load_checkpoint
from napari_hoverfast.core.pipeline import RunOptions, run_to_end, segment_slide
from napari_hoverfast.core.predict import PredictOptions, Predictor, haematoxylin_only, prepare
from napari_hoverfast.core.slide import Slide
from napari_hoverfast.core.tiling import Box


def test_auto_device_falls_back_to_cpu_here() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA was requested"):
            resolve_device("cuda")


def test_ihc_dab_keeps_only_haematoxylin(shared_dir: Path) -> None:
    rgb = io.imread(shared_dir / "data" / "ihc_roi.png")[..., :3]
    hed_in = rgb2hed(rgb)
    out = haematoxylin_only(rgb)
    assert out.dtype == np.float32 and out.shape == rgb.shape and out.min() >= 0 and out.max() <= 1
    hed_out = rgb2hed(out)
    assert hed_in[..., 2].max() > 0.05  # the input really has DAB
    assert np.abs(hed_out[..., 2]).max() < 1e-3 and np.abs(hed_out[..., 1]).max() < 1e-3
    np.testing.assert_allclose(hed_out[..., 0], hed_in[..., 0], atol=1e-3)
    he = prepare(rgb[None, :64, :64], "he")
    assert he.dtype == np.float32 and he.max() <= 1.0


def test_ihc_run_through_the_pipeline(shared_dir: Path) -> None:
    model = load_checkpoint(shared_dir / "reference" / "ckpt_A.pth", device="cpu")
    with Slide(shared_dir / "data" / "ihc_roi.png", mpp=0.25) as slide:
        result = run_to_end(segment_slide(slide, model, [Box(0, 0, 256, 256)], RunOptions(stain="ihc_dab", workers=0)))
    assert result.complete and result.parameters["stain"] == "ihc_dab"


def test_precision_choices(shared_dir: Path) -> None:
    model = load_checkpoint(shared_dir / "reference" / "ckpt_A.pth", device="cpu")
    images = prepare(io.imread(shared_dir / "data" / "tcga_tile.png")[None, :128, :128, :3], "he")
    prob32, hv32 = Predictor(model)(images)
    assert prob32.shape == (1, 128, 128) and hv32.shape == (1, 2, 128, 128)
    assert prob32.dtype == np.float32 and prob32.min() >= 0 and prob32.max() <= 1
    prob16, _ = Predictor(model, PredictOptions(precision="bf16"))(images)
    assert np.abs(prob16 - prob32).mean() < 0.05
    with pytest.raises(ValueError, match="fp16 inference needs a GPU"):
        Predictor(model, PredictOptions(precision="fp16"))
    with pytest.raises(ValueError, match="Unknown stain"):
        PredictOptions(stain="pas")  # type: ignore[arg-type]


def test_compiled_network_finds_the_same_nuclei(shared_dir: Path) -> None:
    """``compile=True`` (``--compile``): tiles padded to the compile step, maps cropped back; the
    maps agree with the eager network away from the padded edge, and the run finds the same nuclei."""
    from napari_hoverfast.core.default_model import load_default_model
    from napari_hoverfast.core.predict import COMPILE_STEP
    from napari_hoverfast.core.tiling import TilingOptions

    model = load_default_model("cpu")
    images = prepare(io.imread(shared_dir / "data" / "tcga_tile.png")[None, :200, :232, :3], "he")
    assert 200 % COMPILE_STEP and 232 % COMPILE_STEP  # exercises the padding
    compiled = Predictor(model, PredictOptions(precision="fp32", compile=True))
    prob_c, hv_c = compiled(images)
    prob_e, hv_e = Predictor(model, PredictOptions(precision="fp32"))(images)
    assert prob_c.shape == prob_e.shape == (1, 200, 232) and hv_c.shape == hv_e.shape == (1, 2, 200, 232)
    edge = TilingOptions().resolved(model.config.padding_reach).overlap_px // 2  # a tile's context (80 px at depth 3)
    inner = (slice(None), slice(0, 200 - edge), slice(0, 232 - edge))
    assert np.abs(prob_c[inner] - prob_e[inner]).max() < 1e-3
    with Slide(shared_dir / "data" / "tcga_tile.png", mpp=0.25) as slide:
        box = [Box(0, 0, 400, 400)]
        eager = run_to_end(segment_slide(slide, model, box, RunOptions(precision="fp32", workers=0)))
        fast = run_to_end(segment_slide(slide, model, box, RunOptions(precision="fp32", workers=0, compile=True)))
    assert abs(len(fast.nuclei) - len(eager.nuclei)) <= 1 and len(eager.nuclei) > 20


def test_test_time_augmentation_is_flip_equivariant(shared_dir: Path) -> None:
    """``tta=True`` averages the four flips: the maps of a mirrored tile are the mirrored maps, with
    the mirrored direction's map negated, and a run finds about as many nuclei as without."""
    from napari_hoverfast.core.default_model import load_default_model

    model = load_default_model("cpu")
    images = prepare(io.imread(shared_dir / "data" / "tcga_tile.png")[None, :160, :192, :3], "he")
    tta = Predictor(model, PredictOptions(precision="fp32", tta=True))
    prob, hv = tta(images)
    prob_m, hv_m = tta(np.ascontiguousarray(images[:, :, ::-1]))
    assert np.abs(prob_m[:, :, ::-1] - prob).max() < 1e-4
    assert np.abs(-hv_m[:, 0, :, ::-1] - hv[:, 0]).max() < 1e-4
    assert np.abs(hv_m[:, 1, :, ::-1] - hv[:, 1]).max() < 1e-4
    plain, _ = Predictor(model, PredictOptions(precision="fp32"))(images)
    assert np.abs(plain - prob).mean() < 0.05
    with Slide(shared_dir / "data" / "tcga_tile.png", mpp=0.25) as slide:
        box = [Box(0, 0, 400, 400)]
        eager = run_to_end(segment_slide(slide, model, box, RunOptions(workers=0)))
        flipped = run_to_end(segment_slide(slide, model, box, RunOptions(workers=0, tta=True)))
    assert flipped.parameters["tta"] is True
    assert abs(len(flipped.nuclei) - len(eager.nuclei)) <= 0.15 * len(eager.nuclei)
