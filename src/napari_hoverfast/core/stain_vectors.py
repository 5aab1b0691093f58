"""Stain vectors estimated from the slide itself (Macenko et al. 2009), for the stain measurements.

scikit-image's fixed vectors (Ruifrok & Johnston 2001) describe one lab's stains; a slide stained
darker, bluer or with another eosin puts part of each stain into the other's channel. Macenko's
method fits the slide's own two vectors from its tissue pixels:

1. optical density per channel, ``OD = max(0, −log10(max(I, 1)/255))`` (as the measurements);
2. drop glass and faint pixels: an OD vector shorter than ``beta`` (0.15 in the paper). Its
   length, not every channel: a pale haematoxylin counterstain or a pure eosin has one channel
   near 0, and on the shared IHC tile an every-channel rule keeps 6× fewer pixels;
3. the plane of the two main directions of the remaining OD vectors (eigenvectors of their
   second-moment matrix: stains mix linearly in OD, so the plane passes through the origin);
4. project every pixel on that plane and take its angle; the robust extremes, the ``alpha`` and
   ``100 − alpha`` percentiles (1 and 99), are the directions of the two purest stains;
5. name them: the assignment closer (sum of cosines) to scikit-image's reference pair decides which
   one is haematoxylin.

Reference: M. Macenko et al., "A method for normalizing histology slides for quantitative
analysis", IEEE ISBI 2009, 1107–1110, doi:10.1109/ISBI.2009.5193250.

The unmixing matrix is built as scikit-image builds ``hdx_from_rgb``: the two vectors and a third,
their normalised cross product (a residual orthogonal to both), as the rows of a 3×3 matrix, then
its inverse; its first two columns map an OD row vector to the two stains, exactly where
``measurements._UNMIX`` puts the fixed ones. An estimate that cannot be trusted is refused with a
:class:`StainVectorError` that says why (too little tissue, vectors too close, a vector far from
its stain): a measurement with silently substituted vectors would be worse than none.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from skimage.color import rgb_from_hdx, rgb_from_hed

from .measurements import OD_LUT, STAINS, StainMode

log = logging.getLogger(__name__)

Vector = tuple[float, float, float]
#: A vector as given: a tuple, a list or an array of 3 numbers.
VectorLike = Sequence[float] | npt.NDArray[np.float64]

#: scikit-image's reference vectors (unit, RGB OD), haematoxylin first, per stain mode.
REFERENCE: dict[str, tuple[Vector, Vector]] = {
    "he": (tuple(rgb_from_hed[0]), tuple(rgb_from_hed[1])),  # type: ignore[dict-item]
    "ihc_dab": (tuple(rgb_from_hdx[0]), tuple(rgb_from_hdx[1])),  # type: ignore[dict-item]
}


class StainVectorError(ValueError):
    """Stain vectors that cannot be estimated or used; the message names the reason."""


@dataclass(frozen=True)
class EstimateOptions:
    """Macenko's parameters and the checks an estimate must pass."""

    #: Pixels whose OD vector is shorter than this are glass or too faint to carry a stain (paper: 0.15).
    beta: float = 0.15
    #: Percentile of the extreme angles (paper: 1, i.e. the 1st and 99th percentiles).
    alpha: float = 1.0
    #: Fewest tissue pixels an estimate is made from.
    min_pixels: int = 2000
    #: Smallest angle between the two vectors (degrees): closer, they cannot be told apart.
    min_angle_deg: float = 5.0
    #: Largest angle between an estimated vector and scikit-image's for the same stain (degrees):
    #: further, the image is probably not of these stains (or the mode is wrong).
    max_deviation_deg: float = 45.0

    def __post_init__(self) -> None:
        if not 0 < self.beta < 3:
            raise StainVectorError(f"beta must be in (0, 3), got {self.beta!r}")
        if not 0 <= self.alpha < 50:
            raise StainVectorError(f"alpha must be in [0, 50), got {self.alpha!r}")
        if self.min_pixels < 10:
            raise StainVectorError(f"min_pixels must be at least 10, got {self.min_pixels!r}")


