"""Train or fine-tune a HoverFast network on annotated tiles.

Losses as published (HoVer-Net / HoverFast): cross-entropy + soft Dice on the nucleus mask, MSE +
gradient MSE (inside nuclei) on the horizontal/vertical maps. Checkpoints use the upstream layout, so
HoverFast itself loads them, and training resumes from one. On CPUs with bfloat16 matrix units
(AVX-512 BF16 / AMX) autocast roughly halves the step time; weights and optimiser stay float32.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .device import resolve_device
from .limits import (
    SELECT_RULES,
    check_batch_pixels,
    check_batch_size,
    check_learning_rate,
    check_loss_weight,
    check_network,
    check_patch_size,
)
from .model import HoverFastNet, ModelConfig, read_checkpoint, save_checkpoint
from .train_select import validation_pq
from .training_data import AnnotatedTile, AugmentOptions, load_folder, make_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """One training run. ``steps`` counts optimiser steps; validation runs every ``eval_every``."""

    data: tuple[Path, ...]
    output: Path
    config: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 2000
    batch_size: int = 8
    patch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    eval_every: int = 100
    val_names: tuple[str, ...] = ()
    val_fraction: float = 0.1
    exclude: tuple[str, ...] = ()
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    resume: Path | None = None
    #: Start from these weights (and their configuration) with a fresh schedule: fine-tuning, e.g.
    #: the embedded default model on a user's own annotations. Exclusive with ``resume``.
    init: Path | None = None
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    max_minutes: float | None = None
    #: (data folder name, relative share of the batches) pairs: sets not named weigh 1, so by
    #: default every set is drawn equally. Lets a recipe favour the tissue it is meant for.
    set_weights: tuple[tuple[str, float], ...] = ()
    #: What picks the checkpoint kept at ``output``: the validation loss (upstream's rule) or the
    #: validation tiles' panoptic quality through the product's post-processing (``train_select``).
    select: Literal["loss", "pq"] = "loss"
    #: Weight of the nucleus-mask terms (cross-entropy + Dice) against the maps' terms. HoVer-Net's
    #: loss weighs them 1; the true mask is worth more PQ than the true maps to this small network
    #: (MODEL_CARD, "Which output limits PQ"), so a recipe may favour it.
    mask_weight: float = 1.0

    def __post_init__(self) -> None:
        """Refuse what would fail hours in or allocate without bound (the ranges live in limits.py,
        shared with the command line); the patch size is checked against a checkpoint's own
        configuration once it is read."""
        for name in ("steps", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a whole number of at least 0, got {self.seed!r}")
        check_network(self.config.depth, self.config.wf)
        check_patch_size(self.patch_size, 1 if self.resume or self.init else self.config.multiple)
        check_batch_pixels(check_batch_size(self.batch_size), self.patch_size)
        check_learning_rate(self.learning_rate)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight decay must be a finite number of at least 0, got {self.weight_decay!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"validation fraction must be from 0 to below 1, got {self.val_fraction!r}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise ValueError(f"max minutes must be a finite number above 0, got {self.max_minutes!r}")
        names = [Path(folder).name for folder in self.data]
        for name, weight in self.set_weights:
            if name not in names:
                raise ValueError(f"set weight for {name!r}, which is not one of the data folders ({', '.join(names)})")
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"the set weight of {name!r} must be a finite number above 0, got {weight!r}")
        if len({name for name, _ in self.set_weights}) != len(self.set_weights):
            raise ValueError("each data folder may be given one set weight")
        check_loss_weight("mask weight", self.mask_weight)
        if self.select not in SELECT_RULES:
            raise ValueError(f"select must be one of {', '.join(map(repr, SELECT_RULES))}, got {self.select!r}")


@dataclass(frozen=True)
class TrainProgress:
    step: int
    steps: int
    loss: float
    val_loss: float | None
    best_val_loss: float
    seconds: float
    #: Validation PQ at this step and of the kept checkpoint (``select="pq"`` only).
    val_pq: float | None = None
    best_val_pq: float | None = None


@dataclass(frozen=True)
class TrainResult:
    output: Path
    #: The validation loss of the kept checkpoint (with ``select="pq"``: of the best-PQ one).
    best_val_loss: float
    steps_done: int
    seconds: float
    train_names: tuple[str, ...]
    val_names: tuple[str, ...]
    best_val_pq: float | None = None


def _sobel_kernels(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=device) / 8.0
    return k.view(1, 1, 3, 3), k.t().contiguous().view(1, 1, 3, 3)


def hover_loss(
    logits: torch.Tensor,
    maps: torch.Tensor,
    mask: torch.Tensor,
    target_maps: torch.Tensor,
    mask_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """HoVer-Net's loss: w·(CE + Dice) (mask) + MSE + 2·MSGE (maps), w = 1 as published; returns the
    total and its (unweighted) parts."""
    logits = logits.float()
    maps = maps.float()
    ce = F.cross_entropy(logits, mask)
    prob = torch.softmax(logits, dim=1)[:, 1]
    fg = mask.float()
    dice = 1.0 - (2.0 * (prob * fg).sum() + 1.0) / (prob.sum() + fg.sum() + 1.0)
    mse = F.mse_loss(maps, target_maps)
    kx, ky = _sobel_kernels(maps.device)
    grads = []
    for channel, kernel in ((0, kx), (1, ky)):
        pred_g = F.conv2d(maps[:, channel : channel + 1], kernel, padding=1)
        true_g = F.conv2d(target_maps[:, channel : channel + 1], kernel, padding=1)
        grads.append((pred_g - true_g) ** 2)
    focus = fg.unsqueeze(1)
    msge = (torch.cat(grads, dim=1) * focus).sum() / (2.0 * focus.sum() + 1e-6)
    total = mask_weight * (ce + dice) + mse + 2.0 * msge
    parts = {"ce": ce.item(), "dice": dice.item(), "mse": mse.item(), "msge": msge.item()}
    return total, parts


def _use_bf16(precision: str, device: torch.device) -> bool:
    if precision == "bf16":
        return True
    if precision == "fp32" or device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def split_tiles(
    tiles: Sequence[AnnotatedTile], options: TrainOptions
) -> tuple[list[AnnotatedTile], list[AnnotatedTile]]:
    """Training and validation tiles: named validation tiles, else a seeded random fraction."""
    tiles = [t for t in tiles if t.name not in set(options.exclude)]
    if options.val_names:
        unknown = set(options.val_names) - {t.name for t in tiles}
        if unknown:
            raise ValueError(f"Validation tiles not found: {', '.join(sorted(unknown))}")
        val = [t for t in tiles if t.name in options.val_names]
    else:
        rng = np.random.default_rng(options.seed)
        n_val = max(1, int(round(len(tiles) * options.val_fraction))) if len(tiles) > 1 else 0
        picks = set(rng.choice(len(tiles), size=n_val, replace=False).tolist()) if n_val else set()
        val = [t for i, t in enumerate(tiles) if i in picks]
    chosen = {id(t) for t in val}  # by identity: tiles of two folders may share a name and pixels
    train = [t for t in tiles if id(t) not in chosen]
    if not train:
        raise ValueError("No training tiles left after the validation split")
    return train, val


def _val_batches(tiles: Sequence[AnnotatedTile], size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Fixed, unaugmented validation patches (same every evaluation, so losses compare)."""
    rng = np.random.default_rng(seed + 1)
    plain = AugmentOptions(scale_range=(1.0, 1.0), hed_sigma=0, hed_bias=0, brightness=0, contrast=0, saturation=0,
                           blur_probability=0, lowres_probability=0)
    batches = []
    for tile in tiles:
        n = max(2, tile.labels.size // (size * size))
        batches.append(make_batch([tile], min(n, 8), size, rng, plain))
    return batches


def _to_tensors(batch: tuple[np.ndarray, np.ndarray, np.ndarray], device: torch.device) -> tuple[torch.Tensor, ...]:
    x, mask, maps = (torch.from_numpy(a).to(device) for a in batch)
    return x.contiguous(memory_format=torch.channels_last), mask, maps


def _lr_at(fraction: float, base: float) -> float:
    """Linear warm-up over the first 3 % of the run, then cosine decay to 1 % of ``base``."""
    warm = 0.03
    if fraction < warm:
        return base * max(fraction, 0.001) / warm
    t = min(1.0, (fraction - warm) / (1.0 - warm))
    return base * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


def improves(val_loss: float, val_pq: float | None, best_loss: float, best_pq: float | None) -> bool:
    """Whether this evaluation replaces the kept checkpoint: by validation PQ when it was measured
    (``select="pq"``; a tie keeps the earlier step), else by validation loss. The one place the rule
    lives, so a PQ-selected run never keeps a step for its lower loss."""
    if val_pq is not None:
        return best_pq is None or val_pq > best_pq
    return val_loss < best_loss


def train_iter(options: TrainOptions) -> Generator[TrainProgress, None, TrainResult]:
    """Train, yielding progress after every step; the best checkpoint (by validation loss, or by
    validation PQ with ``select="pq"``) is kept.

    A generator so the CLI can show a bar and a caller can stop between steps, keeping the best
    checkpoint written so far.
    """
    from .outputs import check_writable

    check_writable(options.output)  # before loading data or training, not after
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    tiles = [t for folder in options.data for t in load_folder(folder)]
    train_tiles, val_tiles = split_tiles(tiles, options)
    log.info("Training on %d tiles, validating on %d", len(train_tiles), len(val_tiles))
    device = resolve_device(options.device)
    bf16 = _use_bf16(options.precision, device)

    config = options.config
    start_step = 0
    best = float("inf")  # validation loss of the kept checkpoint
    best_pq: float | None = None  # its validation PQ, when PQ selects
    ckpt = None
    resuming = options.resume is not None
    if resuming and options.init is not None:
        raise ValueError("Give either resume (continue a run) or init (fine-tune from weights), not both")
    source = options.resume if resuming else options.init
    if source is not None:
        state, config, extras, _ = read_checkpoint(source)  # exactly as load_checkpoint reads and checks it
        check_patch_size(options.patch_size, config.multiple)  # the file's depth decides the multiple
        ckpt = {**extras, "model_dict": state}
        if resuming:
            start_step = int(ckpt.get("epoch", 0))
            best = float(ckpt.get("best_loss_on_test", float("inf")))
            if options.select == "pq" and isinstance(ckpt.get("best_val_pq"), (int, float)):
                best_pq = float(ckpt["best_val_pq"])
    net = HoverFastNet(config).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    if ckpt is not None:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["model_dict"].items()})
        if resuming:
            if ckpt.get("optim_dict"):
                optimizer.load_state_dict(ckpt["optim_dict"])
            rng = np.random.default_rng(options.seed + start_step)
    val = _val_batches(val_tiles, options.patch_size, options.seed) if val_tiles else []
    meta = {"train_tiles": [t.name for t in train_tiles], "val_tiles": [t.name for t in val_tiles]}
    by_pq = options.select == "pq" and bool(val_tiles)
    if options.select == "pq" and not val_tiles:
        log.warning("No validation tiles: the checkpoint is kept by training loss, not PQ")
    started = time.perf_counter()
    latest = Path(options.output).with_name(Path(options.output).stem + ".last.pth")

    def evaluate() -> float:
        net.eval()
        total = 0.0
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for batch in val:
                x, mask, maps = _to_tensors(batch, device)
                logits, pred = net(x)
                total += float(hover_loss(logits, pred, mask, maps, options.mask_weight)[0])
        net.train()
        return total / max(1, len(val))

    net.train()
    done = start_step
    for step in range(start_step, options.steps):
        # With a time budget, the schedule follows whichever runs out first (steps or time), so the
        # learning rate is annealed when the run stops; without one, training is fully deterministic.
        fraction = step / options.steps
        if options.max_minutes is not None:
            fraction = max(fraction, (time.perf_counter() - started) / (60 * options.max_minutes))
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(fraction, options.learning_rate)
        x, mask, maps = _to_tensors(make_batch(train_tiles, options.batch_size, options.patch_size, rng, options.augment, dict(options.set_weights)), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, pred = net(x)
        loss_t, _ = hover_loss(logits, pred, mask, maps, options.mask_weight)
        optimizer.zero_grad(set_to_none=True)
        loss_t.backward()
        optimizer.step()
        loss = loss_t.item()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training diverged at step {step + 1}: the loss is {loss}; lower the learning rate (--lr)"
                + ("" if best == float("inf") else f"; the best checkpoint so far is {options.output}")
            )
        val_loss = val_pq = None
        done = step + 1
        out_of_time = options.max_minutes is not None and time.perf_counter() - started > 60 * options.max_minutes
        if done % options.eval_every == 0 or done == options.steps or out_of_time:
            val_loss = evaluate() if val else loss
            if by_pq:
                val_pq = validation_pq(net, val_tiles, config.multiple, device, bf16)
                net.train()
            improved = improves(val_loss, val_pq, best, best_pq)
            if improved:
                best, best_pq = val_loss, val_pq
            # every checkpoint carries the kept one's PQ, so a run resumed from the latest compares against it
            extra = meta if best_pq is None else {**meta, "best_val_pq": best_pq}
            for path in (options.output, latest) if improved else (latest,):
                save_checkpoint(path, net, optimizer=optimizer, epoch=done, best_loss=best, extra=extra)
            if val_pq is None:
                log.info("step %d: loss %.4f, val %.4f (best %.4f)", done, loss, val_loss, best)
            else:
                log.info("step %d: loss %.4f, val %.4f, val PQ %.4f (best PQ %.4f)", done, loss, val_loss, val_pq, best_pq)
        yield TrainProgress(done, options.steps, loss, val_loss, best, time.perf_counter() - started, val_pq, best_pq)
        if out_of_time:
            log.info("Stopping after %.1f minutes (max_minutes)", options.max_minutes)
            break
    return TrainResult(
        output=Path(options.output),
        best_val_loss=best,
        best_val_pq=best_pq,
        steps_done=done if options.steps > start_step else start_step,
        seconds=time.perf_counter() - started,
        train_names=tuple(meta["train_tiles"]),
        val_names=tuple(meta["val_tiles"]),
    )


def train(options: TrainOptions, on_progress: Callable[[TrainProgress], None] | None = None) -> TrainResult:
    """Run :func:`train_iter` to the end and return its result."""
    run = train_iter(options)
    while True:
        try:
            progress = next(run)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(progress)
