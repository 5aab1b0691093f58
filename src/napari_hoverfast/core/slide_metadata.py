"""Pixel sizes and objective power from a file's metadata, trusted only when plausible for a microscope.

A pixel size is never guessed: a value outside what a scan can have (an image editor's 72 dpi
default is 353 µm/px) is logged and ignored, and the caller reports that the file records none.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

log = logging.getLogger(__name__)

#: Pixel sizes (µm) a microscope scan can have; resolution tags outside this range are a DPI default
#: written by an image editor (72 dpi is 353 µm/px), not a measurement, and are ignored.
PLAUSIBLE_MPP = (0.01, 50.0)


def plausible_mpp(value: Any, source: str, name: str) -> float | None:
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(mpp) or mpp <= 0:
        return None
    lo, hi = PLAUSIBLE_MPP
    if not lo <= mpp <= hi:
        log.info("%s: ignoring %s of %.4g µm/px (not a microscope pixel size)", name, source, mpp)
        return None
    return mpp


def ome_pixel_size(xml: str) -> tuple[float | None, float | None]:
    """``PhysicalSizeX`` in µm and the objective's nominal magnification from OME-XML."""
    to_um = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "nm": 1e-3, "Å": 1e-4}
    try:
        root = ElementTree.fromstring(xml)  # noqa: S314 - metadata of a local file
    except ElementTree.ParseError:
        return None, None
    mpp = magnification = None
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "Pixels" and mpp is None and "PhysicalSizeX" in element.attrib:
            unit = element.attrib.get("PhysicalSizeXUnit", "µm")
            if unit in to_um:
                mpp = float(element.attrib["PhysicalSizeX"]) * to_um[unit]
        elif tag == "Objective" and magnification is None:
            value = element.attrib.get("NominalMagnification")
            magnification = float(value) if value else None
    return mpp, magnification


def plausible_objective(value: Any) -> float | None:
    try:
        power = float(value)
    except (TypeError, ValueError):
        return None
    return power if math.isfinite(power) and 0 < power <= 200 else None



def tiff_tags_mpp(path: Path) -> float | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            tags = tf.pages.first.tags
            unit = tags["ResolutionUnit"].value
            xres = tags["XResolution"].value
    except Exception:
        return None
    scale = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}.get(int(unit))
    if scale is None or not xres[0]:
        return None
    return plausible_mpp(scale * xres[1] / xres[0], "the TIFF resolution", path.name)
