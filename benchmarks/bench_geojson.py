"""Seconds to write N nuclei to QuPath GeoJSON (.geojson, .geojson.gz) and to read them back into Nuclei.

    python benchmarks/bench_geojson.py [--n 1000000] [--levels 1 6] [--keep DIR]

Builds N synthetic nuclei (ellipses of 20 vertices with jittered radii, 3–4.5 µm, on a jittered grid
like tissue at 40×; coordinates are arbitrary floats, as after the pipeline's tile offset and scale)
in a :class:`Nuclei` container, then times the product's own paths: ``formats.write_geojson`` (what
the CLI, the widget and the napari writer call) to .geojson and, for each ``--levels`` zlib level, to
.geojson.gz; ``Nuclei.read_geojson`` (the file straight into the container, a piece at a time), and
``read_geojson`` then ``Nuclei.from_geo_objects`` (objects first) on the file written. As the baseline,
in the same process: the same FeatureCollection built as dicts (coordinates rounded, UUID4 ids) and
serialised with one ``orjson.dumps`` (then gzip level 6 for .gz), both with the garbage collector
paused, and ``orjson.loads`` of our file, also with the collector paused. Prints seconds, file sizes and ratios (ours / baseline); never
asserts a time.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import shapely

MPP = 0.25


def synthetic_nuclei(n: int, seed: int = 0):  # noqa: ANN201 - Nuclei, imported late
    """``n`` nucleus-like 20-vertex polygons (level-0 px) with probability and tile, in a Nuclei."""
    from napari_hoverfast.core.nuclei import Nuclei

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    spacing = 60.0  # px: 15 µm between nuclei
    ij = np.stack(np.divmod(np.arange(n), side), axis=1).astype(float)
    centres = (ij + 0.5) * spacing + rng.uniform(-10, 10, (n, 2))
    t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    a = rng.uniform(12, 18, n)[:, None] * rng.uniform(0.92, 1.08, (n, 20))
    b = a * rng.uniform(0.6, 1.0, n)[:, None]
    theta = rng.uniform(0, np.pi, n)[:, None]
    x = centres[:, 1:2] + a * np.cos(t) * np.cos(theta) - b * np.sin(t) * np.sin(theta)
    y = centres[:, 0:1] + a * np.cos(t) * np.sin(theta) + b * np.sin(t) * np.cos(theta)
    x, y = x / 1.0001 + 0.37, y / 1.0001 + 0.11  # arbitrary floats, as after offset and scale
    rings = np.stack([x, y], axis=-1)
    polygons = shapely.polygons(np.concatenate([rings, rings[:, :1]], axis=1))
    nuclei = Nuclei(MPP)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        nuclei.append(polygons[start:stop], rng.uniform(0.5, 1.0, stop - start), np.arange(start, stop) // 400)
    return nuclei


def baseline_features(nuclei) -> list[dict]:  # noqa: ANN001
    """The same FeatureCollection's features as plain dicts, built the straightforward way (the
    synthetic rings are already counter-clockwise and valid, so rounding is all they need)."""
    columns = nuclei.measurements()
    names = list(columns)
    values = [np.asarray(columns[k], dtype=np.float64).tolist() for k in names]
    coords = np.round(shapely.get_coordinates(nuclei.polygons), 2)
    ends = np.cumsum(shapely.get_num_coordinates(nuclei.polygons)).tolist()
    features = []
    start = 0
    for end, row in zip(ends, zip(*values, strict=True), strict=True):
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid4()),
            "geometry": {"type": "Polygon", "coordinates": [coords[start:end].tolist()]},
            "properties": {
                "objectType": "detection",
                "classification": {"name": "Nucleus", "color": [255, 0, 0]},
                "measurements": {k: v for k, v in zip(names, row, strict=True) if v == v and abs(v) != float("inf")},
            },
        })
        start = end
    return features


CPU: dict[str, float] = {}


def timed(label: str, results: dict[str, float], fn, *args):  # noqa: ANN001, ANN201
    """Run ``fn``; record its wall seconds in ``results`` and its CPU seconds (all threads) in CPU."""
    if gc.isenabled():
        gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    results[label] = time.perf_counter() - start
    CPU[label] = time.process_time() - cpu
    print(f"  {label:<40} {results[label]:8.2f} s wall {CPU[label]:8.2f} s CPU", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of nuclei (default 1,000,000)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 6], help="gzip levels to time (default 1 6)")
    parser.add_argument("--keep", type=Path, default=None, help="write the files here instead of a temporary folder")
    args = parser.parse_args()

    import orjson

    from napari_hoverfast.core import geojson_write
    from napari_hoverfast.core.formats import write_geojson
    from napari_hoverfast.core.geojson import GZIP_LEVEL, read_geojson
    from napari_hoverfast.core.nuclei import Nuclei

    print(f"building {args.n:,} synthetic nuclei ...", flush=True)
    nuclei = synthetic_nuclei(args.n)
    r: dict[str, float] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        plain = folder / "ours.geojson"
        print("ours (formats.write_geojson / read_geojson):")
        timed("write .geojson", r, write_geojson, nuclei, plain)
        sizes["ours .geojson"] = plain.stat().st_size
        for level in args.levels:
            geojson_write.GZIP_LEVEL = level
            path = folder / f"ours.l{level}.geojson.gz"
            timed(f"write .geojson.gz (level {level})", r, write_geojson, nuclei, path)
            sizes[f"ours .geojson.gz level {level}"] = path.stat().st_size
        geojson_write.GZIP_LEVEL = GZIP_LEVEL
        back = timed("Nuclei.read_geojson .geojson", r, Nuclei.read_geojson, plain, MPP)
        assert len(back) == len(nuclei), (len(back), len(nuclei))
        del back
        objects = timed("read_geojson .geojson", r, read_geojson, plain)
        timed("Nuclei.from_geo_objects", r, Nuclei.from_geo_objects, objects, MPP)
        assert len(objects) == len(nuclei), (len(objects), len(nuclei))
        del objects
        gz = folder / f"ours.l{args.levels[0]}.geojson.gz"
        objects = timed(f"read_geojson .geojson.gz (level {args.levels[0]})", r, read_geojson, gz)
        del objects

        print("baseline (dicts + one orjson.dumps; orjson.loads with gc paused):")
        gc.disable()  # the baseline at its best: no collector walking the dicts being built
        features = timed("build feature dicts", r, baseline_features, nuclei)
        data = timed("orjson.dumps", r, orjson.dumps, {"type": "FeatureCollection", "features": features})
        gc.enable()
        del features
        timed("write bytes", r, (folder / "baseline.geojson").write_bytes, data)
        timed("gzip level 6 + write", r, lambda b: (folder / "baseline.geojson.gz").write_bytes(gzip.compress(b, 6, mtime=0)), data)
        sizes["baseline .geojson"] = len(data)
        del data

        def loads_paused() -> object:
            gc.disable()
            try:
                return orjson.loads(plain.read_bytes())
            finally:
                gc.enable()

        parsed = timed("orjson.loads (gc paused)", r, loads_paused)
        del parsed

    load = os.getloadavg()[0]
    print(f"\n{args.n:,} nuclei, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB, "
          f"load average {load:.1f} on {os.cpu_count()} CPUs (wall times suffer under load; CPU times less)")
    for label, size in sizes.items():
        print(f"  size {label:<32} {size / 2**20:8.1f} MiB")
    for kind, t in (("wall", r), ("CPU", CPU)):
        base_write = t["build feature dicts"] + t["orjson.dumps"] + t["write bytes"]
        base_gz = base_write - t["write bytes"] + t["gzip level 6 + write"]
        ours_read = t["Nuclei.read_geojson .geojson"]
        via_objects = t["read_geojson .geojson"] + t["Nuclei.from_geo_objects"]
        print(f"  [{kind}] write .geojson:    ours {t['write .geojson']:6.2f} s, orjson baseline {base_write:6.2f} s, "
              f"ratio {t['write .geojson'] / base_write:.2f}")
        for level in args.levels:
            ours = t[f"write .geojson.gz (level {level})"]
            print(f"  [{kind}] write .geojson.gz: ours (level {level}) {ours:6.2f} s, orjson+gzip-6 baseline "
                  f"{base_gz:6.2f} s, ratio {ours / base_gz:.2f}")
        loads = t["orjson.loads (gc paused)"]
        print(f"  [{kind}] read_geojson:      ours {t['read_geojson .geojson']:6.2f} s, orjson.loads baseline "
              f"{loads:6.2f} s, ratio {t['read_geojson .geojson'] / loads:.2f}")
        print(f"  [{kind}] read into Nuclei:  ours {ours_read:6.2f} s (Nuclei.read_geojson), ratio to orjson.loads "
              f"{ours_read / loads:.2f}; via objects {via_objects:6.2f} s (read_geojson + from_geo_objects "
              f"{t['Nuclei.from_geo_objects']:.2f})")


if __name__ == "__main__":
    main()
