"""Each nucleus once across tile seams, none lost: the run's book of which tile holds which rows.

A nucleus belongs to the tile whose cell holds its centroid. Each tile normalises its own maps, so a
nucleus on a seam can come out shaped differently by the two tiles, with its centroid in the cell
of each one's neighbour: both would leave it out. So a tile also reports the nuclei whose centroid
lies just past its cell (``tiling.SEAM_BAND``, the "band"); those wait until every neighbour has
finished and are kept only where no neighbour's nucleus covers more than a fifth of them. A tile's
own nuclei are dropped only as a duplicate (IoU > 0.5) of one a finished neighbour holds
(``duplicates.py``). Waiting band nuclei are resolved in tile order, so a resumed run (cached tiles
first) keeps the same nuclei as a fresh one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .duplicates import duplicates_of, overlaps_any
from .nuclei import Nuclei
from .stages import TileNuclei

#: A band nucleus goes when a neighbour's nucleus covers more than this fraction of it.
BAND_OVERLAP = 0.2


class SeamBook:
    """Appends each finished tile's nuclei to ``nuclei`` without seam copies; yields what it added."""

    def __init__(self, nuclei: Nuclei, near: dict[int, list[int]]) -> None:
        self.nuclei = nuclei
        self.near = near
        self.rows: dict[int, list[tuple[int, int]]] = {}
        self.waiting: dict[int, TileNuclei] = {}

    def _held_by(self, tiles: Sequence[int]) -> np.ndarray:
        ranges = [r for t in tiles for r in self.rows.get(t, []) if r[1] > r[0]]
        if not ranges:
            return np.zeros(0, dtype=object)
        return np.concatenate([self.nuclei.polygons[a:b] for a, b in ranges])

    def _append(self, tile: int, found: TileNuclei) -> Nuclei:
        start = len(self.nuclei)
        batch = self.nuclei.append(found.polygons, found.probability, tile, measurements=found.measurements)
        self.rows.setdefault(tile, []).append((start, len(self.nuclei)))
        return batch

    def add(self, tile: int, found: TileNuclei, band: np.ndarray) -> Iterator[Nuclei]:
        """A finished tile: its own nuclei now, band nuclei once its neighbours are done."""
        own = found.select(~band) if band.any() else found
        if len(own):
            old = self._held_by(self.near[tile])
            if len(old):
                copy = duplicates_of(np.asarray(own.polygons, dtype=object), old)
                own = own.select(~copy) if copy.any() else own
        yield self._append(tile, own)
        if band.any():
            self.waiting[tile] = found.select(band)
        for other in sorted(self.waiting):
            if all(n in self.rows for n in self.near[other]):
                yield from self._resolve(other)

    def flush(self) -> Iterator[Nuclei]:
        """At the end of a run (complete or stopped): resolve what still waits, against what is there."""
        for tile in sorted(self.waiting):
            yield from self._resolve(tile)

    def _resolve(self, tile: int) -> Iterator[Nuclei]:
        rescue = self.waiting.pop(tile)
        old = self._held_by(self.near[tile])
        if len(old):
            covered = overlaps_any(np.asarray(rescue.polygons, dtype=object), old, BAND_OVERLAP)
            rescue = rescue.select(~covered) if covered.any() else rescue
        if len(rescue):
            yield self._append(tile, rescue)
