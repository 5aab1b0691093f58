"""The network reproduces upstream outputs; the loader accepts every legal checkpoint and explains bad ones."""

from __future__ import annotations

import itertools
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_hoverfast.core.model import (
    CheckpointError,
    HoverFastNet,
    ModelConfig,
    build_model,
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def reference(shared_dir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    ref = shared_dir / "reference"
    with np.load(ref / "fwd_A.npz") as data:
        return ref / "ckpt_A.pth", {k: data[k] for k in data.files}


@pytest.mark.parametrize("size, strip_rows", [(256, None), (1024, None), (1024, 200)])
def test_reproduces_upstream_forward(reference, size: int, strip_rows: int | None) -> None:
    """Whole, and in row strips (200 rows: not a multiple of anything, so strips end unevenly)."""
    ckpt, ref = reference
    model = load_checkpoint(ckpt, device="cpu")
    if strip_rows is not None:
        model.net.strip_pixels = strip_rows * size
    assert not model.net.training
    assert model.parameter_count == 947_732
    x = torch.from_numpy(ref[f"rgb_{size}"]).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        logits, maps = model.net(x.contiguous(memory_format=torch.channels_last))
    assert logits.shape == (1, 2, size, size) and maps.shape == (1, 2, size, size)
    for got, want in ((logits[0].numpy(), ref[f"logits_{size}"]), (maps[0].numpy(), ref[f"maps_{size}"])):
        assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5


CONFIGS = [
    ModelConfig(depth=d, wf=wf, up_mode=up, batch_norm=bn, conv_block=cb)
    for d, wf, up, bn, cb in itertools.product([1, 2, 4], [2, 3], ["upconv", "upsample"], [True, False], ["msunet", "unet"])
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"d{c.depth}-wf{c.wf}-{c.up_mode}-bn{int(c.batch_norm)}-{c.conv_block}")
def test_every_legal_configuration_round_trips(tmp_path: Path, config: ModelConfig) -> None:
    torch.manual_seed(0)
    net = HoverFastNet(config).eval()
    path = tmp_path / "model.pth"
    save_checkpoint(path, net, epoch=3, best_loss=0.5)
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.config == config
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        want = net(x)
        got = loaded.net(x)
    for a, b in zip(got, want, strict=True):
        assert a.shape[-2:] == (32, 32)
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"d{c.depth}-wf{c.wf}-{c.up_mode}-bn{int(c.batch_norm)}-{c.conv_block}")
def test_row_strips_give_the_whole_pass(config: ModelConfig) -> None:
    """At inference large levels are computed in row strips for memory; the maps must not change."""
    torch.manual_seed(0)
    net = HoverFastNet(config).eval()
    x = torch.rand(2, 3, 136, 72)
    with torch.inference_mode():
        whole = net(x)
        net.strip_pixels = 24 * 72  # strips of 24 rows at full resolution, 16 one level down
        strips = net(x)
    for a, b in zip(strips, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_checkpoint_keys_match_upstream(reference) -> None:
    ckpt, _ = reference
    upstream = torch.load(ckpt, weights_only=True, map_location="cpu")
    ours = HoverFastNet(ModelConfig()).state_dict()
    assert list(ours) == list(upstream["model_dict"])


def test_half_precision_checkpoint_loads_as_float32(tmp_path: Path) -> None:
    net = HoverFastNet(ModelConfig(wf=2)).eval()
    save_checkpoint(tmp_path / "half.pth", net, half=True)
    loaded = load_checkpoint(tmp_path / "half.pth", device="cpu")
    assert all(p.dtype == torch.float32 for p in loaded.net.parameters())


def test_bare_state_dict_with_explicit_config(tmp_path: Path) -> None:
    config = ModelConfig(depth=2, wf=3, conv_block="unet")
    net = HoverFastNet(config)
    torch.save(net.state_dict(), tmp_path / "bare.pth")
    loaded = load_checkpoint(tmp_path / "bare.pth", device="cpu", config=config)
    assert loaded.config == config
    with pytest.raises(CheckpointError, match="bare state dict"):
        load_checkpoint(tmp_path / "bare.pth", device="cpu")
    built = build_model(net.state_dict(), config, device="cpu")
    assert not built.net.training


def test_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_not_a_torch_file(tmp_path: Path) -> None:
    (tmp_path / "notes.pth").write_text("these are not weights")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "notes.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pth")


def test_truncated_file(reference, tmp_path: Path) -> None:
    ckpt, _ = reference
    data = ckpt.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pth")


class _Payload:
    def __reduce__(self):  # noqa: D105 - would run code on unpickling
        return (os.system, ("echo pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model_dict": {}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)
    legacy = tmp_path / "legacy.pth"
    with legacy.open("wb") as handle:
        pickle.dump(_Payload(), handle, protocol=2)
    with pytest.raises(CheckpointError):
        load_checkpoint(legacy)


def test_checkpoint_of_another_network_names_keys(tmp_path: Path) -> None:
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    ckpt = {"model_dict": other.state_dict(), **ModelConfig().__dict__}
    torch.save(ckpt, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"missing keys, first 'down_path.0.conv_3.block.0.weight'.*unexpected keys, first '0.weight'"):
        load_checkpoint(tmp_path / "other.pth")


def test_wrong_tensor_shapes(reference, tmp_path: Path) -> None:
    ckpt, _ = reference
    data = torch.load(ckpt, weights_only=True)
    data["model_dict"]["last.weight"] = torch.zeros(2, 17, 1, 1)
    torch.save(data, tmp_path / "shapes.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape, first 'last.weight' is \(2, 17, 1, 1\), expected \(2, 16, 1, 1\)"):
        load_checkpoint(tmp_path / "shapes.pth")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("up_mode", "deconv", "up_mode='deconv'"),
        ("conv_block", "resnet", "conv_block='resnet'"),
        ("depth", 0, "depth=0"),
        ("padding", False, "padding=False"),
        ("n_classes", 3, "n_classes=3"),
    ],
)
def test_unsupported_config_values(reference, tmp_path: Path, key: str, value, message: str) -> None:
    ckpt, _ = reference
    data = torch.load(ckpt, weights_only=True)
    data[key] = value
    torch.save(data, tmp_path / "cfg.pth")
    with pytest.raises(CheckpointError, match=f"Unsupported HoverFast configuration: {message}"):
        load_checkpoint(tmp_path / "cfg.pth")


