"""Time to first view: opening and showing a 100,000 × 80,000 px slide costs what a 1 MB one does.

    python benchmarks/bench_slide_open.py [--dir CACHE] [--repeat 5] [--viewer]

Writes, once, two tiled JPEG pyramids with tifffile into ``--dir`` (default: the sample-data cache,
``$NAPARI_HOVERFAST_CACHE``, in ``bench/``): a large one of 100,352 × 80,384 px (SubIFD levels every
4×, pre-encoded tiles from the bundled H&E tile inside an elliptical "tissue" and glass around it;
~1 GB) and a small one of about 1 MB. For each it prints the median time to open the slide, build
its dask pyramid and compute what napari's first view needs, and how many tiles were decoded.

The first view is what napari computes when a multiscale image is added and fitted to the canvas:
the coarsest level whole (the thumbnail) and the coarsest level fine enough for the canvas
(``--canvas``, default 1920 × 1080). With ``--viewer`` the same is measured in a real napari viewer
(``viewer.open(path, plugin="napari-hoverfast")``, then wait until the layer has loaded; needs a
display or Xvfb). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TILE = 512
LARGE = (100_352, 80_384)  # width, height: 196 × 157 tiles of 512
SMALL = (2_048, 1_536)
_CHUNK_KEY = re.compile(r"^(\d+/)?\d+\.\d+\.\d+$")


# --- writing the pyramids --------------------------------------------------------------------------


def _tile_variants(quality: int) -> tuple[list[bytes], bytes]:
    """JPEG-encoded 512² tiles: 16 of tissue (quadrants of the H&E tile, flipped) and one of glass."""
    import imagecodecs
    from PIL import Image

    from napari_hoverfast._sample_data import TILE_PATH

    he = np.asarray(Image.open(TILE_PATH).convert("RGB"))
    tissue = []
    for y in (0, TILE):
        for x in (0, TILE):
            quad = he[y : y + TILE, x : x + TILE]
            for flip in (quad, quad[::-1], quad[:, ::-1], quad[::-1, ::-1]):
                tissue.append(imagecodecs.jpeg8_encode(np.ascontiguousarray(flip), level=quality))
    rng = np.random.default_rng(0)
    glass = np.clip(np.array([242, 240, 245]) + rng.normal(0, 2, (TILE, TILE, 1)), 0, 255).astype(np.uint8)
    return tissue, imagecodecs.jpeg8_encode(glass, level=quality)


def _tiles(width: int, height: int, tissue: list[bytes], glass: bytes) -> Iterator[bytes]:
    """Row-major tiles of one level: tissue inside a centred ellipse, glass outside."""
    cols, rows = -(-width // TILE), -(-height // TILE)
    for r in range(rows):
        for c in range(cols):
            u, v = (c + 0.5) / cols - 0.5, (r + 0.5) / rows - 0.5
            inside = (u / 0.42) ** 2 + (v / 0.36) ** 2 < 1
            yield tissue[(r * 7 + c * 3) % len(tissue)] if inside else glass


def write_large(path: Path, size: tuple[int, int] = LARGE, *, mpp: float = 0.25, quality: int = 80) -> Path:
    """A BigTIFF pyramid (levels every 4× down to < 1024 px) from pre-encoded tiles; written atomically."""
    import tifffile

    tissue, glass = _tile_variants(quality)
    levels = [size]
    while max(levels[-1]) > 1024:
        w, h = levels[-1]
        levels.append((-(-w // 4), -(-h // 4)))
    tmp = path.with_suffix(".partial")
    opts = {
        "dtype": np.uint8,
        "tile": (TILE, TILE),
        "compression": "jpeg",
        "photometric": "ycbcr",
        "resolutionunit": "CENTIMETER",
    }
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for k, (w, h) in enumerate(levels):
            res = 1e4 / (mpp * 4**k)
            extra = {"subifds": len(levels) - 1} if k == 0 else {"subfiletype": 1}
            tif.write(_tiles(w, h, tissue, glass), shape=(h, w, 3), resolution=(res, res), **extra, **opts)
    os.replace(tmp, path)
    return path


def write_small(path: Path, size: tuple[int, int] = SMALL, *, mpp: float = 0.25) -> Path:
    """An ordinary ~1 MB pyramid written from pixels (the sample slide's recipe, smaller)."""
    import tifffile

    from napari_hoverfast._sample_data import _sample_image

    image = _sample_image()[: size[1], : size[0]]
    tmp = path.with_suffix(".partial")
    with tifffile.TiffWriter(tmp) as tif:
        levels = [image, image[::2, ::2], image[::4, ::4]]
        opts = {"tile": (TILE // 2, TILE // 2), "compression": "jpeg", "compressionargs": {"level": 92},
                "photometric": "rgb", "resolutionunit": "CENTIMETER"}
        for k, level in enumerate(levels):
            res = 1e4 / (mpp * 2**k)
            extra = {"subifds": len(levels) - 1} if k == 0 else {"subfiletype": 1}
            tif.write(np.ascontiguousarray(level), resolution=(res, res), **extra, **opts)
    os.replace(tmp, path)
    return path


# --- measuring ---------------------------------------------------------------------------------------


class DecodeCounter:
    """Counts tile decodes by wrapping tifffile's zarr store (one ``get`` of a chunk key = one decode)."""

    def __init__(self) -> None:
        from tifffile.zarr import ZarrTiffStore

        self.keys: list[str] = []
        self._cls = ZarrTiffStore
        self._original = ZarrTiffStore.get
        original, keys = self._original, self.keys

        async def get(store, key, *args, **kwargs):  # type: ignore[no-untyped-def]
            if _CHUNK_KEY.match(key):
                keys.append(key)
            return await original(store, key, *args, **kwargs)

        ZarrTiffStore.get = get  # type: ignore[method-assign]

    def restore(self) -> None:
        self._cls.get = self._original  # type: ignore[method-assign]


def first_view_levels(shapes: list[tuple[int, ...]], canvas: tuple[int, int]) -> list[int]:
    """The coarsest level (napari's thumbnail) and the coarsest level at least as fine as the canvas."""
    cw, ch = canvas
    h0, w0 = shapes[0][:2]
    screen_ds = max(w0 / cw, h0 / ch)  # level-0 pixels per screen pixel when the slide fits the canvas
    fine = 0
    for level, shape in enumerate(shapes):
        if w0 / shape[1] <= screen_ds:
            fine = level
    return sorted({len(shapes) - 1, fine})


def headless_first_view(path: Path, counter: DecodeCounter, canvas: tuple[int, int]) -> tuple[float, int, list[int]]:
    """Open, build the dask pyramid, compute the first view's levels; seconds and tiles decoded."""
    from napari_hoverfast._reader import get_slide_reader

    counter.keys.clear()
    start = time.perf_counter()
    [(data, _kwargs, _)] = get_slide_reader(path)(path)  # type: ignore[misc]
    levels = first_view_levels([a.shape for a in data], canvas)
    for level in levels:
        data[level].compute()
    return time.perf_counter() - start, len(counter.keys), levels


def viewer_first_view(path: Path, counter: DecodeCounter) -> tuple[float, int]:
    """Open in a real (hidden) napari viewer and wait until the layer has loaded what it shows."""
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=False)
    try:
        counter.keys.clear()
        start = time.perf_counter()
        [layer] = viewer.open(path, plugin="napari-hoverfast")
        viewer.reset_view()
        deadline = start + 120
        while not layer.loaded and time.perf_counter() < deadline:
            QApplication.processEvents()
            time.sleep(0.001)
        return time.perf_counter() - start, len(counter.keys)
    finally:
        viewer.close()


def main(argv: list[str] | None = None) -> None:
    from napari_hoverfast._sample_data import cache_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="where the pyramids are written (kept for reuse)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--canvas", type=int, nargs=2, default=(1920, 1080), metavar=("W", "H"))
    parser.add_argument("--viewer", action="store_true", help="also measure in a real napari viewer")
    args = parser.parse_args(argv)

    folder = args.dir or cache_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    large, small = folder / "large_100k_x_80k.tif", folder / "small_1mb.tif"
    for path, write in ((large, write_large), (small, write_small)):
        if not path.is_file():
            start = time.perf_counter()
            write(path)
            print(f"wrote {path} in {time.perf_counter() - start:.1f} s")

    counter = DecodeCounter()
    try:
        headless_first_view(small, counter, tuple(args.canvas))  # warm up imports and thread pools
        if args.viewer:
            viewer_first_view(small, counter)  # warm up Qt, OpenGL and napari
        results = {}
        for label, path in (("small", small), ("large", large)):
            from napari_hoverfast.core.slide import Slide

            with Slide(path) as slide:
                w, h = slide.dimensions
                info = f"{w:,} × {h:,} px, {slide.level_count} levels, {path.stat().st_size / 1e6:,.1f} MB"
            runs = [headless_first_view(path, counter, tuple(args.canvas)) for _ in range(args.repeat)]
            seconds = statistics.median(r[0] for r in runs)
            tiles, levels = runs[-1][1], runs[-1][2]
            results[label] = seconds
            print(f"{label:5s} {info}")
            print(f"      open + dask pyramid + first view (levels {levels}): {seconds * 1e3:.1f} ms median "
                  f"of {args.repeat}, {tiles} tiles decoded")
            if args.viewer:
                views = [viewer_first_view(path, counter) for _ in range(args.repeat)]
                print(f"      napari viewer, open until loaded: {statistics.median(v[0] for v in views) * 1e3:.1f} ms "
                      f"median of {args.repeat}, {views[-1][1]} tiles decoded")
        print(f"large / small time ratio: {results['large'] / results['small']:.2f}")
    finally:
        counter.restore()


if __name__ == "__main__":
    main()