@dataclass(frozen=True)
class StainVectors:
    """Two stain vectors (unit, RGB OD space, haematoxylin first) and their unmixing matrix."""

    stain: StainMode
    vectors: tuple[Vector, Vector]
    #: 3×3 inverse of ``[v1; v2; v1 × v2]`` (rows): ``od_row @ matrix`` gives (stain 1, stain 2, residual).
    matrix: tuple[Vector, Vector, Vector]
    #: How they were obtained: ``"reference"``, ``"given"`` or ``"macenko"``.
    method: str = "given"
    #: Tissue pixels the estimate used (0 unless estimated).
    pixels: int = 0

    @property
    def unmix(self) -> npt.NDArray[np.float64]:
        """3 channels × 2 stains: the part of ``matrix`` the measurements use (as ``measurements._UNMIX``)."""
        return np.asarray(self.matrix, dtype=np.float64)[:, :2]

    @property
    def angle_deg(self) -> float:
        """Angle between the two vectors."""
        return _angle(self.vectors[0], self.vectors[1])

    def deviation_deg(self) -> tuple[float, float]:
        """Each vector's angle to scikit-image's vector of the same stain."""
        ref = REFERENCE[self.stain]
        return _angle(self.vectors[0], ref[0]), _angle(self.vectors[1], ref[1])

    def record(self, digits: int = 4) -> dict[str, Any]:
        """JSON-ready description for the run's parameters (run.json)."""
        names = STAINS[self.stain]
        return {
            "method": self.method,
            **{name: [round(float(v), digits) for v in vec] for name, vec in zip(names, self.vectors, strict=True)},
            "angle_deg": round(self.angle_deg, 2),
            "deviation_deg": [round(d, 2) for d in self.deviation_deg()],
            **({"pixels": self.pixels} if self.pixels else {}),
        }


def _unit(v: VectorLike) -> npt.NDArray[np.float64]:
    a = np.asarray(v, dtype=np.float64)
    n = float(np.linalg.norm(a))
    if not math.isfinite(n) or n == 0:
        raise StainVectorError(f"a stain vector must be finite and non-zero, got {list(v)!r}")
    return a / n


def _angle(a: VectorLike, b: VectorLike) -> float:
    cos = float(np.clip(np.dot(_unit(a), _unit(b)), -1.0, 1.0))
    return math.degrees(math.acos(cos))


def stain_vectors(first: VectorLike, second: VectorLike, stain: StainMode, *, method: str = "given",
                  pixels: int = 0, options: EstimateOptions | None = None) -> StainVectors:
    """Checked stain vectors (any length; normalised here) and their unmixing matrix.

    Refused: a vector with a negative component (no stain makes light), vectors closer than
    ``min_angle_deg``, or (only for ``method="macenko"``) a vector further than
    ``max_deviation_deg`` from its stain's reference, which an estimate on the wrong stain gives.
    """
    if stain not in STAINS:
        raise StainVectorError(f"Unknown stain {stain!r}: use 'he' or 'ihc_dab'")
    opts = options or EstimateOptions()
    names = STAINS[stain]
    units = []
    for name, v in zip(names, (first, second), strict=True):
        if len(v) != 3:
            raise StainVectorError(f"the {name} vector needs 3 components (R, G, B), got {len(v)}")
        u = _unit(v)
        if (u < -1e-6).any():
            raise StainVectorError(f"the {name} vector {np.round(u, 3).tolist()} has a negative optical density")
        units.append(np.maximum(u, 0.0))
    angle = _angle(units[0], units[1])
    if angle < opts.min_angle_deg:
        raise StainVectorError(
            f"degenerate stain vectors: {names[0]} and {names[1]} are {angle:.1f}° apart (at least "
            f"{opts.min_angle_deg:g}° needed): the image shows one stain only"
        )
    if method == "macenko":
        for name, u, ref in zip(names, units, REFERENCE[stain], strict=True):
            off = _angle(u, ref)
            if off > opts.max_deviation_deg:
                raise StainVectorError(
                    f"the estimated {name} vector {np.round(u, 3).tolist()} is {off:.0f}° from scikit-image's "
                    f"(at most {opts.max_deviation_deg:g}°): is the stain {stain!r} right, and is {name} on the slide?"
                )
    residual = np.cross(units[0], units[1])
    residual /= np.linalg.norm(residual)
    matrix = np.linalg.inv(np.stack([units[0], units[1], residual]))
    return StainVectors(
        stain=stain, vectors=(_as_vector(units[0]), _as_vector(units[1])),
        matrix=(_as_vector(matrix[0]), _as_vector(matrix[1]), _as_vector(matrix[2])), method=method, pixels=pixels,
    )


