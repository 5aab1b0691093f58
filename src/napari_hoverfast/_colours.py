"""How nuclei are coloured: one colour, or a measurement on a colour map that reads on H&E.

Outlines lie over haematoxylin (dark blue-purple) and eosin (pink). A colour map with a near-black
end (turbo's, viridis') vanishes on the nuclei it should outline, so the map here is the bright
middle of turbo: blue, cyan, green, yellow, orange, every step at least half as light as white.
Any numeric measurement of :meth:`~napari_hoverfast.core.nuclei.Nuclei.measurements` can colour
the nuclei: the choices are made from the columns, not from a list of names. IHC results can also be
coloured by class (:data:`IHC_CLASS`), in QuPath's own class colours (``core/ihc.py``), so the
canvas reads like QuPath's. No Qt here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from napari.utils.colormaps import Colormap, ensure_colormap

from .core.ihc import CLASSES, COLORS, SCORE
from .core.nuclei import AREA_PX, AREA_UM2, CENTROID_X, CENTROID_Y, PERIMETER_UM, PROBABILITY, TILE

#: "Colour by" choice for one colour.
NO_COLOR = "(single colour)"
#: "Colour by" choice for the IHC class (Negative, 1+, 2+, 3+), offered where the results have an IHC score.
IHC_CLASS = "IHC class"
#: Nuclei without a class (drawn by hand, no DAB OD mean): light grey, as QuPath draws unclassified objects.
UNCLASSIFIED = (0.8, 0.8, 0.8, 1.0)
#: The single colours offered (RGBA); the first is the default. All light: they read on H&E.
SINGLE_COLOURS: dict[str, tuple[float, float, float, float]] = {
    "yellow": (1.0, 0.85, 0.0, 1.0),
    "cyan": (0.0, 0.9, 1.0, 1.0),
    "lime": (0.45, 1.0, 0.2, 1.0),
    "white": (1.0, 1.0, 1.0, 1.0),
    "magenta": (1.0, 0.25, 0.9, 1.0),
}
PLAIN_EDGE = SINGLE_COLOURS["yellow"]
#: Columns that say where or which, not what a nucleus is like: not offered for colouring.
_NOT_COLOURS = {CENTROID_X, CENTROID_Y, TILE}
#: Colour scales before the data set their own: (low, high) per measurement.
_DEFAULT_LIMITS = {AREA_UM2: (10.0, 80.0), PERIMETER_UM: (10.0, 40.0), PROBABILITY: (0.5, 1.0)}
#: The part of turbo used (its ends are near-black).
_TURBO_RANGE = (0.2, 0.78)


def colour_map() -> Colormap:
    """The measurement colour map: turbo's bright middle (see the module's docstring)."""
    turbo = ensure_colormap("turbo")
    colors = np.asarray(turbo.map(np.linspace(*_TURBO_RANGE, 64)), dtype=np.float32)
    colors[:, 3] = 1.0
    return Colormap(colors=colors, name="hoverfast bright turbo", interpolation="linear")


def ramp(n: int = 256) -> np.ndarray:
    """``n`` RGBA colours from the low end of the scale to the high end (legend, overview)."""
    return np.asarray(colour_map().map(np.linspace(0.0, 1.0, n)), dtype=np.float32)


def colour_choices(measurements: Mapping[str, np.ndarray]) -> list[str]:
    """What "Colour by" offers: one colour, then every numeric measurement column (in their order)."""
    names = [
        name for name, values in measurements.items()
        if name not in _NOT_COLOURS and np.issubdtype(np.asarray(values).dtype, np.number)
    ]
    if SCORE in names:  # IHC results: their class as well, categorical (beside the numeric score)
        names.insert(names.index(SCORE), IHC_CLASS)
    return [NO_COLOR, *names]


def class_palette() -> np.ndarray:
    """(5, 4) RGBA: QuPath's colours of Negative, 1+, 2+, 3+, then the unclassified grey."""
    rgb = np.asarray([COLORS[name] for name in CLASSES], dtype=np.float32) / 255.0
    return np.vstack([np.c_[rgb, np.ones(len(rgb), np.float32)], np.asarray([UNCLASSIFIED], np.float32)])


def class_index(classes: np.ndarray) -> np.ndarray:
    """Row of each nucleus's class in :func:`class_palette` (the last for None or a class not IHC's)."""
    lookup = {name: i for i, name in enumerate(CLASSES)}
    return np.fromiter((lookup.get(c, len(CLASSES)) for c in classes), dtype=np.int64, count=len(classes))


def class_legend(feature: str, classes: np.ndarray) -> Legend:
    """The swatches of the IHC classes (and of the unclassified, when there are any)."""
    names = (*CLASSES, "Unclassified") if any(c is None for c in classes) else CLASSES
    return Legend(feature, 0.0, 0.0, class_palette()[:len(names)], classes=names)


def class_colours(classes: np.ndarray) -> np.ndarray:
    """RGBA of each nucleus's IHC class in QuPath's colours (unclassified: light grey)."""
    return class_palette()[class_index(classes)]


def default_limits(feature: str, mpp: float | None) -> tuple[float, float]:
    """A scale for ``feature`` before there are data to set one."""
    if feature in _DEFAULT_LIMITS:
        return _DEFAULT_LIMITS[feature]
    if feature == AREA_PX:
        lo, hi = _DEFAULT_LIMITS[AREA_UM2]
        px = (mpp or 0.25) ** 2
        return lo / px, hi / px
    return 0.0, 1.0


def data_limits(values: np.ndarray) -> tuple[float, float] | None:
    """The 2nd and 98th percentiles of the finite values (a few outliers do not flatten the scale)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return None
    lo, hi = float(np.percentile(finite, 2)), float(np.percentile(finite, 98))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def unit_scale(values: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """``values`` mapped to 0..1 between ``limits``, clipped; NaN counts as the low end."""
    lo, hi = limits
    scaled = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo if hi > lo else 1.0)
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 1.0)


def colormap(values: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """RGBA colours of ``values`` on the colour map between ``limits`` (NaN: the low end)."""
    colors = np.asarray(colour_map().map(unit_scale(values, limits)), dtype=np.float32)
    colors[:, 3] = 1.0
    return colors


@dataclass(frozen=True)
class Legend:
    """What the widget's legend shows: the measurement, its scale and the colours (or the one colour)."""

    feature: str
    low: float
    high: float
    colours: np.ndarray  # (n, 4) RGBA from low to high; one row for a single colour; one per class
    classes: tuple[str, ...] = ()  # categorical: the class of each colour (no scale)

    @property
    def single(self) -> bool:
        return len(self.colours) == 1 and not self.classes

    @property
    def text(self) -> str:
        if self.classes:
            return "  ".join(f"{_swatch(c)} {name}" for name, c in zip(self.classes, self.colours, strict=True))
        if self.single:
            return "One colour for every nucleus"
        return f"{_number(self.low)} – {_number(self.high)}  ({self.feature})"


def _number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def hex_colour(rgba: np.ndarray) -> str:
    """``#rrggbb`` of an RGBA colour in 0..1."""
    r, g, b = (int(round(float(v) * 255)) for v in np.clip(np.asarray(rgba, dtype=np.float64)[:3], 0.0, 1.0))
    return f"#{r:02x}{g:02x}{b:02x}"


def _swatch(rgba: np.ndarray) -> str:
    """A square of the colour in rich text (Qt labels render it)."""
    return f'<span style="color:{hex_colour(rgba)}">&#9632;</span>'
