"""Scoring an IHC run against nuclei marked by hand: recall per class and the positive/negative call.

A marked nucleus is found when one detected nucleus overlaps it with IoU > ``iou`` (``metrics.py``:
one-to-one above 0.5). For found nuclei the run's call (positive = 1+ or above) is compared with the
hand's. Hand-marked tiles rarely mark every nucleus, so detections that match no mark are not
counted as errors; the percentage of positive nuclei is reported both over all detections (what a
user sees) and over the matched ones. ``benchmarks/bench_ihc.py`` and ``tests/test_ihc.py`` use this.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .ihc import IhcOptions
from .metrics import match_instances, rasterize
from .nuclei import Nuclei


@dataclass(frozen=True)
class IhcCheck:
    """Counts of one or more tiles; the properties are the rates reported in ``docs/MEASUREMENTS.md``."""

    marked_positive: int
    marked_negative: int
    found_positive: int
    found_negative: int
    #: matched nuclei by (hand, run) call: positive-positive, positive-negative, negative-positive, negative-negative
    calls: tuple[int, int, int, int]
    detections: int
    detections_positive: int

    def __add__(self, other: IhcCheck) -> IhcCheck:
        return IhcCheck(
            self.marked_positive + other.marked_positive, self.marked_negative + other.marked_negative,
            self.found_positive + other.found_positive, self.found_negative + other.found_negative,
            tuple(a + b for a, b in zip(self.calls, other.calls, strict=True)),  # type: ignore[arg-type]
            self.detections + other.detections, self.detections_positive + other.detections_positive,
        )

    @property
    def recall_positive(self) -> float:
        return _ratio(self.found_positive, self.marked_positive)

    @property
    def recall_negative(self) -> float:
        return _ratio(self.found_negative, self.marked_negative)

    @property
    def recall(self) -> float:
        return _ratio(self.found_positive + self.found_negative, self.marked_positive + self.marked_negative)

    @property
    def agreement(self) -> float:
        """Share of matched nuclei whose positive/negative call is the hand's."""
        pp, pn, np_, nn = self.calls
        return _ratio(pp + nn, pp + pn + np_ + nn)

    @property
    def percent_positive_marked(self) -> float:
        return 100.0 * _ratio(self.marked_positive, self.marked_positive + self.marked_negative)

    @property
    def percent_positive_detected(self) -> float:
        return 100.0 * _ratio(self.detections_positive, self.detections)

    @property
    def percent_positive_matched(self) -> float:
        pp, pn, np_, nn = self.calls
        return 100.0 * _ratio(pp + np_, pp + pn + np_ + nn)


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def labels_of(nuclei: Nuclei, shape: tuple[int, int]) -> np.ndarray:
    """Label image (1-based row order) of the nuclei's polygons, by pixel centres."""
    out = np.zeros(shape, dtype=np.int32)
    for row, polygon in enumerate(nuclei.polygons, start=1):
        out[rasterize(polygon, shape)] = row
    return out


def check_against_marks(nuclei: Nuclei, marks: np.ndarray, positive: Mapping[int, bool], *,
                        options: IhcOptions | None = None, iou: float = 0.5) -> IhcCheck:
    """Score ``nuclei`` (level-0 px of the marked image) against ``marks`` (instance labels), whose
    ``positive[label]`` says whether the hand called each marked nucleus positive."""
    options = options or nuclei.ihc or IhcOptions()
    values = nuclei.measurements().get(options.measurement, np.full(len(nuclei), np.nan))
    called = options.score(values) >= 1  # NaN (unmeasured) is not positive
    matching = match_instances(np.asarray(marks), labels_of(nuclei, marks.shape), iou)
    hand = np.array([positive.get(int(t), False) for t in matching.true_ids], dtype=bool)
    run = called[matching.pred_ids - 1] if len(matching.pred_ids) else np.zeros(0, bool)
    n_pos = sum(1 for label in np.unique(marks) if label and positive.get(int(label), False))
    n_neg = sum(1 for label in np.unique(marks) if label and not positive.get(int(label), False))
    return IhcCheck(
        marked_positive=n_pos, marked_negative=n_neg,
        found_positive=int(hand.sum()), found_negative=int((~hand).sum()),
        calls=(int((hand & run).sum()), int((hand & ~run).sum()), int((~hand & run).sum()), int((~hand & ~run).sum())),
        detections=len(nuclei), detections_positive=int(called.sum()),
    )