def _as_vector(a: npt.NDArray[np.float64]) -> Vector:
    return float(a[0]), float(a[1]), float(a[2])


def reference_vectors(stain: StainMode) -> StainVectors:
    """scikit-image's pair with the orthogonal residual (for ``ihc_dab`` exactly ``hdx_from_rgb``)."""
    first, second = REFERENCE[stain]
    return stain_vectors(first, second, stain, method="reference")


def tissue_od(rgb: npt.NDArray[np.uint8], beta: float, mask: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.float64]:
    """N×3 optical densities of the pixels of ``rgb`` (…×3 uint8) whose OD vector is at least ``beta`` long."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise StainVectorError(f"expected uint8 RGB with 3 channels last, got {rgb.dtype} {rgb.shape}")
    pixels = rgb.reshape(-1, 3) if mask is None else rgb[np.asarray(mask, dtype=bool)]
    od = OD_LUT[pixels]
    return od[np.einsum("ij,ij->i", od, od) >= beta * beta]


def estimate_stain_vectors(rgb: npt.NDArray[np.uint8], stain: StainMode, *, mask: npt.NDArray[np.bool_] | None = None,
                           options: EstimateOptions | None = None) -> StainVectors:
    """The slide's two stain vectors by Macenko's method, from ``rgb`` (…×3 uint8; the pixels where
    ``mask``, of ``rgb``'s shape less the channels, is true only, when given). Raises :class:`StainVectorError` when it cannot be trusted."""
    opts = options or EstimateOptions()
    od = tissue_od(rgb, opts.beta, mask)
    if len(od) < opts.min_pixels:
        raise StainVectorError(
            f"too little stained tissue to estimate stain vectors: {len(od)} pixels with an optical density of "
            f"at least {opts.beta:g}, {opts.min_pixels} needed (glass, a blank or a faint image?)"
        )
    # The plane through the origin that holds the OD vectors best: the two leading eigenvectors of
    # their (uncentred) second-moment matrix.
    values, vectors = np.linalg.eigh(od.T @ od / len(od))
    e1, e2 = vectors[:, 2], vectors[:, 1]
    if values[1] <= 1e-12 * max(values[2], 1e-300):
        raise StainVectorError("degenerate stain vectors: the tissue's optical densities lie on one line (one stain only)")
    e1 = e1 if e1.sum() >= 0 else -e1  # the main direction points into positive OD
    if np.dot(e2, np.asarray(REFERENCE[stain][0])) < 0:
        e2 = -e2  # angles measured toward haematoxylin: only the naming below depends on it
    angles = np.arctan2(od @ e2, od @ e1)
    low, high = np.percentile(angles, [opts.alpha, 100.0 - opts.alpha])
    a = math.cos(low) * e1 + math.sin(low) * e2
    b = math.cos(high) * e1 + math.sin(high) * e2
    a, b = _positive(a), _positive(b)
    ref = [_unit(r) for r in REFERENCE[stain]]
    if np.dot(a, ref[0]) + np.dot(b, ref[1]) >= np.dot(b, ref[0]) + np.dot(a, ref[1]):
        first, second = a, b
    else:
        first, second = b, a
    found = stain_vectors(first, second, stain, method="macenko", pixels=len(od), options=opts)
    log.info("Estimated %s stain vectors from %d pixels: %s", stain, len(od), found.record())
    return found


def _positive(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """An extreme direction may leave the positive octant by a hair (noise): clip, renormalise.

    A clearly negative component stays, and :func:`stain_vectors` refuses it.
    """
    v = np.where((v < 0) & (v > -0.05), 0.0, v)
    return v / np.linalg.norm(v)


# ---- a run's vectors ------------------------------------------------------------------------------

#: Most pixels the low-resolution read for an estimate holds (all regions together).
MAX_ESTIMATE_PIXELS = 4_000_000


def check_setting(setting: Any, stain: StainMode) -> str | tuple[Vector, Vector]:
    """``"default"``, ``"estimated"`` or two explicit vectors (checked, as tuples): a run's option."""
    if isinstance(setting, str):
        if setting not in ("default", "estimated"):
            raise StainVectorError(f"stain_vectors is 'default', 'estimated' or two RGB OD vectors, got {setting!r}")
        return setting
    try:
        first, second = setting
        pair = (_as_vector(np.asarray(first, dtype=np.float64)), _as_vector(np.asarray(second, dtype=np.float64)))
        ok = len(first) == 3 and len(second) == 3
    except (TypeError, ValueError, IndexError):
        ok = False
    if not ok:
        raise StainVectorError(f"stain_vectors is 'default', 'estimated' or two RGB OD vectors, got {setting!r}")
    stain_vectors(*pair, stain)  # refuses negative or degenerate vectors now, not mid-run
    return pair


def vectors_for_run(setting: str | tuple[Vector, Vector], slide: Any, regions: Sequence[Any] | None, stain: StainMode,
                    tissue: Any = None, *, max_pixels: int = MAX_ESTIMATE_PIXELS,
                    options: EstimateOptions | None = None) -> StainVectors | None:
    """The vectors a run unmixes with: ``None`` for scikit-image's (``"default"``), the given pair,
    or Macenko's estimate from one low-resolution read of the level-0 ``regions`` (the whole slide
    when ``None``; only its ``tissue``, a :class:`~napari_hoverfast.core.tissue.TissueMask`, when given)."""
    if isinstance(setting, str) and setting == "default":
        return None
    if not isinstance(setting, str):
        return stain_vectors(*setting, stain)
    rgb, mask = overview_pixels(slide, regions, tissue, max_pixels=max_pixels)
    return estimate_stain_vectors(rgb, stain, mask=mask, options=options)


def overview_pixels(slide: Any, regions: Sequence[Any] | None, tissue: Any = None, *,
                    max_pixels: int = MAX_ESTIMATE_PIXELS) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_] | None]:
    """N×3 pixels of the regions read at one downsample (at most ``max_pixels`` in all) from the
    slide's coarsest sufficient level, and which are on ``tissue`` (``None`` without a mask).

    One downsample for all regions keeps each pixel's weight equal; the estimate needs the stains'
    colours, not the nuclei's detail, so a coarse read (a few megapixels) is enough.
    """
    width, height = slide.dimensions
    boxes = []
    for r in regions or [None]:
        x0, y0, x1, y1 = (0, 0, width, height) if r is None else (r.x, r.y, r.x + r.w, r.y + r.h)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x1 > x0 and y1 > y0:
            boxes.append((x0, y0, x1 - x0, y1 - y0))
    area = sum(w * h for _, _, w, h in boxes)
    downsample = max(1.0, math.sqrt(area / max(1, max_pixels)))
    pixels, on_tissue = [], []
    for x, y, w, h in boxes:
        if round(w / downsample) < 1 or round(h / downsample) < 1:
            continue
        rgb = slide.read_region(x, y, w, h, downsample=downsample)
        pixels.append(rgb.reshape(-1, 3))
        if tissue is not None:
            rows, cols = rgb.shape[:2]
            # each output pixel's centre in level 0, then in the mask's pixels
            cy = ((y + (np.arange(rows) + 0.5) * h / rows) / tissue.downsample).astype(np.int64)
            cx = ((x + (np.arange(cols) + 0.5) * w / cols) / tissue.downsample).astype(np.int64)
            mask = tissue.mask[np.clip(cy, 0, tissue.mask.shape[0] - 1)][:, np.clip(cx, 0, tissue.mask.shape[1] - 1)]
            on_tissue.append(mask.reshape(-1))
    if not pixels:
        return np.zeros((0, 3), np.uint8), None
    log.info("Stain vectors: reading %d region(s) at downsample %.2f", len(pixels), downsample)
    return np.concatenate(pixels), (np.concatenate(on_tissue) if tissue is not None else None)
