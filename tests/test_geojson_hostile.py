"""Hostile GeoJSON: every case ends in a GeoJSONError naming the feature (where there is one), and the
napari reader declines the file (returns None) without raising.

Hostile means: JSON nested deeper than any parser allows or merely absurdly deep, a corrupt or
truncated gzip stream, a gzip bomb, integers of thousands of digits, and strings, booleans or nulls
where coordinates belong. None may surface as a RecursionError, MemoryError, ValueError or
OverflowError, and none may be read as a silently wrong geometry (numpy turns "4" and true into
numbers if asked to).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest

from napari_hoverfast._reader import get_geojson_reader, read_geojson_layers
from napari_hoverfast.core import geojson_file, geojson_read
from napari_hoverfast.core.geojson import GeoJSONError, read_geojson

SQUARE = "[[0,0],[4,0],[4,4],[0,4],[0,0]]"
PREFIX = b'{"type":"FeatureCollection","features":['


def feature(ring: str = SQUARE, props: str = '{"objectType":"detection"}', extra: str = "") -> str:
    return f'{{"type":"Feature"{extra},"geometry":{{"type":"Polygon","coordinates":[{ring}]}},"properties":{props}}}'


def collection(*features: str) -> str:
    return '{"type":"FeatureCollection","features":[' + ",".join(features) + "]}"


def ring_with(value: str) -> str:
    """The square with one coordinate replaced by ``value`` (JSON text)."""
    return f"[[0,0],[4,0],[{value},4],[0,4],[0,0]]"


def assert_reader_declines(path: Path) -> None:
    """napari's path: get_reader gives a function or None; the function returns None. Neither raises."""
    reader = get_geojson_reader(str(path))
    if reader is not None:
        assert reader(str(path)) is None
    assert read_geojson_layers(str(path)) is None


CASES = [
    # name, file text, expected message (regex)
    ("nested_beyond_parsers", collection(feature(), feature("[" * 100_000 + "]" * 100_000)),
     r"JSON nested too deeply \(more than 1024 levels\) at line 1 column \d+"),
    ("nested_in_coordinates", collection(feature(), feature("[" * 500 + "0" + "]" * 500)),
     r"feature 1: geometry ring 0 is not a list of \[x, y\] number pairs \(position 0 is \[\[\[\[\.\.\.\]\]\]\]\)"),
    ("nested_ring_list", collection(feature(), feature(), feature("[[[[[0,0]]]]]")),
     r"feature 2: geometry ring 0 is not a list of \[x, y\] number pairs"),
    ("nested_id", collection(feature(extra=',"id":' + "[" * 900 + "]" * 900)),
     r"feature 0: id \[\[\[\[\.\.\.\]\]\]\] is not a string"),
    ("nested_measurement", collection(feature(props='{"measurements":{"a":' + "[" * 900 + "]" * 900 + "}}")),
     r"feature 0: measurement 'a' is not a number: \[\[\[\[\.\.\.\]\]\]\]"),
    ("nested_classification", collection(feature(props='{"classification":{"name":' + "[" * 900 + "]" * 900 + "}}")),
     r"feature 0: classification name \[\[\[\[\.\.\.\]\]\]\] is not a string"),
    ("integer_5000_digits", collection(feature(), feature(ring_with("9" * 5000))),
     r"feature 1: geometry ring 0 is not a list of \[x, y\] number pairs "
     r"\(position 2 holds an integer of 5000 digits, too large for a coordinate\)"),
    ("integer_400_digits", collection(feature(), feature(ring_with("9" * 400))),
     r"feature 1: geometry ring 0 has a coordinate too large for a floating-point number"),
    ("negative_integer_5000_digits", collection(feature(ring_with("-" + "9" * 5000))),
     r"feature 0: geometry ring 0 is not a list .*integer of 5001 digits"),
    ("float_overflow", collection(feature(ring_with("1e400"))), r"feature 0: geometry ring 0 has a non-finite coordinate"),
    ("measurement_5000_digits", collection(feature(props='{"measurements":{"Nucleus: Area µm^2":' + "9" * 5000 + "}}")),
     r"feature 0: measurement 'Nucleus: Area µm\^2' is not a number: <an integer of 5000 digits>"),
    ("measurement_400_digits", collection(feature(), feature(props='{"measurements":{"a":' + "9" * 400 + "}}")),
     r"feature 1: measurement 'a' is too large for a floating-point number"),
    ("id_5000_digits", collection(feature(extra=',"id":' + "9" * 5000)),
     r"feature 0: id <an integer of 5000 digits> is not a string"),
    ("string_coordinate", collection(feature(), feature(ring_with('"4"'))),
     r"feature 1: geometry ring 0 is not a list of \[x, y\] number pairs \(position 2 holds a string, not a number\)"),
    ("true_coordinate", collection(feature(), feature(), feature("[[0,0],[4,0],[4,true],[0,4],[0,0]]")),
     r"feature 2: geometry ring 0 is not a list of \[x, y\] number pairs \(position 2 holds a boolean, not a number\)"),
    ("false_coordinate", collection(feature(), feature("[[false,0],[4,0],[4,4],[0,4],[false,0]]")),
     r"feature 1: geometry ring 0 is not a list .*position 0 holds a boolean"),
    ("null_coordinate", collection(feature(ring_with("null"))), r"feature 0: geometry ring 0 is not a list .*holds a null"),
    ("string_position", collection(feature('["12","34","56","12"]')),
     r"feature 0: geometry ring 0 is not a list of \[x, y\] number pairs \(position 0 is '12'\)"),
    ("boolean_in_nucleus", collection(
        '{"type":"Feature","geometry":{"type":"Polygon","coordinates":[' + SQUARE + ']},'
        '"nucleusGeometry":{"type":"Polygon","coordinates":[[[1,1],[2,1],[2,true],[1,1]]]},"properties":{"objectType":"cell"}}'),
     r"feature 0: nucleusGeometry ring 0 is not a list .*holds a boolean"),
    ("huge_id_string", collection(feature(ring_with('"x"'), extra=',"id":"' + "a" * 100_000 + '"')),
     r"feature 0 \(id a{80}…\): geometry ring 0"),
]


