"""Where the user looks, shared with a running job, so the tiles left are read nearest to it first.

A job's ``priority`` fixes the order at the start (the view centre when Run was pressed). A viewer
keeps moving while a large run goes on; a :class:`Focus` handed to the run lets the viewer say where
it looks now, and the reader re-sorts the tiles it has not read yet by their distance to that point
(level-0 pixels). Thread-safe: the viewer sets it from the main thread, the reader reads it from its
own. No napari here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

_Item = TypeVar("_Item")


class Focus:
    """A level-0 point (x, y) that may change while a run goes on; ``version`` counts the changes."""

    def __init__(self, point: tuple[float, float] | None = None) -> None:
        self._lock = threading.Lock()
        self._point = point
        self._version = 0 if point is None else 1

    def set(self, x: float, y: float) -> None:
        """The user now looks at level-0 point (x, y)."""
        with self._lock:
            self._point = (float(x), float(y))
            self._version += 1

    def get(self) -> tuple[tuple[float, float] | None, int]:
        """The point (``None`` before one is set) and the number of changes so far."""
        with self._lock:
            return self._point, self._version


def nearest_first(items: Sequence[_Item], point: tuple[float, float], centre: Callable[[_Item], tuple[float, float]]) -> list[_Item]:
    """``items`` sorted by the squared distance of ``centre(item)`` to ``point`` (stable for ties)."""
    px, py = point

    def distance(item: _Item) -> float:
        cx, cy = centre(item)
        return (cx - px) ** 2 + (cy - py) ** 2

    return sorted(items, key=distance)