def test_missing_config_keys(reference, tmp_path: Path) -> None:
    ckpt, _ = reference
    data = torch.load(ckpt, weights_only=True)
    del data["wf"]
    torch.save(data, tmp_path / "nocfg.pth")
    with pytest.raises(CheckpointError, match="missing wf"):
        load_checkpoint(tmp_path / "nocfg.pth")


def test_unknown_device_is_a_clear_error(reference) -> None:
    ckpt, _ = reference
    with pytest.raises(ValueError, match="Unknown device"):
        load_checkpoint(ckpt, device="tpu")


def test_bf16_checkpoints_load_and_damaged_ones_are_refused(tmp_path, shared_dir) -> None:
    """A bfloat16 file loads (no traceback); NaN weights and a declared depth the tensors do not have
    are refused before any network is built."""
    from napari_hoverfast.core.model import CheckpointError, load_checkpoint

    ckpt = torch.load(shared_dir / "reference" / "ckpt_A.pth", weights_only=True)
    bf16 = dict(ckpt, model_dict={k: v.bfloat16() if v.is_floating_point() else v for k, v in ckpt["model_dict"].items()})
    torch.save(bf16, tmp_path / "bf16.pth")
    assert load_checkpoint(tmp_path / "bf16.pth", device="cpu").config.depth == ckpt["depth"]

    nan = dict(ckpt, model_dict=dict(ckpt["model_dict"]))
    key = next(k for k, v in nan["model_dict"].items() if v.is_floating_point())
    nan["model_dict"][key] = torch.full_like(nan["model_dict"][key], float("nan"))
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(tmp_path / "nan.pth", device="cpu")

    torch.save(dict(ckpt, depth=9, wf=10), tmp_path / "huge.pth")
    with pytest.raises(CheckpointError, match="declares depth 9"):  # from the tensors: nothing allocated
        load_checkpoint(tmp_path / "huge.pth", device="cpu")
