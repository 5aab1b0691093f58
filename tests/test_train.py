"""Training on real annotated tiles: loss goes down, checkpoints are upstream-format, resume works."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io

from napari_hoverfast.cli import main
from napari_hoverfast.core.geojson import write_detections
from napari_hoverfast.core.model import HoverFastNet, ModelConfig, load_checkpoint
from napari_hoverfast.core.postprocess import labels_to_polygons
from napari_hoverfast.core.targets import hv_maps
from napari_hoverfast.core.train import TrainOptions, hover_loss, train
from napari_hoverfast.core.training_data import (
    AugmentOptions,
    TrainingDataError,
    load_folder,
    make_batch,
)

SMALL = ModelConfig(depth=2, wf=3)


@pytest.fixture()
def two_tiles(tmp_path: Path, shared_dir: Path) -> Path:
    """Two real annotated gbm40 tiles (cropped to 192² to keep the test fast)."""
    src = shared_dir / "data" / "nuclei" / "gbm40"
    dst = tmp_path / "data"
    (dst / "images").mkdir(parents=True)
    (dst / "masks").mkdir()
    for name in ("gbm_01", "gbm_02"):
        io.imsave(dst / "images" / f"{name}.png", io.imread(src / "images" / f"{name}.png")[:192, :192, :3], check_contrast=False)
        io.imsave(dst / "masks" / f"{name}.png", io.imread(src / "masks" / f"{name}.png")[:192, :192], check_contrast=False)
    return dst


def test_hv_targets_follow_the_published_definition() -> None:
    labels = np.zeros((5, 7), np.int32)
    labels[1:4, 1:6] = 1
    h, v = hv_maps(labels)
    np.testing.assert_allclose(h[2, 1:6], [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(v[1:4, 3], [-1, 0, 1])
    assert (h[labels == 0] == 0).all() and (v[labels == 0] == 0).all()


def test_short_training_lowers_the_loss(two_tiles: Path, tmp_path: Path) -> None:
    tiles = load_folder(two_tiles)
    plain = AugmentOptions(scale_range=(1.0, 1.0), hed_sigma=0, hed_bias=0, brightness=0, contrast=0, saturation=0,
                           blur_probability=0, lowres_probability=0)
    x, mask, maps = (torch.from_numpy(a) for a in make_batch(tiles, 4, 96, np.random.default_rng(5), plain))

    def loss_of(net: HoverFastNet) -> float:
        net.eval()
        with torch.no_grad():
            return float(hover_loss(*net(x), mask, maps)[0])

    torch.manual_seed(0)
    before = loss_of(HoverFastNet(SMALL))
    out = tmp_path / "model.pth"
    options = TrainOptions(data=(two_tiles,), output=out, config=SMALL, steps=30, batch_size=4, patch_size=96,
                           learning_rate=3e-3, eval_every=10, val_fraction=0.5, seed=0, device="cpu", precision="fp32")
    result = train(options)
    assert result.steps_done == 30 and out.is_file()
    after = loss_of(load_checkpoint(out, device="cpu").net)
    assert after < 0.8 * before, (before, after)
    # upstream layout: the keys HoverFast's own loader reads
    ckpt = torch.load(out, weights_only=True)
    for key in ("model_dict", "optim_dict", "epoch", "best_loss_on_test", "depth", "wf", "padding", "batch_norm", "up_mode", "conv_block", "n_classes", "in_channels"):
        assert key in ckpt
    assert ckpt["depth"] == 2 and ckpt["wf"] == 3


def test_training_is_deterministic_and_resumes(two_tiles: Path, tmp_path: Path) -> None:
    def run(out: Path, steps: int, resume: Path | None = None) -> dict[str, torch.Tensor]:
        options = TrainOptions(data=(two_tiles,), output=out, config=SMALL, steps=steps, batch_size=2, patch_size=64,
                               eval_every=2, val_fraction=0.5, seed=3, device="cpu", precision="fp32", resume=resume)
        train(options)
        return torch.load(out.with_name(out.stem + ".last.pth"), weights_only=True)["model_dict"]

    a = run(tmp_path / "a.pth", 4)
    b = run(tmp_path / "b.pth", 4)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    first = run(tmp_path / "c.pth", 2)
    resumed = run(tmp_path / "d.pth", 4, resume=tmp_path / "c.last.pth")
    assert torch.load(tmp_path / "d.last.pth", weights_only=True)["epoch"] == 4
    assert any(not torch.equal(first[k], resumed[k]) for k in first if first[k].is_floating_point())


def test_geojson_annotations_are_a_training_format(two_tiles: Path, tmp_path: Path) -> None:
    folder = tmp_path / "geo"
    (folder / "images").mkdir(parents=True)
    shutil.copy(two_tiles / "images" / "gbm_01.png", folder / "images" / "gbm_01.png")
    labels = io.imread(two_tiles / "masks" / "gbm_01.png").astype(np.int32)
    polygons = [p for _, p in labels_to_polygons(labels, simplify=0)]
    write_detections(folder / "gbm_01.geojson", polygons, object_type="annotation")
    (tile,) = load_folder(folder)
    agreement = ((tile.labels > 0) == (labels > 0)).mean()
    assert agreement > 0.99 and tile.labels.max() == len(polygons)


def test_bad_training_folders(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="no images/ folder"):
        load_folder(tmp_path)
    (tmp_path / "images").mkdir()
    io.imsave(tmp_path / "images" / "a.png", np.zeros((16, 16, 3), np.uint8), check_contrast=False)
    with pytest.raises(TrainingDataError, match="no mask"):
        load_folder(tmp_path)


def test_train_cli(two_tiles: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.pth"
    rc = main(["train", str(two_tiles), "-o", str(out), "--steps", "2", "--batch-size", "2", "--patch-size", "64",
               "--depth", "2", "--wf", "2", "--eval-every", "1", "--device", "cpu", "--precision", "fp32", "--val", "gbm_02",
               "--haematoxylin-only", "0.5"])
    assert rc == 0 and out.is_file()
    assert "trained 2 steps" in capsys.readouterr().out
    assert load_checkpoint(out, device="cpu").config.wf == 2


def _two_step_weights(data: Path, out: Path, *flags: str) -> dict[str, torch.Tensor]:
    """The weights after two seeded CPU steps of ``train`` with these extra flags: runs that differ
    only in one flag show whether that flag reaches training."""
    rc = main(["train", str(data), "-o", str(out), "--steps", "2", "--batch-size", "2", "--patch-size", "64",
               "--depth", "2", "--wf", "2", "--eval-every", "2", "--device", "cpu", "--precision", "fp32",
               "--val", "gbm_02", "--seed", "5", *flags])
    assert rc == 0
    return torch.load(out.with_name(out.stem + ".last.pth"), weights_only=True)["model_dict"]


def test_train_cli_haematoxylin_only_reaches_the_batches(two_tiles: Path, tmp_path: Path) -> None:
    """``--haematoxylin-only`` changes what is trained on: same seed, different weights; the same flag twice, the same."""
    def run(name: str, share: str) -> dict[str, torch.Tensor]:
        return _two_step_weights(two_tiles, tmp_path / f"{name}.pth", "--haematoxylin-only", share)

    plain, again, redrawn = run("plain", "0"), run("again", "0"), run("redrawn", "1")
    assert all(torch.equal(plain[k], again[k]) for k in plain)
    assert any(not torch.equal(plain[k], redrawn[k]) for k in plain if plain[k].is_floating_point())


def test_fine_tuning_starts_from_the_given_weights(two_tiles: Path, tmp_path: Path, shared_dir: Path) -> None:
    """``init`` takes the file's configuration and weights and restarts the schedule at step 0."""
    source = shared_dir / "reference" / "ckpt_A.pth"
    state = torch.load(source, weights_only=True)["model_dict"]  # as stored: a loaded model has batch norm folded
    start = {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    out = tmp_path / "tuned.pth"
    options = TrainOptions(data=(two_tiles,), output=out, config=SMALL, steps=1, batch_size=1, patch_size=64,
                           learning_rate=1e-9, eval_every=1, val_fraction=0.5, seed=0, device="cpu",
                           precision="fp32", init=source)
    result = train(options)
    assert result.steps_done == 1
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["epoch"] == 1 and (ckpt["depth"], ckpt["wf"]) == (3, 4)  # the source's config, not SMALL
    tuned = ckpt["model_dict"]
    for key, value in start.items():  # parameters (batch-norm running statistics move in training mode)
        torch.testing.assert_close(tuned[key].float(), value, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="not both"):
        train(TrainOptions(data=(two_tiles,), output=out, init=source, resume=source, device="cpu"))


def test_cli_init_default_fine_tunes_the_embedded_model(two_tiles: Path, tmp_path: Path) -> None:
    from napari_hoverfast.core.default_model import has_default_model

    if not has_default_model():
        pytest.skip("no embedded default model")
    out = tmp_path / "mine.pth"
    rc = main(["train", str(two_tiles), "-o", str(out), "--init", "default", "--steps", "1", "--batch-size", "1",
               "--patch-size", "64", "--eval-every", "1", "--device", "cpu", "--precision", "fp32"])
    from napari_hoverfast.core.default_model import load_default_model

    assert rc == 0 and load_checkpoint(out, device="cpu").config == load_default_model("cpu").config


def test_output_is_checked_first_and_divergence_stops_with_an_error(two_tiles: Path, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(OSError, match="does not exist"):
        train(TrainOptions(data=(two_tiles,), output=tmp_path / "missing" / "m.pth", config=SMALL, steps=1, device="cpu"))
    (tmp_path / "a-folder.pth").mkdir()
    with pytest.raises(OSError, match="it is a folder"):
        train(TrainOptions(data=(two_tiles,), output=tmp_path / "a-folder.pth", config=SMALL, steps=1, device="cpu"))
    out = tmp_path / "diverged.pth"
    import napari_hoverfast.core.train as train_module

    real_loss, calls = train_module.hover_loss, []

    def diverging(*args):  # the loss a far too high learning rate ends in, at the third step
        loss, parts = real_loss(*args)
        calls.append(1)
        return (loss * float("nan") if len(calls) >= 3 else loss), parts

    monkeypatch.setattr(train_module, "hover_loss", diverging)
    with pytest.raises(FloatingPointError, match="diverged at step 3"):
        train(TrainOptions(data=(two_tiles,), output=out, config=SMALL, steps=50, batch_size=2, patch_size=64,
                           eval_every=100, device="cpu"))
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary checkpoint left behind


def test_set_weights_give_each_set_its_share_of_the_batches(two_tiles: Path, tmp_path: Path) -> None:
    from napari_hoverfast.core.training_data import tile_weights

    other = tmp_path / "other"
    shutil.copytree(two_tiles, other)
    tiles = load_folder(two_tiles) + load_folder(other)
    equal = tile_weights(tiles)
    assert np.isclose(equal[:2].sum(), 0.5)
    favoured = tile_weights(tiles, {"other": 3.0})
    assert np.isclose(favoured[2:].sum(), 0.75) and np.allclose(favoured[2:] / favoured[2:].sum(), equal[2:] / equal[2:].sum())
    # Drawn as weighted: about three of four patches come from "other".
    rng = np.random.default_rng(0)
    picks = rng.choice(len(tiles), size=4000, p=favoured)
    assert 0.72 < np.mean(picks >= 2) < 0.78
    # A short run with a weight trains; a weight for a folder not given, or not above 0, is refused.
    out = tmp_path / "weighted.pth"
    result = train(TrainOptions(data=(two_tiles, other), output=out, config=SMALL, steps=2, batch_size=2, patch_size=64,
                                eval_every=1, device="cpu", precision="fp32", set_weights=(("other", 3.0),)))
    assert result.steps_done == 2 and out.is_file()
    with pytest.raises(ValueError, match="'consep' , which is not one of the data folders".replace(" ,", ",")):
        TrainOptions(data=(two_tiles, other), output=out, set_weights=(("consep", 2.0),))
    with pytest.raises(ValueError, match="must be a finite number above 0"):
        TrainOptions(data=(two_tiles,), output=out, set_weights=(("data", 0.0),))
    with pytest.raises(ValueError, match="one set weight"):
        TrainOptions(data=(two_tiles,), output=out, set_weights=(("data", 1.0), ("data", 2.0)))


def test_train_cli_refuses_a_bad_set_weight_in_words(two_tiles: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    base = [sys.executable, "-m", "napari_hoverfast.cli", "train", str(two_tiles), "-o", str(tmp_path / "x.pth"), "--steps", "1"]
    bad = subprocess.run([*base, "--set-weight", "data"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "is not NAME=WEIGHT" in bad.stderr
    bad = subprocess.run([*base, "--set-weight", "data=-1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "must be above 0" in bad.stderr
    bad = subprocess.run([*base, "--set-weight", "tnbc=2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "'tnbc', which is not one of the data folders (data)" in bad.stderr
    assert not (tmp_path / "x.pth").exists()


def test_validation_pq_scores_the_product_nuclei_of_whole_tiles(two_tiles: Path) -> None:
    """The embedded model finds the nuclei of real glioblastoma tiles (PQ as in bench_accuracy);
    an untrained network finds none that match."""
    from napari_hoverfast.core.default_model import has_default_model, load_model
    from napari_hoverfast.core.train_select import validation_pq

    if not has_default_model():
        pytest.skip("no embedded default model")
    tiles = load_folder(two_tiles)
    model = load_model(None, device="cpu")
    good = validation_pq(model.net, tiles, model.config.multiple, torch.device("cpu"), bf16=False)
    torch.manual_seed(0)
    untrained = HoverFastNet(SMALL)
    bad = validation_pq(untrained, tiles, SMALL.multiple, torch.device("cpu"), bf16=False)
    assert good > 0.6 and bad < 0.1, (good, bad)


def test_the_kept_checkpoint_follows_pq_not_loss_when_pq_selects() -> None:
    """The rule itself, where loss and PQ disagree (a short real run cannot be made to disagree)."""
    from napari_hoverfast.core.train import improves

    assert improves(0.50, 0.61, 0.40, 0.60)  # higher PQ wins though the loss is worse
    assert not improves(0.30, 0.59, 0.40, 0.60)  # lower loss does not win against a higher kept PQ
    assert not improves(0.30, 0.60, 0.40, 0.60)  # a tie keeps the earlier step
    assert improves(9.0, 0.0, float("inf"), None)  # the first evaluation is always kept
    assert improves(0.30, None, 0.40, None) and not improves(0.40, None, 0.40, None)  # loss rule


def test_select_pq_keeps_the_checkpoint_with_the_best_validation_pq(two_tiles: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from napari_hoverfast.core.default_model import default_model_path, has_default_model

    if not has_default_model():
        pytest.skip("no embedded default model")
    out = tmp_path / "pq.pth"
    options = TrainOptions(data=(two_tiles,), output=out, steps=3, batch_size=2, patch_size=64, learning_rate=3e-3,
                           eval_every=1, val_names=("gbm_02",), seed=0, device="cpu", precision="fp32",
                           init=default_model_path(), select="pq")
    seen: list[tuple[int, float | None, float]] = []
    result = train(options, on_progress=lambda p: seen.append((p.step, p.val_pq, p.best_val_loss)))
    assert all(pq is not None for _, pq, _ in seen)
    step, best_pq, loss = max(seen, key=lambda s: (s[1], -s[0]))  # the first step with the highest PQ
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["epoch"] == step and ckpt["best_val_pq"] == pytest.approx(best_pq)
    assert result.best_val_pq == pytest.approx(best_pq) and result.best_val_loss == pytest.approx(loss)
    assert ckpt["best_loss_on_test"] == pytest.approx(loss)  # upstream's field keeps the kept checkpoint's loss
    latest = tmp_path / "pq.last.pth"
    resumed = train(TrainOptions(data=(two_tiles,), output=out, steps=4, batch_size=2, patch_size=64, learning_rate=3e-3,
                                 eval_every=1, val_names=("gbm_02",), seed=0, device="cpu", precision="fp32",
                                 resume=latest, select="pq"))
    # the kept PQ travels with every checkpoint: a resumed run keeps it (or beats it), never forgets it
    assert torch.load(latest, weights_only=True)["best_val_pq"] == pytest.approx(resumed.best_val_pq)
    assert resumed.best_val_pq >= best_pq
    with pytest.raises(ValueError, match="select must be"):
        TrainOptions(data=(two_tiles,), output=out, select="f1")  # type: ignore[arg-type]

    cli = subprocess.run([sys.executable, "-m", "napari_hoverfast.cli", "train", str(two_tiles), "-o", str(tmp_path / "c.pth"),
                          "--init", "default", "--steps", "1", "--batch-size", "1", "--patch-size", "64", "--eval-every", "1",
                          "--device", "cpu", "--precision", "fp32", "--val", "gbm_02", "--select", "pq"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert "kept for its validation PQ 0." in cli.stdout and (tmp_path / "c.pth").is_file()


def test_mask_weight_weighs_the_mask_terms_and_reaches_the_weights(two_tiles: Path, tmp_path: Path, capsys) -> None:
    """``--mask-weight`` scales cross-entropy + Dice only, changes what training learns, and is refused
    in words (and before any file is written) outside (0, 100]."""
    tiles = load_folder(two_tiles)
    x, mask, maps = (torch.from_numpy(a) for a in make_batch(tiles, 2, 64, np.random.default_rng(1), AugmentOptions()))
    net = HoverFastNet(SMALL).eval()
    with torch.no_grad():
        logits, pred = net(x)
    one, parts = hover_loss(logits, pred, mask, maps)
    three, _ = hover_loss(logits, pred, mask, maps, mask_weight=3.0)
    assert float(three - one) == pytest.approx(2.0 * (parts["ce"] + parts["dice"]), rel=1e-5)

    plain = _two_step_weights(two_tiles, tmp_path / "plain.pth", "--mask-weight", "1")
    heavy = _two_step_weights(two_tiles, tmp_path / "heavy.pth", "--mask-weight", "4")
    assert any(not torch.equal(plain[k], heavy[k]) for k in plain if plain[k].is_floating_point())
    for bad in (0.0, -1.0, float("nan"), 101.0):
        with pytest.raises(ValueError, match="mask weight must be"):
            TrainOptions(data=(two_tiles,), output=tmp_path / "bad.pth", mask_weight=bad)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", str(two_tiles), "-o", str(tmp_path / "bad.pth"), "--mask-weight", "0"])
    assert "mask weight must be above 0 and at most 100, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "bad.pth").exists()
