"""What the status line says about a run: tiles, nuclei this run and per region, the layer's total, time.

Counts are of what the layer holds: nuclei this run added (not those an earlier run already found),
per region when the run had several, and the layer's total. No Qt here.
"""

from __future__ import annotations

from ._session import Run
from .core.pipeline import Progress


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else (many or one + 's')}"


def progress_text(run: Run, progress: Progress) -> str:
    eta = progress.eta
    left = "" if eta is None else f" · {duration(eta)} left"
    found = run.added + run.pending_count
    verb = "re-thresholded" if run.retune else "found"
    return f"{progress.tiles_done}/{progress.tiles_total} tiles · {found:,} nuclei {verb}{left}"


def per_region_text(run: Run) -> str:
    regions = sorted(run.per_region)
    if len(regions) < 2:
        return ""
    return " (" + ", ".join(f"region {r + 1}: {run.per_region[r]:,}" for r in regions) + ")"


def ended_text(run: Run, layer_total: int) -> str:
    """The status once a run ended: done, cancelled or failed, with its counts and the layer's."""
    tiles_total = sum(len(r.tiles) for r in run.results)
    tiles_done = sum(len(r.tiles_done) for r in run.results)
    seconds = sum(r.seconds for r in run.results)
    total = f"the layer holds {layer_total:,}"
    if run.error or any(r.error for r in run.results):
        error = run.error or next(r.error for r in run.results if r.error)
        return f"Run stopped: {error}. The {plural(run.added, 'nucleus', 'nuclei')} found so far are kept; {total}."
    if run.cancelled:
        return (f"Cancelled: {tiles_done}/{plural(tiles_total, 'tile')}, {plural(run.added, 'nucleus', 'nuclei')} kept; {total}. "
                "Run continues from here.")
    if run.retune:
        skipped = tiles_total - tiles_done
        extra = f"; {plural(skipped, 'tile')} not in the cache skipped" if skipped else ""
        return (f"Re-thresholded from the cache: {plural(tiles_done, 'tile')}, {plural(run.added, 'nucleus', 'nuclei')} "
                f"in {duration(seconds)}{extra}; {total}")
    cached = f", {run.tiles_cached} from the cache" if run.tiles_cached else ""
    known = f"; {run.duplicates:,} already in the layer" if run.duplicates else ""
    return (f"Done: {plural(tiles_total, 'tile')}{cached}, {plural(run.added, 'new nucleus', 'new nuclei')}{per_region_text(run)}"
            f"{known} in {duration(seconds)}; {total}")
