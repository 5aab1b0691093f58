"""Read QuPath/GeoJSON files fast, and every malformed one to a precise :class:`GeoJSONError`.

A million nuclei used to take ~36 s (``json`` plus one shapely polygon per feature, with the
garbage collector re-scanning the growing object graph again and again). Now, with the collector
paused, orjson parses the file and :mod:`.geojson_vector` turns the features into objects with
vectorised numpy/shapely code, sending anything unusual to the careful reader (:mod:`.geojson_parse`).

A large file in the compact layout our writer (and any minified export) uses is parsed a slice of
whole features at a time: the parsed tree of one slice is freed before the next is parsed, so the
memory for it stays bounded (a million nuclei hold ~5 GB of Python lists and floats at once
otherwise) and is reused rather than freshly mapped. The slices are cut before a
``{"type":"Feature"`` that follows a comma; a cut inside a feature (a nested child Feature) leaves a
slice with unbalanced brackets, which no JSON parser accepts, and the whole file is then parsed in
one piece. Files orjson refuses (QuPath 0.4 writes bare ``NaN``; integers beyond 64 bits) are
parsed again with the standard library, which also gives the line and column of real syntax errors.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import orjson

from . import geojson_parse as parse
from .geojson_coords import split_coordinates
from .geojson_file import read_capped
from .geojson_parallel import Packing, SliceParser, read_in_workers
from .geojson_parse import FeatureProblem
from .geojson_types import GeoColumns, GeoJSONError, GeoObject, gc_paused, show
from .geojson_vector import objects_of, placed_columns

T = TypeVar("T")
#: What a piece of a file reads to: columns (the fast path) or objects (the ordinary one).
Part = GeoColumns | list[GeoObject]

log = logging.getLogger("napari_hoverfast.core.geojson")

_BOM = b"\xef\xbb\xbf"
_HEADER = b'{"type":"FeatureCollection","features":['
_FEATURE = b'{"type":"Feature"'
_WHITESPACE = b" \t\r\n"
#: Bytes of features parsed together in a compact file. Small slices let the memory of one slice's
#: parse be reused by the next instead of being freshly mapped (a page fault costs ~5 µs on this
#: machine); 2, 8 and 32 MiB took about the same time on 200k nuclei, 8 MiB was the fastest of three.
PARSE_CHUNK = 8 << 20


def _decode(path: Path, raw: bytes | bytearray) -> Any:
    view = memoryview(raw)
    if raw[:3] == _BOM:
        view = view[3:]
    try:
        return orjson.loads(view)
    except orjson.JSONDecodeError as exc:
        if "depth" in exc.msg or "recursion" in exc.msg:  # no parser can read it: say where, now
            raise GeoJSONError(
                f"cannot read {path}: JSON nested too deeply (more than 1024 levels) at line {exc.lineno} "
                f"column {exc.colno}"
            ) from None
    # the standard library: bare NaN/Infinity (QuPath 0.4), huge integers, and precise messages
    try:
        text = bytes(view).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GeoJSONError(f"cannot read {path}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise GeoJSONError(f"cannot read {path}: the file is empty; expected GeoJSON")
    try:
        return json.loads(text, parse_int=parse.parse_int)
    except json.JSONDecodeError as exc:
        raise GeoJSONError(f"cannot read {path}: not JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise GeoJSONError(f"cannot read {path}: JSON nested too deeply (more than ~1000 levels)") from None
    except ValueError as exc:
        raise GeoJSONError(f"cannot read {path}: not JSON: {show(str(exc))}") from None


def _features(data: Any) -> list[Any]:
    """The list of features of a FeatureCollection, a bare list, a single Feature or a bare geometry."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise FeatureProblem(f"top level is a JSON {type(data).__name__}; expected a FeatureCollection, a Feature or a list of Features")
    kind = data.get("type")
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise FeatureProblem("FeatureCollection has no 'features' list")
        return features
    if kind == "Feature":
        return [data]
    if kind in ("Polygon", "MultiPolygon"):  # QuPath imports a bare geometry as one annotation
        return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise FeatureProblem(f"top-level type is {show(kind)}; expected FeatureCollection, Feature or a list of Features")


