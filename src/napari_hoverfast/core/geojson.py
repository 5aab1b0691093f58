"""Nuclei as QuPath GeoJSON: stream detections to disk, read QuPath/HoverFast/GeoJSON files back.

The public face of the GeoJSON modules; import from here. Written files follow what QuPath >= 0.4
writes and imports (``/work/shared/reference/QUPATH_GEOJSON.md``):

* a ``FeatureCollection`` of ``{"type": "Feature", "id": <UUID4>, "geometry": Polygon,
  "properties": {"objectType": "detection", "classification": {"name", "color": [r, g, b]},
  "measurements": {name: number}}}``; each feature may carry its own classification (IHC classes);
* coordinates are level-0 pixels (x right, y down, origin top-left), rounded to 2 decimals like
  QuPath itself. Every written polygon is valid *after* that rounding, because QuPath >= 0.6 aborts the
  whole import on one invalid polygon ("Reduction failed, possible invalid input");
* exterior rings have a positive shoelace area, i.e. counter-clockwise in a y-up frame as RFC 7946 asks
  (they look clockwise on screen, where y points down); holes the other way. QuPath ignores orientation;
* measurements are finite numbers only (a non-finite value is left out: bare ``NaN`` is not JSON, and
  QuPath 0.4 cannot read the string form);
* ``.geojson`` / ``.json`` as UTF-8 text, ``.geojson.gz`` / ``.json.gz`` as a gzip stream.

Writing is streamed (memory does not grow with the nucleus count) and atomic (a temporary file in
the target folder, ``os.replace`` at the end): a failed or interrupted write leaves neither a partial
file nor the temporary one. Reading is vectorised for ordinary files and careful for the rest: any
malformed or hostile file ends in a :class:`GeoJSONError` naming the feature and the problem.

:class:`GeoJSONError` subclasses :class:`OSError`: everything here is "this file could not be written or
read", so one ``except OSError`` around file handling also covers a malformed file. Errors in the caller's
own inputs (a non-polygon, a non-numeric measurement, an iterable that raises) propagate unchanged after
the temporary file is removed.

Modules: :mod:`.geojson_types` (the error, :class:`GeoObject`, constants), :mod:`.geojson_write`
(chunks of features through orjson), :mod:`.geojson_geometry` (rounding, repair, orientation),
:mod:`.geojson_read` (decoding, large files a slice at a time), :mod:`.geojson_vector` (vectorised
reading of ordinary features), :mod:`.geojson_parse` (careful per-feature reading, exact errors),
:mod:`.geojson_file` (atomic files, a writer thread, bounded gzip).
"""

from __future__ import annotations

from .geojson_file import GZIP_LEVEL, MAX_DECOMPRESSED
from .geojson_file import atomic_text_file as _atomic_text_file
from .geojson_read import read_geojson
from .geojson_types import DEFAULT_COLOR, SUFFIXES, WRITABLE_TYPES, GeoJSONError, GeoObject
from .geojson_write import Classification, write_detections

__all__ = [
    "DEFAULT_COLOR",
    "GZIP_LEVEL",
    "MAX_DECOMPRESSED",
    "SUFFIXES",
    "WRITABLE_TYPES",
    "Classification",
    "GeoJSONError",
    "GeoObject",
    "_atomic_text_file",
    "read_geojson",
    "write_detections",
]