@pytest.mark.parametrize(("name", "text", "message"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("sliced", [False, True], ids=["whole", "sliced"])
def test_hostile_json_is_a_clear_error_and_declined_by_the_reader(tmp_path, monkeypatch, name, text, message,
                                                                   compressed, sliced):
    if sliced:  # parse a few features at a time, as for a large file
        monkeypatch.setattr(geojson_read, "PARSE_CHUNK", 64)
    data = text.encode("utf-8")
    path = tmp_path / (f"{name}.geojson.gz" if compressed else f"{name}.geojson")
    path.write_bytes(gzip.compress(data) if compressed else data)
    with pytest.raises(GeoJSONError, match=message) as info:
        read_geojson(path)
    assert str(path) in str(info.value)
    assert len(str(info.value)) < 600  # a bounded message, whatever the file held
    assert_reader_declines(path)


def gzip_corruptions() -> list[tuple[str, bytes]]:
    good = gzip.compress(collection(feature(), feature()).encode())
    crc = bytearray(good)
    crc[-8] ^= 0xFF  # the CRC-32 of the trailer
    body = bytearray(good)
    body[len(body) // 2] ^= 0x55  # the deflate stream itself
    return [
        ("truncated", good[: len(good) // 2]),
        ("bad_crc", bytes(crc)),
        ("bad_deflate", bytes(body)),
        ("garbage_after_magic", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + bytes(range(256)) * 4),
        ("bad_method", b"\x1f\x8b\x07" + good[3:]),
        ("trailing_garbage", good + b"this is not gzip"),
    ]


@pytest.mark.parametrize(("name", "content"), gzip_corruptions(), ids=[c[0] for c in gzip_corruptions()])
def test_corrupt_gzip_is_a_clear_error_and_declined_by_the_reader(tmp_path, name, content):
    path = tmp_path / f"{name}.geojson.gz"
    path.write_bytes(content)
    with pytest.raises(GeoJSONError, match=r"not a valid gzip stream") as info:
        read_geojson(path)
    assert str(path) in str(info.value)
    assert_reader_declines(path)


def bomb(tmp_path: Path, inflated: int) -> Path:
    """A valid-looking FeatureCollection whose gzip inflates ``inflated`` bytes of spaces."""
    path = tmp_path / "bomb.geojson.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(PREFIX)]
    block = b" " * (1 << 20)
    for _ in range(inflated >> 20):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(b"]}") + compressor.flush())
    path.write_bytes(b"".join(parts))
    return path


def test_gzip_bomb_is_refused_by_the_default_limit(tmp_path, monkeypatch):
    # the default rule (200x the file, at least MIN_DECOMPRESSED) with a floor small enough to test
    monkeypatch.setattr(geojson_file, "MIN_DECOMPRESSED", 1 << 20)
    path = bomb(tmp_path, 64 << 20)
    assert path.stat().st_size < 200_000
    assert geojson_file.decompressed_limit(path.stat().st_size) < 64 << 20
    with pytest.raises(GeoJSONError, match=r"inflates to more than [\d,]+ bytes .* gzip bomb; "
                                           r"read_geojson\(\.\.\., max_decompressed=N\) allows more") as info:
        read_geojson(path)
    assert str(path) in str(info.value)
    assert get_geojson_reader(str(path)) is not None  # its head looks like GeoJSON ...
    assert_reader_declines(path)  # ... but reading it is declined


def test_gzip_bomb_explicit_limit_and_allowance(tmp_path):
    path = bomb(tmp_path, 8 << 20)
    with pytest.raises(GeoJSONError, match=r"more than 1,048,576 bytes"):
        read_geojson(path, max_decompressed=1 << 20)
    assert read_geojson(path, max_decompressed=16 << 20) == []  # only whitespace: a legal, empty collection


def test_default_limits():
    assert geojson_file.decompressed_limit(1_000) == geojson_file.MIN_DECOMPRESSED
    assert geojson_file.decompressed_limit(10_000_000) == 200 * 10_000_000
    assert geojson_file.decompressed_limit(1 << 30) == geojson_file.MAX_DECOMPRESSED


def test_hostile_feature_is_found_among_many_ordinary_ones(tmp_path):
    """The vectorised reading sees the file first; the error still names the exact feature."""
    features = [feature(f"[[{i},0],[{i + 1},0],[{i + 1},1],[{i},1],[{i},0]]") for i in range(5000)]
    features[3210] = feature("[[0,0],[4,0],[4,true],[0,4],[0,0]]", extra=',"id":"needle"')
    features[4321] = feature(ring_with('"4"'))
    path = tmp_path / "haystack.geojson"
    path.write_text(collection(*features))
    with pytest.raises(GeoJSONError, match=r"feature 3210 \(id needle\): geometry ring 0 .* holds a boolean"):
        read_geojson(path)
    assert_reader_declines(path)
