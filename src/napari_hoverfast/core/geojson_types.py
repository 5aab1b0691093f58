"""The shared vocabulary of the GeoJSON modules: the error type, the object read back, the constants.

Kept apart from the readers and the writer so that each of them (and :mod:`.nuclei`) can import it
without importing the others.
"""

from __future__ import annotations

import contextlib
import gc
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from shapely.geometry import MultiPolygon, Polygon

from .formats import GEOJSON_SUFFIXES

#: Default classification colour of written nuclei (QuPath draws detections in their class colour).
DEFAULT_COLOR: tuple[int, int, int] = (255, 0, 0)
#: File name endings QuPath imports objects from (it decides by name only).
SUFFIXES = GEOJSON_SUFFIXES
#: Object types :func:`write_detections` may write (cells need a nucleus geometry it does not have).
WRITABLE_TYPES = ("detection", "annotation")
#: QuPath writes 2 decimals and, from 0.6, snaps imports to a 0.01 px grid.
DECIMALS = 2


class GeoJSONError(OSError):
    """A GeoJSON file that cannot be written or read; the message names the file and the problem.

    An ``OSError`` so that one ``except OSError`` around file handling also covers a malformed file.
    """


@dataclass(frozen=True)
class GeoObject:
    """One object read from a GeoJSON file.

    ``geometry`` is in level-0 pixels as stored (validity is not enforced on reading: QuPath's own
    exports are valid, and a caller that needs validity can use ``shapely.make_valid``). For cells,
    ``geometry`` is the cell boundary and ``nucleus`` the nucleus (QuPath's ``nucleusGeometry``).
    ``color`` is the colour QuPath would draw the object in: its own ``color`` if set, else its
    classification's; ``classification_color`` is the classification's own colour (e.g. QuPath's
    colour of the "2+" class), ``None`` when the file gives none. Measurements are floats, keyed by
    their names exactly as in the file; non-finite values written as strings come back as NaN/inf.
    """

    geometry: Polygon | MultiPolygon
    object_type: str = "annotation"
    name: str | None = None
    classification: str | None = None
    color: tuple[int, int, int] | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    id: str | None = None
    nucleus: Polygon | MultiPolygon | None = None
    classification_color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class GeoColumns:
    """Objects read from a GeoJSON file as columns (one list entry per object, the fields of
    :class:`GeoObject`): what the fast reading path makes, so that :class:`~.nuclei.Nuclei` can be
    filled without a million :class:`GeoObject` in between."""

    geometry: list[Polygon | MultiPolygon]
    object_type: list[str]
    name: list[str | None]
    classification: list[str | None]
    color: list[tuple[int, int, int] | None]
    measurements: list[dict[str, float]]
    id: list[str | None]
    classification_color: list[tuple[int, int, int] | None]

    def __len__(self) -> int:
        return len(self.geometry)

    def objects(self) -> list[GeoObject]:
        """The same objects as :class:`GeoObject` (no nucleus geometries: cells take the other path)."""
        return list(map(GeoObject, self.geometry, self.object_type, self.name, self.classification, self.color,
                        self.measurements, self.id, [None] * len(self.geometry), self.classification_color))


_SHORT = reprlib.Repr()
_SHORT.maxlevel = 3
_SHORT.maxlist = _SHORT.maxdict = 4
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 40


def show(value: object) -> str:
    """A short ``repr`` for error messages: bounded in length and depth, so a hostile value (a string
    of megabytes, lists nested a thousand deep, an integer of thousands of digits) cannot turn the
    message itself into a MemoryError, RecursionError or ValueError."""
    try:
        return _SHORT.repr(value)
    except Exception:  # e.g. int.__repr__ beyond sys.get_int_max_str_digits()
        return f"<{type(value).__name__}>"


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of short-lived containers are made.

    Parsing or serialising a million features creates tens of millions of lists, dicts and floats;
    each automatic collection would walk all that are alive, again and again (read: 36 s → 5 s for
    orjson alone). GeoJSON data has no reference cycles, so reference counting frees it all anyway.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
