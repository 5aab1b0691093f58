"""The legend in the widget: the colour bar of the measurement the outlines are coloured by, and its range.

A QLabel shows a pixmap painted from the same colours the outlines get (``_colours.ramp``), so the
legend cannot disagree with the canvas; the text under it names the measurement, its low and high
ends (the 2nd and 98th percentiles of the data), or says one colour is used. A categorical legend
(the IHC class) has no bar: the text shows each class's swatch and name instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._colours import Legend

BAR_SIZE = (240, 14)  # px: wide enough to read a gradient, low enough not to crowd the form


def legend_pixels(legend: Legend, size: tuple[int, int] = BAR_SIZE) -> np.ndarray:
    """(h, w, 4) uint8 RGBA of the legend's bar: the colours from low (left) to high (right)."""
    w, h = size
    colours = np.asarray(legend.colours, dtype=np.float64)
    index = np.minimum((np.arange(w) * len(colours)) // w, len(colours) - 1)
    row = np.round(np.clip(colours[index], 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(row, (h, w, 4)))


def show_legend(bar: Any, text: Any, legend: Legend | None) -> None:
    """Paint ``legend`` into the magicgui Labels ``bar`` (its QLabel's pixmap) and ``text``; None hides both."""
    from qtpy.QtCore import Qt
    from qtpy.QtGui import QImage, QPixmap

    if legend is None:
        bar.visible = text.visible = False
        return
    text.native.setTextFormat(Qt.TextFormat.RichText if legend.classes else Qt.TextFormat.PlainText)
    text.value = legend.text
    text.visible = True
    if legend.classes:  # categories have no scale: swatches and names in the text, no bar
        bar.visible = False
        return
    pixels = legend_pixels(legend)
    h, w = pixels.shape[:2]
    image = QImage(pixels.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()  # copy: own the pixels
    bar.native.setPixmap(QPixmap.fromImage(image))
    bar.visible = True
