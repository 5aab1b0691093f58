"""Checkpoint selection by panoptic quality on the validation tiles (``train --select pq``).

The validation loss is what the network minimises, not what a user sees: in the stage 6 run of
``docs/train_default.sh`` it fell from 0.3970 to 0.3842 while validation PQ stayed at 0.60, and the
best-loss and last checkpoints differed by 0.005 PQ in the opposite order. So a run can instead keep
the checkpoint whose nuclei match the validation tiles best: each whole tile goes through the
network and the product's post-processing (watershed, minimum area, shape rule), and its PQ is
scored against the tile's labels; the score is the mean over data sets of their tiles' mean, so
each set weighs the same, as in the batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .metrics import score
from .postprocess import PostprocessOptions, segment_with_labels
from .predict import prepare
from .training_data import AnnotatedTile

#: Reflected context around a whole validation tile, so its border sees image, not zeros.
CONTEXT_PX = 32
#: Watershed marker threshold of the selection: the one the embedded model ships with.
SELECT_MARKER_THRESHOLD = 0.5


def tile_maps(net: torch.nn.Module, image: np.ndarray, multiple: int, device: torch.device,
          bf16: bool) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus probability (H×W) and H/V maps (2×H×W) of one whole uint8 RGB tile."""
    h, w = image.shape[:2]
    below, right = CONTEXT_PX + (-(h + 2 * CONTEXT_PX) % multiple), CONTEXT_PX + (-(w + 2 * CONTEXT_PX) % multiple)
    mode = "reflect" if min(h, w) > max(below, right) else "edge"
    padded = np.pad(prepare(image[None], "he")[0], ((CONTEXT_PX, below), (CONTEXT_PX, right), (0, 0)), mode=mode)
    x = torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1)[None].to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits, maps = net(x)
    prob = torch.softmax(logits.float(), dim=1)[0, 1, CONTEXT_PX:CONTEXT_PX + h, CONTEXT_PX:CONTEXT_PX + w]
    hv = maps.float()[0, :, CONTEXT_PX:CONTEXT_PX + h, CONTEXT_PX:CONTEXT_PX + w]
    return prob.cpu().numpy(), hv.cpu().numpy()


def tile_pq(net: torch.nn.Module, tile: AnnotatedTile, multiple: int, device: torch.device, bf16: bool,
            options: PostprocessOptions) -> float:
    """PQ of the nuclei the network and post-processing find in ``tile`` against its labels."""
    prob, hv = tile_maps(net, tile.image, multiple, device, bf16)
    return maps_pq(prob, hv, tile.labels, options)


def maps_pq(prob: np.ndarray, hv: np.ndarray, truth: np.ndarray, options: PostprocessOptions) -> float:
    """PQ against ``truth`` of the nuclei the product's post-processing makes of these maps (the
    objects its minimum-area and shape rules drop are dropped here too)."""
    labels, polygons = segment_with_labels(prob, hv, options=options)
    kept = np.fromiter((label for label, _ in polygons), dtype=labels.dtype, count=len(polygons))
    return float(score(truth, np.where(np.isin(labels, kept), labels, 0)).pq)


def validation_pq(net: torch.nn.Module, tiles: Sequence[AnnotatedTile], multiple: int, device: torch.device,
                  bf16: bool, mpp: float = 0.25) -> float:
    """Mean over data sets of the mean PQ of their validation tiles (the network left in eval mode
    for the caller to put back). ``mpp`` is the tiles' resolution, for the minimum-area rule."""
    options = PostprocessOptions(mpp=mpp, marker_threshold=SELECT_MARKER_THRESHOLD)
    per_set: dict[str, list[float]] = {}
    net.eval()
    with torch.inference_mode():
        for tile in tiles:
            per_set.setdefault(tile.source, []).append(tile_pq(net, tile, multiple, device, bf16, options))
    return float(np.mean([np.mean(values) for values in per_set.values()])) if per_set else 0.0
