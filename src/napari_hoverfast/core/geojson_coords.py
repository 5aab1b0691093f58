"""Polygon coordinates straight from GeoJSON text to numpy, without a Python object per number.

Parsing a million nuclei with orjson makes ~45 million Python floats and ~25 million lists for the
coordinates alone, and turning them into arrays again costs more than the parse; on this machine
the page faults of that much fresh memory cost as much again. So the reader first cuts every
``"coordinates":[[[…]]]`` array out of the text (:func:`split_coordinates`), hands the rest (ids,
properties, measurements: the "skeleton") to orjson with a numbered placeholder where each array
stood, and reads all the arrays of the slice at once with numpy (:func:`parse_polygons`).

This is only an accelerator: it accepts nothing the JSON grammar refuses, checks the nesting, the
pairs and the rings, and answers ``None`` for anything else (whitespace inside an array, 3-D
positions, a MultiPolygon, a number JSON does not allow, an open ring, a non-finite value...), and
the reader then parses that text the ordinary way, which names the exact problem. A key that only
looks like ``"coordinates":`` inside a string cannot fool it: the cut-out text holds no quotes, so
string boundaries are the same in the skeleton, and a placeholder that does not end up as the
coordinates of a geometry makes the caller fall back as well.
"""

from __future__ import annotations

import array

import numpy as np
import orjson
import shapely

KEY = b'"coordinates":'
_ALLOWED = b"0123456789.-+eE,[]"
_NUMBER_CHARS = b"0123456789.-+eE"
_BLANK_BRACKETS = bytes.maketrans(b"[]", b"  ")
_GROUP = 4096  # polygons parsed together: small enough for the temporaries to be reused, not mapped afresh


def split_coordinates(text: bytes) -> tuple[bytes, list[memoryview]] | None:
    """(skeleton, arrays): ``text`` with the ``i``-th ``"coordinates":[[[…]]]`` array replaced by
    ``"coordinates":i``, and the cut-out arrays in order; ``None`` when there are none."""
    view, find = memoryview(text), text.find
    arrays: list[memoryview] = []
    skeleton: list[bytes | memoryview] = []
    position = 0
    while (key := find(KEY, position)) >= 0:
        begin = key + len(KEY)
        end = find(b"]]]", begin) + 3 if text.startswith(b"[[[", begin) else 2
        if end < 3:  # not a compact Polygon array here: leave it to orjson (and the fallback)
            skeleton.append(view[position:begin])
            position = begin
            continue
        skeleton.append(view[position:begin])
        skeleton.append(b"%d" % len(arrays))
        arrays.append(view[begin:end])
        position = end
    if not arrays:
        return None
    skeleton.append(view[position:])
    return b"".join(skeleton), arrays


def _nesting_ok(marks: bytes) -> bool:
    """``marks`` (the arrays without their numbers, positions as ``P``) is a comma-separated run of
    Polygons: ``[`` rings ``]``, each ring ``[`` positions ``]``, nothing empty, nothing deeper."""
    rings = marks.replace(b"P,", b"").replace(b"[P]", b"R")
    polygons = rings.replace(b"R,", b"").replace(b"[R]", b"Y")
    return polygons.replace(b"Y,", b"") == b"Y"


def _group(arrays: list[memoryview]) -> np.ndarray | None:
    text = b",".join(arrays)
    if text.translate(None, _ALLOWED):
        return None  # whitespace, a string, a literal, ...: the ordinary path reads it
    marks = text.translate(None, _NUMBER_CHARS).replace(b"[,]", b"P")  # a position of exactly 2 values
    if not _nesting_ok(marks):
        return None
    try:  # orjson checks every number against the JSON grammar (no "+1", "01", "1.", ".5", "--1")
        values = orjson.loads(b"[" + text.translate(_BLANK_BRACKETS) + b"]")
        xy = np.frombuffer(array.array("d", values), dtype=np.float64)
    except (orjson.JSONDecodeError, TypeError, OverflowError):
        return None
    del values
    m = np.frombuffer(marks, dtype=np.uint8)
    step = (m == ord("[")).astype(np.int8) - (m == ord("]")).astype(np.int8)
    opens = np.flatnonzero(step == 1)
    level = np.cumsum(step, dtype=np.int8)[opens]
    ring_at, polygon_at = opens[level == 2], opens[level == 1]
    positions = np.flatnonzero(m == ord("P"))
    if len(xy) != 2 * len(positions) or len(polygon_at) != len(arrays) or not np.isfinite(xy).all():
        return None
    xy = xy.reshape(-1, 2)
    ring_lens = np.bincount(np.searchsorted(ring_at, positions) - 1, minlength=len(ring_at))
    ring_counts = np.bincount(np.searchsorted(polygon_at, ring_at) - 1, minlength=len(polygon_at))
    starts = np.cumsum(ring_lens) - ring_lens
    if not (ring_lens >= 4).all() or not (xy[starts] == xy[starts + ring_lens - 1]).all():
        return None
    rings = shapely.linearrings(xy, indices=np.repeat(np.arange(len(ring_lens)), ring_lens))
    if (ring_counts == 1).all():
        return shapely.polygons(rings)  # type: ignore[no-any-return]
    return shapely.polygons(rings, indices=np.repeat(np.arange(len(ring_counts)), ring_counts))  # type: ignore[no-any-return]


def parse_polygons(arrays: list[memoryview]) -> np.ndarray | None:
    """One shapely Polygon per GeoJSON Polygon ``coordinates`` array (exterior first, then holes), or
    ``None`` when any array is not plain JSON numbers in closed rings of >= 4 finite [x, y] pairs."""
    out = []
    for start in range(0, len(arrays), _GROUP):
        built = _group(arrays[start : start + _GROUP])
        if built is None:
            return None
        out.append(built)
    return np.concatenate(out) if out else np.empty(0, dtype=object)
