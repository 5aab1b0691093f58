"""The widget's IHC scoring: thresholds that re-classify the nuclei shown at once, and QuPath's summary.

The class of a nucleus is a pure function of its "Nucleus: DAB OD mean" and the thresholds
(``core/ihc.py`` holds the rule), so a new threshold needs no network run: the displays' containers
get the new :class:`~napari_hoverfast.core.ihc.IhcOptions`, and their classes, "IHC score" feature,
colours, legend, clicked-nucleus line and export all follow from the container. The summary (counts
per class, % positive, H-score) is of the chosen image's nuclei, in total and per region of the
layer's runs; it follows every change of the container (a run's batches, a re-threshold, the user's
deletions and drawings). No Qt here beyond the form's magicgui controls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._colours import IHC_CLASS
from ._scope import UserError
from .core.ihc import SCORE, IhcOptions, IhcSummary, summarize, summarize_groups
from .core.nuclei import Nuclei
from .core.tiling import Box

if TYPE_CHECKING:
    from ._display import NucleiDisplay
    from ._widget import HoverFastWidget


def reclassify(display: NucleiDisplay, ihc: IhcOptions) -> bool:
    """New thresholds for an IHC display: classes, the "IHC score" feature and colours follow; True if changed."""
    if display.nuclei.ihc is None or display.nuclei.ihc == ihc:
        return False
    display.nuclei.ihc = ihc  # classes and scores are derived from the DAB OD mean whenever asked for
    features = display.layer.features
    if SCORE in features and len(display.shown) == len(features):
        with display.own_changes():
            features[SCORE] = display.nuclei.select(display.rows(display.shown)).measurements()[SCORE]
    if display.feature in (IHC_CLASS, SCORE):
        display.recolor()
    display.publish()  # the listeners (the summary) hear of it
    return True


def ihc_options(form: Any) -> IhcOptions:
    """The form's three thresholds as options; a UserError saying what to fix when they do not increase."""
    values = tuple(float(spin.value) for spin in form.ihc_thresholds)
    try:
        return IhcOptions(values)  # type: ignore[arg-type]
    except ValueError:
        shown = " / ".join(f"{v:g}" for v in values)
        raise UserError(f"IHC thresholds must increase, 1+ < 2+ < 3+ (now {shown}): raise 2+ or 3+, or lower 1+") from None


def run_regions(jobs: Sequence[Any]) -> list[Box]:
    """The regions of a layer's runs (its ``metadata["jobs"]``), in run order, each once."""
    boxes: list[Box] = []
    for job in jobs:
        for box in getattr(job, "regions", None) or ():
            if box not in boxes:
                boxes.append(box)
    return boxes


def region_of(nuclei: Nuclei, regions: Sequence[Box]) -> np.ndarray:
    """Per nucleus, the first region holding its centroid (−1: none, e.g. drawn outside every region)."""
    groups = np.full(len(nuclei), -1, dtype=np.int64)
    x, y = nuclei.centroid_x, nuclei.centroid_y
    for k in range(len(regions) - 1, -1, -1):  # backwards: the first region wins where regions overlap
        b = regions[k]
        groups[(x >= b.x) & (x < b.x + b.w) & (y >= b.y) & (y < b.y + b.h)] = k
    return groups


#: The summary table's columns: counts per class, then QuPath's two annotation measurements.
COLUMNS = ("Neg.", "1+", "2+", "3+", "Positive", "H-score")


def summary_rows(nuclei: Nuclei, regions: Sequence[Box] = ()) -> list[tuple[str, IhcSummary]]:
    """The summary's rows: the total, then each region when there are several, then those outside them."""
    rows = [("Total", summarize(nuclei))]
    if len(regions) > 1:
        by_region = dict(summarize_groups(nuclei, region_of(nuclei, regions)))
        rows += [(f"Region {k + 1}", by_region.get(k, IhcSummary(0, 0, 0, 0))) for k in range(len(regions))]
        if -1 in by_region and by_region[-1].scored:
            rows.append(("Outside", by_region[-1]))
    return rows


def cells(summary: IhcSummary) -> tuple[str, ...]:
    """One row's cells, as :data:`COLUMNS` orders them (a dash where no nucleus was scored)."""
    counts = (summary.negative, summary.one_plus, summary.two_plus, summary.three_plus)
    if not summary.scored:
        return (*(f"{c:,}" for c in counts), "–", "–")
    return (*(f"{c:,}" for c in counts), f"{summary.positive_percent:.1f} %", f"{summary.h_score:.1f}")


def summary_html(rows: Sequence[tuple[str, IhcSummary]]) -> str:
    """The rows as a small table (the dock is narrow: a line of text per region would wrap), and the unscored."""
    head = "".join(f"<td align='right' nowrap><b>{c}</b></td>" for c in COLUMNS)
    body = "".join(f"<tr><td nowrap>{label}</td>" + "".join(f"<td align='right' nowrap>{c}</td>" for c in cells(summary))
                   + "</tr>" for label, summary in rows)
    unscored = rows[0][1].unscored
    note = (f"<p>{unscored:,} without a DAB OD mean (drawn by hand, or read from a file): not scored</p>"
            if unscored else "")
    return f"<table cellspacing='0' cellpadding='3'><tr><td></td>{head}</tr>{body}</table>{note}"


class IhcPanel:
    """The IHC thresholds and summary of the dock widget."""

    def __init__(self, widget: HoverFastWidget) -> None:
        self.widget = widget
        for spin in widget.ihc_thresholds:
            spin.changed.connect(self.apply)
        widget.stain.changed.connect(lambda *_: self.update())
        widget.displays.listeners.append(self._on_change)
        self.update()

    def apply(self, *_: Any) -> bool:
        """The thresholds changed: every IHC display re-classifies (no network); False if they do not increase."""
        try:
            options = ihc_options(self.widget)
        except UserError as exc:
            self.widget.ihc_summary.value = f"Not applied: {exc}"
            return False
        for display in self.widget.displays:
            reclassify(display, options)
        self.update()
        return True

    def _on_change(self, display: NucleiDisplay) -> None:
        if display is self.widget.current_display(create=False):
            self.update(display)

    def update(self, display: NucleiDisplay | None = None) -> None:
        """Show the summary of the chosen image's nuclei (or why there is none)."""
        w = self.widget
        display = display or w.current_display(create=False)
        if display is None or not len(display.nuclei):
            w.ihc_summary.value = "Run to score nuclei: Negative, 1+, 2+ or 3+ by their DAB OD mean"
        elif display.nuclei.ihc is None:
            w.ihc_summary.value = "These nuclei were not segmented as IHC (Stain: IHC (DAB)): no positivity to show"
        else:
            rows = summary_rows(display.nuclei, run_regions(display.layer.metadata.get("jobs") or ()))
            w.ihc_summary.native.setHtml(summary_html(rows))