def slice_bounds(data: bytes | bytearray, size: int) -> list[tuple[int, int]] | None:
    """(start, stop) of runs of whole features of a compact FeatureCollection, about ``size`` bytes
    each (:func:`slice_text` makes each the text of a JSON array), or ``None`` when the file is not
    in that layout (then it is parsed whole)."""
    view = memoryview(data)
    start = 3 if data[:3] == _BOM else 0
    first = data.find(_FEATURE, start, start + 4096)
    if first < 0:
        return None
    end = len(data)
    while end > first and data[end - 1] in _WHITESPACE:
        end -= 1
    if first < 0 or bytes(view[start:first]).strip() != _HEADER or bytes(view[end - 2 : end]) != b"]}":
        return None
    close = end - 2

    def cut_after(position: int) -> tuple[int, int]:
        """(end of this slice, start of the next) at the first Feature after ``position`` that follows
        a comma; (close, close) when there is none."""
        while (found := data.find(_FEATURE, position, close)) >= 0:
            comma = found - 1
            while comma > position and data[comma] in _WHITESPACE:
                comma -= 1
            if data[comma] == ord(","):
                return comma, found
            position = found + 1
        return close, close

    bounds = []
    begin = first
    while begin < close:
        stop, following = cut_after(begin + size)
        while stop > begin and data[stop - 1] in _WHITESPACE:
            stop -= 1
        bounds.append((begin, stop))
        begin = following
    return bounds


def slice_text(data: bytes | bytearray | memoryview, bounds: tuple[int, int]) -> bytes:
    """The features between ``bounds`` as the text of a JSON array."""
    return b"".join((b"[", memoryview(data)[bounds[0] : bounds[1]], b"]"))


def _fast(text: bytes | bytearray | memoryview) -> GeoColumns | None:
    """The features of ``text`` (a JSON document) through :mod:`.geojson_coords`, or ``None`` where
    anything is out of the ordinary (the caller then parses ``text`` itself)."""
    cut = split_coordinates(bytes(text) if not isinstance(text, bytes) else text)
    if cut is None:
        return None
    skeleton, arrays = cut
    try:
        data = orjson.loads(skeleton)
        del skeleton
        return placed_columns(_features(data), arrays)
    except (orjson.JSONDecodeError, FeatureProblem):
        return None


def read_slice_in_worker(path: str, start: int, stop: int, stamp: tuple[int, int],
                         pack: Callable[[GeoColumns], Any]) -> tuple[int, Any] | None:
    """In a worker process: (feature count, ``pack`` of the columns) of the file's bytes ``start ..
    stop``, or ``None`` when the fast path cannot read them or the file changed since the parent read it."""
    with gc_paused(), open(path, "rb") as file:
        if (os.fstat(file.fileno()).st_size, os.fstat(file.fileno()).st_mtime_ns) != tuple(stamp):
            return None
        file.seek(start)
        fast = _fast(slice_text(file.read(stop - start), (0, stop - start)))
        return None if fast is None else (len(fast), pack(fast))


#: how :mod:`.geojson_parallel` parses this reader's slices (module-level functions: a worker unpickles ``in_worker`` by name)
_SLICE_PARSER = SliceParser(read_slice_in_worker, _fast, slice_text)


