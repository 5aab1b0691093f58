"""HoverFast weights in .safetensors files load exactly, with or without configuration metadata."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_hoverfast.core.model import CheckpointError, HoverFastNet, ModelConfig, load_checkpoint
from napari_hoverfast.core.safetensors_file import save_safetensors


@pytest.fixture(scope="module")
def reference(shared_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    ckpt = torch.load(shared_dir / "reference" / "ckpt_A.pth", weights_only=True)
    with np.load(shared_dir / "reference" / "fwd_A.npz") as data:
        return ckpt["model_dict"], {k: data[k] for k in data.files}


def _forward(path: Path, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model = load_checkpoint(path, device="cpu")
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        logits, maps = model.net(x.contiguous(memory_format=torch.channels_last))
    return logits[0].numpy(), maps[0].numpy()


@pytest.mark.parametrize("metadata", ["upstream keys", "json config", "none"])
def test_ckpt_a_as_safetensors_reproduces_the_reference_forward(reference, tmp_path: Path, metadata: str) -> None:
    state, ref = reference
    meta = {
        "upstream keys": {"depth": "3", "wf": "4", "padding": "True", "batch_norm": "True", "up_mode": "upconv",
                          "conv_block": "msunet", "n_classes": "2", "in_channels": "3"},
        "json config": {"config": json.dumps({"depth": 3, "wf": 4, "batch_norm": True, "up_mode": "upconv"})},
        "none": None,
    }[metadata]
    path = tmp_path / "hoverfast_crosstissue_best_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)
    model = load_checkpoint(path, device="cpu")
    assert model.config == ModelConfig(depth=3, wf=4, batch_norm=True, up_mode="upconv", conv_block="msunet")
    logits, maps = _forward(path, ref["rgb_256"])
    for got, want in ((logits, ref["logits_256"]), (maps, ref["maps_256"])):
        assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5


CONFIGS = [
    ModelConfig(depth=d, wf=wf, up_mode=up, batch_norm=bn, conv_block=cb)
    for d, wf, up, bn, cb in itertools.product([1, 2, 4], [2, 3], ["upconv", "upsample"], [True, False], ["msunet", "unet"])
    if not (d == 1 and up == "upsample")  # depth 1 has no decoder: both up-modes are the same network
]


@pytest.mark.parametrize("with_metadata", [True, False])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"d{c.depth}-wf{c.wf}-{c.up_mode}-bn{int(c.batch_norm)}-{c.conv_block}")
def test_every_configuration_is_inferred_from_the_tensors(tmp_path: Path, config: ModelConfig, with_metadata: bool) -> None:
    torch.manual_seed(1)
    net = HoverFastNet(config).eval()
    path = tmp_path / "w.safetensors"
    save_safetensors(path, net, metadata=with_metadata)
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.config == config
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        for a, b in zip(loaded.net(x), net(x), strict=True):
            torch.testing.assert_close(a, b)


def test_what_cannot_be_inferred_or_contradicts_is_refused(reference, tmp_path: Path) -> None:
    state, _ = reference
    path = tmp_path / "x.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"depth": "4"})
    with pytest.raises(CheckpointError, match="metadata says depth=4 but the tensors have depth=3"):
        load_checkpoint(path, device="cpu")
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(CheckpointError, match="no encoder levels"):
        load_checkpoint(path, device="cpu")
    no_up = {k: v.contiguous() for k, v in state.items() if not k.startswith("up_path.0.up.")}
    save_file(no_up, str(path))
    with pytest.raises(CheckpointError, match="up-sampling mode"):
        load_checkpoint(path, device="cpu")
    bad = {k: v.contiguous().clone() for k, v in state.items()}
    bad["last.weight"][0, 0] = float("nan")
    save_file(bad, str(path))
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(path, device="cpu")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path, device="cpu")


def test_cli_model_option_takes_safetensors(reference, tmp_path: Path, shared_dir: Path) -> None:
    state, _ = reference
    path = tmp_path / "hoverfast_crosstissue_best_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    tile = shared_dir / "reference"  # any small RGB image will do: cut one from the reference input
    from skimage import io

    with np.load(tile / "fwd_A.npz") as data:
        io.imsave(tmp_path / "tile.png", data["rgb_256"], check_contrast=False)
    out = tmp_path / "tile.geojson"
    done = subprocess.run(
        [sys.executable, "-m", "napari_hoverfast.cli", "segment", str(tmp_path / "tile.png"), "-o", str(out),
         "--mpp", "0.25", "--model", str(path), "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert out.is_file()
