"""IHC positivity as QuPath's positive cell detection scores it, and the IHC input of the network.

Scoring: each nucleus is Negative, 1+, 2+ or 3+ by its DAB OD mean against three thresholds
(QuPath's defaults 0.2 / 0.4 / 0.6; a value equal to a threshold is in the class above, as in
QuPath). It is a pure function of the "Nucleus: DAB OD mean" column, so new thresholds re-classify
at once, without the network. The summary carries QuPath's annotation measurements ("Num 1+",
"Positive %", "H-score" = 1·%1+ + 2·%2+ + 3·%3+, 0–300).

Class names and colours are QuPath's own for classes without a parent (its ``PathClass`` base
colours brightened ×1.25), so QuPath shows imported nuclei as it shows its own.

Input: the embedded model learnt haematoxylin nuclei on H&E. On IHC, brown (DAB) nuclei and the pale
blue nuclei of a light counterstain both look unlike that; :func:`haematoxylin_like` redraws a tile
as haematoxylin only, from ``3.5·(H − 0.05) + DAB`` optical density (capped at 1.2), so both kinds
look like haematoxylin nuclei. The gains belong to the model (``benchmarks/tune_ihc_input.py``
searches them); model v3 also saw H&E patches redrawn this way in training. On the two shared Ki67
tiles it finds 180 of 237 marked nuclei, against 78 with the RGB as if H&E (``docs/MEASUREMENTS.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from skimage.color import rgb_from_hed

from .measurements import DAB_OD_MEAN, stain_od

if TYPE_CHECKING:
    from .nuclei import Nuclei

#: QuPath's intensity classes, weakest first; a nucleus's score is its index here.
CLASSES: tuple[str, ...] = ("Negative", "1+", "2+", "3+")
#: Their colours in QuPath (``PathClass`` base colours ×1.25, floored and clipped as QuPath does).
COLORS: dict[str, tuple[int, int, int]] = {
    "Negative": (112, 112, 225),
    "1+": (255, 255, 0),
    "2+": (255, 187, 62),
    "3+": (250, 62, 62),
}
#: Per-nucleus score column (0 = Negative … 3 = 3+; NaN where there is no DAB OD mean).
SCORE = "IHC score"
DEFAULT_THRESHOLDS = (0.2, 0.4, 0.6)


@dataclass(frozen=True)
class IhcOptions:
    """Thresholds of 1+, 2+ and 3+ on ``measurement`` (QuPath's "Nucleus: DAB OD mean" by default)."""

    thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS
    measurement: str = DAB_OD_MEAN

    def __post_init__(self) -> None:
        values = tuple(float(t) for t in self.thresholds)
        if len(values) != 3 or not all(math.isfinite(t) for t in values):
            raise ValueError(f"IHC thresholds must be three finite numbers (1+, 2+, 3+), got {self.thresholds!r}")
        if not values[0] < values[1] < values[2]:
            raise ValueError(f"IHC thresholds must increase (1+ < 2+ < 3+), got {values}")
        object.__setattr__(self, "thresholds", values)

    def score(self, values: Any) -> np.ndarray:
        """Scores 0–3 of DAB OD means (float64; NaN where the mean is NaN)."""
        v = np.asarray(values, dtype=np.float64)
        out = np.searchsorted(np.asarray(self.thresholds), v, side="right").astype(np.float64)
        out[~np.isfinite(v)] = np.nan
        return out


def class_names(scores: Any) -> np.ndarray:
    """Object array of class names for scores 0–3 (``None`` for NaN)."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.full(s.shape, None, dtype=object)
    ok = np.isfinite(s)
    out[ok] = np.asarray(CLASSES, dtype=object)[s[ok].astype(np.int64)]
    return out


@dataclass(frozen=True)
class IhcSummary:
    """Counts per class of the scored nuclei, with QuPath's % positive and H-score."""

    negative: int
    one_plus: int
    two_plus: int
    three_plus: int
    unscored: int = 0

    @classmethod
    def of_scores(cls, scores: Any) -> IhcSummary:
        s = np.asarray(scores, dtype=np.float64)
        ok = np.isfinite(s)
        n = np.bincount(s[ok].astype(np.int64), minlength=4)
        return cls(int(n[0]), int(n[1]), int(n[2]), int(n[3]), unscored=int((~ok).sum()))

    @property
    def scored(self) -> int:
        return self.negative + self.one_plus + self.two_plus + self.three_plus

    @property
    def positive(self) -> int:
        return self.one_plus + self.two_plus + self.three_plus

    @property
    def positive_percent(self) -> float:
        """Positive nuclei as a percentage of scored nuclei (NaN when none was scored)."""
        return 100.0 * self.positive / self.scored if self.scored else math.nan

    @property
    def h_score(self) -> float:
        """1·%1+ + 2·%2+ + 3·%3+ (0–300; NaN when none was scored)."""
        if not self.scored:
            return math.nan
        return 100.0 * (self.one_plus + 2 * self.two_plus + 3 * self.three_plus) / self.scored

    def as_dict(self) -> dict[str, float | int | None]:
        """QuPath's annotation measurement names (NaN as ``None``: JSON has no NaN)."""
        def finite(x: float) -> float | None:
            return round(x, 4) if math.isfinite(x) else None

        return {
            "Num Detections": self.scored, "Num Negative": self.negative, "Num 1+": self.one_plus,
            "Num 2+": self.two_plus, "Num 3+": self.three_plus, "Num Positive": self.positive,
            "Positive %": finite(self.positive_percent), "H-score": finite(self.h_score),
            **({"Num unscored": self.unscored} if self.unscored else {}),
        }

    def line(self) -> str:
        """One line for a summary: ``31/237 positive (13.1 %), H-score 20.3 (Negative 206, 1+ 20, …)``."""
        pct = f"{self.positive_percent:.1f} %" if self.scored else "no nucleus scored"
        h = f", H-score {self.h_score:.1f}" if self.scored else ""
        return (f"{self.positive}/{self.scored} positive ({pct}){h} "
                f"(Negative {self.negative}, 1+ {self.one_plus}, 2+ {self.two_plus}, 3+ {self.three_plus})")


def summarize(nuclei: Nuclei, options: IhcOptions | None = None, where: Any = None) -> IhcSummary:
    """The summary of ``nuclei`` (those picked by the mask or indices ``where``, e.g. one region).

    ``options`` defaults to the container's own (``nuclei.ihc``), else QuPath's thresholds. A
    container without the measurement (an H&E run) gives every nucleus as unscored.
    """
    options = options or nuclei.ihc or IhcOptions()
    values = nuclei.measurements().get(options.measurement)
    if values is None:
        values = np.full(len(nuclei), np.nan)
    scores = options.score(values)
    if where is not None:
        scores = scores[np.asarray(where)]
    return IhcSummary.of_scores(scores)


def summarize_groups(nuclei: Nuclei, groups: Sequence[int] | np.ndarray, options: IhcOptions | None = None) -> Mapping[int, IhcSummary]:
    """One summary per group label (``groups`` has one int per nucleus, e.g. its region)."""
    g = np.asarray(groups)
    if g.shape != (len(nuclei),):
        raise ValueError(f"groups has shape {g.shape}; expected ({len(nuclei)},)")
    return {int(k): summarize(nuclei, options, g == k) for k in np.unique(g)}


# ---- network input --------------------------------------------------------------------------

#: haematoxylin-like input: gain on haematoxylin OD above a background level, DAB's gain, and a cap.
_H_GAIN, _H_BACKGROUND, _DAB_GAIN, _OD_CAP = 3.5, 0.05, 1.0, 1.2  # chosen for model v3 (docs/MEASUREMENTS.md)
_H_VECTOR = np.asarray(rgb_from_hed[0], dtype=np.float32)  # scikit-image's haematoxylin colour (OD per channel)


def haematoxylin_like(rgb: np.ndarray) -> np.ndarray:
    """IHC RGB (uint8 …×3) → float32 [0, 1] image of haematoxylin only, dark where either stain is.

    The haematoxylin of the counterstain is amplified above its background and DAB counts as
    haematoxylin, so pale blue and brown nuclei both look like the H&E nuclei the model learnt.
    Fixed gains, no per-tile normalisation: a tile without nuclei is not stretched into noise.
    """
    od = stain_od(np.asarray(rgb), "ihc_dab")
    h = _H_GAIN * np.maximum(od[..., 0] - _H_BACKGROUND, 0.0) + _DAB_GAIN * np.maximum(od[..., 1], 0.0)
    np.minimum(h, _OD_CAP, out=h)
    return haematoxylin_image(h)


def haematoxylin_image(h_od: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density (…) → float32 RGB (…×3) in [0, 1] of that stain alone.

    The one rendering of the network's haematoxylin-only input: IHC tiles at inference and the
    haematoxylin-only augmentation of H&E training tiles both go through it, so the model is trained
    on the colour it is shown.
    """
    return np.power(np.float32(10.0), -np.asarray(h_od, dtype=np.float32)[..., None] * _H_VECTOR).astype(np.float32)