def _read_sliced(path: Path, data: bytes | bytearray, bounds: list[tuple[int, int]], skipped: list[str],
                 convert: Callable[[Part], T], done: dict[int, tuple[int, T]]) -> list[T] | None:
    """The converted parts of the file, a slice at a time; ``None`` if a slice is not JSON (parse it
    whole). ``done`` holds (feature count, part) of slices already read (by worker processes)."""
    parts: list[T] = []
    offset = 0
    for number, where in enumerate(bounds):
        if number in done:
            count, part = done.pop(number)
            parts.append(part)
            offset += count
            continue
        text = slice_text(data, where)
        fast = _fast(text)
        if fast is not None:
            parts.append(convert(fast))
            offset += len(fast)
            continue
        try:
            features = orjson.loads(text)
        except orjson.JSONDecodeError:
            try:  # bare NaN (QuPath 0.4) or huge integers in this slice
                features = json.loads(text.decode("utf-8"), parse_int=parse.parse_int)
            except (ValueError, RecursionError):
                return None
        parts.append(convert(objects_of(features, path, offset, skipped)))
        offset += len(features)
        del features  # before the next slice is parsed: the memory is reused
    return parts


def read_parts(path: str | PathLike[str], convert: Callable[[Part], T], *,
               max_decompressed: int | None = None, packing: Packing[T] | None = None) -> list[T]:
    """:func:`read_geojson`, handing each piece of the file (columns or objects, in file order) to
    ``convert`` as soon as it is read, so that a caller that keeps something smaller (the columns
    of :class:`~.nuclei.Nuclei`) never holds all the objects at once. With ``packing``, a large
    plain file's slices are also read by worker processes (:mod:`.geojson_parallel`)."""
    path = Path(path)
    skipped: list[str] = []
    with gc_paused():
        try:
            raw = read_capped(path, max_decompressed)
            bounds = slice_bounds(raw, PARSE_CHUNK)
            parts = None
            if bounds is not None:
                done = read_in_workers(path, raw, bounds, _SLICE_PARSER, packing, convert) \
                    if packing is not None else {}
                parts = _read_sliced(path, raw, bounds, skipped, convert, done)
            if parts is None:
                skipped.clear()
                fast = _fast(raw[3:] if raw[:3] == _BOM else raw)
                if fast is not None:
                    parts = [convert(fast)]
                else:
                    data = _decode(path, raw)
                    try:
                        features = _features(data)
                    except FeatureProblem as exc:
                        raise GeoJSONError(f"cannot read {path}: {exc}") from None
                    parts = [convert(objects_of(features, path, 0, skipped))]
                    # free the parsed tree before the collector runs again, or its first run walks all of it
                    del data, features
        except MemoryError:
            raise GeoJSONError(f"cannot read {path}: not enough memory to hold its objects") from None
        except RecursionError:  # pragma: no cover - every known path is bounded; a last guard
            raise GeoJSONError(f"cannot read {path}: its JSON is nested too deeply") from None
    if skipped:
        kinds = ", ".join(sorted(set(skipped)))
        log.warning("%s: %d feature(s) without an area (%s) skipped", path, len(skipped), kinds)
    return parts


def _objects(part: Part) -> list[GeoObject]:
    return part.objects() if isinstance(part, GeoColumns) else part


def read_geojson(path: str | PathLike[str], *, max_decompressed: int | None = None) -> list[GeoObject]:
    """Read the polygon objects of a QuPath/GeoJSON file (plain or gzip, any name).

    Accepts a FeatureCollection, a bare list of Features (QuPath's default export), a single Feature or
    a bare Polygon/MultiPolygon; current and legacy (QuPath <= 0.3, HoverFast) keys; cells with their
    ``nucleusGeometry``. Only areas are kept: Point/LineString/GeometryCollection features are skipped
    with one logged warning. A gzip file may inflate to ``max_decompressed`` bytes (default: 200x its
    size, at least 256 MiB and at most 4 GiB; beyond, it is taken for a gzip bomb).

    Raises :class:`GeoJSONError` naming the file, the feature (index and id) where there is one, and
    the problem, for anything malformed or hostile: bad gzip, a gzip bomb, JSON nested too deeply,
    numbers too large, strings or booleans as coordinates, open rings, and so on.
    """
    with gc_paused():
        parts = read_parts(path, _objects, max_decompressed=max_decompressed)
        return parts[0] if len(parts) == 1 else [obj for part in parts for obj in part]
