"""How nuclei are coloured: one colour, or a measurement on a colour map that reads on H&E.

Outlines lie over haematoxylin (dark blue-purple) and eosin (pink). A colour map with a near-black
end (turbo's, viridis') vanishes on the nuclei it should outline, so the map here is the bright
middle of turbo: blue, cyan, green, yellow, orange, every step at least half as light as white.
Any numeric measurement of :meth:`~napari_hoverfast.core.nuclei.Nuclei.measurements` can colour
the nuclei: the choices are made from the columns, not from a list of names. No Qt here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from napari.utils.colormaps import Colormap, ensure_colormap

from .core.nuclei import AREA_PX, AREA_UM2, CENTROID_X, CENTROID_Y, PERIMETER_UM, PROBABILITY, TILE

#: "Colour by" choice for one colour.
NO_COLOR = "(single colour)"
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
    return [NO_COLOR, *names]


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
    colours: np.ndarray  # (n, 4) RGBA from low to high; one row for a single colour

    @property
    def single(self) -> bool:
        return len(self.colours) == 1

    @property
    def text(self) -> str:
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
