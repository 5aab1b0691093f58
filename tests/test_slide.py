"""Slide: formats, metadata, resolution-aware reads, padding, threads, the lazy pyramid, bad input."""

from __future__ import annotations

import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _pyramids import (
    BUNDLED_TILE,
    SHARED,
    SVS,
    he_on_glass,
    he_tile,
    pyramid,
    write_plain_tiff,
    write_pyramid,
)
from PIL import Image
from skimage.transform import downscale_local_mean, resize
from tifffile.zarr import ZarrTiffStore

from napari_hoverfast.core.slide import WORK_MPP, Slide, SlideError, working_factor

SLIDE_SUFFIXES = {".svs", ".ndpi", ".tif", ".tiff", ".scn", ".bif", ".svslide", ".qptiff", ".mrxs"}
REAL_SLIDES = sorted(p for p in SHARED.glob("*") if p.suffix.lower() in SLIDE_SUFFIXES)
_CHUNK_KEY = re.compile(r"^(\d+/)?\d+\.\d+\.\d+$")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """1536 × 1024 px of glass with two pieces of tissue."""
    return he_on_glass(1024, 1536, [(256, 256, 512, 512), (1024, 512, 256, 256)])


@pytest.fixture(scope="module")
def lossless(tmp_path_factory, image) -> Path:
    """An uncompressed 3-level pyramid: reads can be compared exactly."""
    return write_pyramid(tmp_path_factory.mktemp("lossless") / "lossless.tif", image, compression=None)


@pytest.fixture(scope="module")
def jpeg_pyramids(tmp_path_factory, image) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {
        layout: write_pyramid(root / f"{layout}.tif", image, layout=layout)
        for layout in ("subifds", "aperio", "ome")
    }


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """Chunk keys decoded by tifffile's zarr store while the test runs."""
    keys: list[str] = []
    original = ZarrTiffStore.get

    async def counting_get(self, key, *args, **kwargs):
        if _CHUNK_KEY.match(key):
            keys.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(ZarrTiffStore, "get", counting_get)
    return keys


# --- metadata ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["subifds", "aperio", "ome"])
def test_pyramid_layouts_open_with_levels_and_mpp(jpeg_pyramids, layout):
    with Slide(jpeg_pyramids[layout]) as slide:
        assert slide.dimensions == (1536, 1024)
        assert slide.level_count == 3
        assert slide.level_dimensions == ((1536, 1024), (768, 512), (384, 256))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        assert slide.mpp == pytest.approx(0.25)
        assert slide.name == layout
        assert slide.path == jpeg_pyramids[layout]
        assert slide.vendor == {"subifds": "generic-tiff", "aperio": "aperio", "ome": "ome"}[layout]
        assert slide.objective_power == (40.0 if layout == "aperio" else None)
        assert slide.read_region(0, 0, 64, 32).shape == (32, 64, 3)


def test_missing_mpp_is_none_and_an_error_when_needed(tmp_path, image):
    path = write_pyramid(tmp_path / "nompp.tif", image[:512, :512], levels=2, mpp=None)
    with Slide(path) as slide:
        assert slide.mpp is None
        with pytest.raises(SlideError, match="no pixel size"):
            slide.work_mpp()
        with pytest.raises(SlideError, match="mpp=0.25"):
            slide.read_region(0, 0, 100, 100, mpp=0.5)
        # reads at a downsample need no pixel size
        assert slide.read_region(0, 0, 100, 100, downsample=2).shape == (50, 50, 3)
    with Slide(path, mpp=0.3) as slide:
        assert slide.mpp == 0.3
        assert slide.work_mpp() == pytest.approx(0.3)


def test_explicit_mpp_overrides_metadata(lossless):
    with Slide(lossless, mpp=0.5) as slide:
        assert slide.mpp == 0.5
        assert slide.read_region(0, 0, 100, 100, mpp=0.25).shape == (200, 200, 3)
    with pytest.raises(SlideError, match="not a microscope pixel size"):
        Slide(lossless, mpp=-1)


def test_editor_dpi_is_not_taken_for_a_pixel_size(tmp_path):
    """72 dpi is what image editors write, not a microscope's pixel size: no silent guess."""
    path = tmp_path / "dpi72.tif"
    tifffile.imwrite(path, he_tile()[:256, :256], photometric="rgb", resolution=(72, 72),
                     resolutionunit="INCH")
    with Slide(path) as slide:
        assert slide.mpp is None


@pytest.mark.parametrize(
    ("mpp", "factor", "work"),
    [(0.25, 1.0, 0.25), (0.2425, 1.0, 0.2425), (0.499, 2.0, 0.2495), (0.125, 0.5, 0.25), (1.0, 4.0, 0.25)],
)
def test_working_factor(mpp, factor, work):
    assert working_factor(mpp) == factor
    assert mpp / working_factor(mpp) == pytest.approx(work)
    assert working_factor(WORK_MPP) == 1.0


@pytest.mark.parametrize("bad", [0, -0.25, float("nan"), float("inf"), "0.25", None])
def test_working_factor_rejects_nonsense(bad):
    with pytest.raises(SlideError, match="positive"):
        working_factor(bad)


# --- reading -------------------------------------------------------------------------------------------


def test_level0_read_is_exact(lossless, image):
    with Slide(lossless) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 1536, 1024), image)
        np.testing.assert_array_equal(slide.read_region(301, 77, 250, 333), image[77:410, 301:551])
        np.testing.assert_array_equal(
            slide.read_region(301, 77, 250, 333, mpp=0.25), image[77:410, 301:551]
        )


def test_read_at_a_level_resolution_crops_that_level(lossless, image):
    levels = pyramid(image, 3)
    with Slide(lossless) as slide:
        np.testing.assert_array_equal(slide.read_region(200, 100, 400, 300, mpp=0.5), levels[1][50:200, 100:300])
        np.testing.assert_array_equal(slide.read_region(0, 0, 1536, 1024, mpp=1.0), levels[2])
        # coarser than every level: block means of the smallest level
        out = slide.read_region(0, 0, 1536, 1024, mpp=2.0)
        expected = np.rint(downscale_local_mean(levels[2].astype(float), (2, 2, 1)))
        assert out.shape == (512 // 4, 768 // 4, 3)
        np.testing.assert_allclose(out, expected, atol=1)


def test_read_between_levels_averages_the_area(lossless, image):
    """0.75 µm/px is 1.5 level-1 px: each output pixel is the exact area mean of level 1."""
    level1 = pyramid(image, 2)[1]
    with Slide(lossless) as slide:
        out = slide.read_region(0, 0, 1536, 1020, mpp=0.75)
    assert out.shape == (340, 512, 3)
    doubled = np.repeat(np.repeat(level1[:510].astype(float), 2, axis=0), 2, axis=1)
    expected = downscale_local_mean(doubled, (3, 3, 1))
    assert np.abs(out - expected).max() <= 0.51


def test_upsampling_is_bilinear_with_centred_pixels(lossless, image):
    with Slide(lossless) as slide:
        out = slide.read_region(100, 120, 200, 150, mpp=0.125)
        assert out.shape == (300, 400, 3)
        # skimage's resize places pixel centres the same way; one pixel of context each side
        src = image[119:271, 99:301].astype(float)
        expected = resize(src, (304, 404), order=1, mode="edge", anti_aliasing=False)[2:302, 2:402]
        assert np.abs(out - expected).max() <= 1
        # a region read inside a larger one is the same pixels
        big = slide.read_region(50, 60, 400, 300, mpp=0.125)
        assert np.abs(big[120:420, 100:500].astype(int) - out).max() <= 1


def test_output_size_follows_the_requested_mpp(lossless):
    with Slide(lossless) as slide:
        for mpp in (0.1, 0.25, 0.3, 0.5, 0.6, 1.7):
            out = slide.read_region(10, 20, 333, 222, mpp=mpp)
            assert out.shape == (round(222 * 0.25 / mpp), round(333 * 0.25 / mpp), 3)
            assert out.dtype == np.uint8


def test_best_level(lossless):
    with Slide(lossless) as slide:
        assert [slide.best_level(d) for d in (0.5, 1, 1.9, 2, 3.99, 4, 100)] == [0, 0, 0, 1, 1, 2, 2]


def test_odd_sized_pyramid_levels_have_whole_downsamples(tmp_path):
    img = he_on_glass(1001, 1501, [(200, 200, 700, 600)])
    path = write_pyramid(tmp_path / "odd.tif", img, levels=3, compression=None)
    with Slide(path) as slide:
        assert slide.level_dimensions == ((1501, 1001), (750, 500), (375, 250))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        corner = slide.read_region(1401, 901, 100, 100, mpp=0.5)  # reaches the last, half-covered row
        assert corner.shape == (50, 50, 3)


def test_pad_reflects_the_slide_at_its_border(lossless, image):
    with Slide(lossless) as slide:
        out = slide.read_region(-10, -5, 40, 30, pad=True)
        assert out.shape == (30, 40, 3)
        inside = image[:25, :30]
        np.testing.assert_array_equal(out[5:, 10:], inside)
        np.testing.assert_array_equal(out[5:, :10], inside[:, :10][:, ::-1])
        np.testing.assert_array_equal(out[:5, 10:], inside[:5][::-1])
        right = slide.read_region(1500, 1000, 100, 100, pad=True, mpp=0.5)
        assert right.shape == (50, 50, 3)
        # a box inside the slide reads the same with or without pad
        np.testing.assert_array_equal(
            slide.read_region(0, 0, 64, 64, mpp=0.125, pad=True), slide.read_region(0, 0, 64, 64, mpp=0.125)
        )


@pytest.mark.parametrize(
    ("box", "kwargs", "message"),
    [
        ((0, 0, 0, 10), {}, r"empty region x=0, y=0, w=0, h=10"),
        ((0, 0, 10, -3), {}, r"empty region"),
        ((2000, 10, 10, 10), {}, r"region x=2000, y=10, w=10, h=10 lies outside the slide \(1536 × 1024 px\)"),
        ((-20, -20, 10, 10), {"pad": True}, r"lies outside the slide"),
        ((1500, 1000, 100, 100), {}, r"extends outside the slide \(1536 × 1024 px\); pass pad=True"),
        ((0, 0, 1, 1), {"mpp": 5.0}, r"smaller than one pixel"),
        ((0, 0, 10.5, 10), {}, r"whole pixels"),
        ((0, 0, 10, 10), {"mpp": 0.5, "downsample": 2}, r"not both"),
        ((0, 0, 10, 10), {"mpp": 0}, r"positive"),
    ],
)
def test_bad_regions_say_what_is_wrong(lossless, box, kwargs, message):
    with Slide(lossless) as slide, pytest.raises(SlideError, match=message):
        slide.read_region(*box, **kwargs)


def test_reads_from_eight_threads_match_serial_reads(jpeg_pyramids):
    rng = np.random.default_rng(1)
    requests = []
    for _ in range(48):
        w, h = (int(v) for v in rng.integers(64, 600, 2))
        x, y = int(rng.integers(0, 1536 - w)), int(rng.integers(0, 1024 - h))
        requests.append((x, y, w, h, float(rng.choice([0.125, 0.25, 0.4, 0.5, 1.0]))))
    with Slide(jpeg_pyramids["aperio"]) as slide:
        serial = [slide.read_region(x, y, w, h, mpp=m) for x, y, w, h, m in requests]
    with Slide(jpeg_pyramids["aperio"]) as slide:
        barrier = threading.Barrier(8)

        def read(i: int) -> np.ndarray:
            if i < 8:
                barrier.wait()
            x, y, w, h, m = requests[i]
            return slide.read_region(x, y, w, h, mpp=m)

        with ThreadPoolExecutor(8) as pool:
            parallel = list(pool.map(read, range(len(requests))))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_close_ends_reading(lossless):
    slide = Slide(lossless)
    levels = slide.to_dask()
    slide.close()
    slide.close()  # idempotent
    assert slide.closed and "closed" in repr(slide)
    with pytest.raises(SlideError, match="closed"):
        slide.read_region(0, 0, 10, 10)
    with pytest.raises(SlideError, match="closed"):
        levels[0][:10, :10].compute()


# --- the lazy pyramid -------------------------------------------------------------------------------


def test_to_dask_is_lazy_and_reads_only_the_requested_tiles(jpeg_pyramids, decoded):
    with Slide(jpeg_pyramids["subifds"]) as slide:
        levels = slide.to_dask()
        assert [a.shape for a in levels] == [(1024, 1536, 3), (512, 768, 3), (256, 384, 3)]
        assert all(a.dtype == np.uint8 for a in levels)
        assert levels[0].chunksize == (256, 256, 3)
        assert decoded == []  # building the pyramid decodes nothing
        region = levels[0][256:768, 512:1024].compute()
        assert sorted(decoded) == ["0/1.2.0", "0/1.3.0", "0/2.2.0", "0/2.3.0"]
        np.testing.assert_array_equal(region, slide.read_region(512, 256, 512, 512))
        decoded.clear()
        thumb = levels[-1].compute()
        assert len(decoded) == 2 and all(k.startswith("2/") for k in decoded)
        np.testing.assert_array_equal(thumb, slide.read_region(0, 0, 1536, 1024, mpp=1.0))


def test_to_dask_of_a_plain_picture():
    with Slide(BUNDLED_TILE) as slide:
        (level,) = slide.to_dask()
        np.testing.assert_array_equal(level.compute(), he_tile())


# --- plain pictures -----------------------------------------------------------------------------------


def test_png_with_and_without_a_pixel_size(tmp_path):
    tile = he_tile()[:300, :200]
    Image.fromarray(tile).save(tmp_path / "plain.png")
    Image.fromarray(tile).save(tmp_path / "phys.png", dpi=(25400 / 0.25, 25400 / 0.25))
    with Slide(tmp_path / "plain.png") as slide:
        assert (slide.dimensions, slide.level_count, slide.mpp, slide.vendor) == ((200, 300), 1, None, "image")
        np.testing.assert_array_equal(slide.read_region(0, 0, 200, 300), tile)
    with Slide(tmp_path / "phys.png") as slide:
        assert slide.mpp == pytest.approx(0.25)
        assert slide.read_region(0, 0, 200, 300, mpp=0.5).shape == (150, 100, 3)


def test_grey_rgba_and_jpeg_pictures_become_rgb(tmp_path):
    tile = he_tile()[:128, :128]
    Image.fromarray(tile).convert("L").save(tmp_path / "grey.png")
    rgba = np.dstack([tile, np.full(tile.shape[:2], 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(tile).save(tmp_path / "tile.jpg", quality=95)
    with Slide(tmp_path / "grey.png") as slide:
        grey = slide.read_region(0, 0, 128, 128)
        assert grey.shape == (128, 128, 3) and (grey[..., 0] == grey[..., 2]).all()
    with Slide(tmp_path / "rgba.png") as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 128, 128), tile)
    with Slide(tmp_path / "tile.jpg") as slide:
        assert np.abs(slide.read_region(0, 0, 128, 128).astype(int) - tile).mean() < 4


def test_single_level_tiff(tmp_path):
    tile = he_tile()[:256, :384]
    with Slide(write_plain_tiff(tmp_path / "strip.tif", tile, mpp=0.5)) as slide:
        assert slide.level_count == 1 and slide.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(slide.read_region(0, 0, 384, 256), tile)
        np.testing.assert_array_equal(slide.to_dask()[0].compute(), tile)
    grey16 = (tile[..., 0].astype(np.uint16) * 257)
    with Slide(write_plain_tiff(tmp_path / "grey16.tif", grey16)) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 384, 256)[..., 1], tile[..., 0])


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [((4, 32, 32), {"imagej": True}), ((5, 32, 32, 3), {}), ((32, 32, 6), {"planarconfig": "contig"})],
    ids=["imagej-stack", "rgb-stack", "6-channel"],
)
def test_stacks_and_multichannel_images_are_not_slides(tmp_path, shape, kwargs):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros(shape, np.uint8), **kwargs)
    with pytest.raises(SlideError, match=r"stack.tif.* is not a 2-D RGB slide: its image has axes"):
        Slide(path)


# --- bad files --------------------------------------------------------------------------------------


def test_bad_files_say_what_is_wrong(tmp_path, lossless):
    data = lossless.read_bytes()
    cases = {
        "empty.svs": (b"", r"empty.svs is empty \(0 bytes\)"),
        "cut_data.tif": (data[: len(data) // 2], r"cut_data.tif: the file is truncated: its image data needs [\d,]+ bytes but the file has [\d,]+"),
        "cut_header.tif": (data[:100], r"cut_header.tif starts like a TIFF but cannot be read; is it truncated or corrupt\?"),
        "notes.svs": (b"hello, this is not a slide\n" * 20, r"notes.svs is neither a slide nor an image .* \(it starts with b'hello, t'\)"),
        "cut.png": (BUNDLED_TILE.read_bytes()[:5000], r"cut.png cannot be decoded; is it truncated or corrupt\?"),
        "scan.mrxs": (b"[GENERAL]\nSLIDE_VERSION = 01.02\n", r"MIRAX"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SlideError, match=message):
            Slide(tmp_path / name)
    with pytest.raises(SlideError, match="no such file"):
        Slide(tmp_path / "absent.svs")
    with pytest.raises(SlideError, match="folder"):
        Slide(tmp_path)


# --- real slides -----------------------------------------------------------------------------------


@pytest.mark.skipif(not SVS.exists(), reason="shared CMU-1-Small-Region.svs not present")
def test_real_20x_aperio_svs(caplog):
    with Slide(SVS) as slide:
        assert slide.dimensions == (2220, 2967)
        assert slide.vendor == "aperio"
        assert slide.mpp == pytest.approx(0.499)
        assert slide.objective_power == 20
        with caplog.at_level(logging.WARNING, logger="napari_hoverfast.core.slide"):
            work = slide.work_mpp()
        assert work == pytest.approx(0.2495)
        assert "upsampling ×2" in caplog.text and "refuses" in caplog.text
        tile = slide.read_region(1000, 1500, 512, 512, mpp=work)
        assert tile.shape == (1024, 1024, 3)
        assert 60 < tile.mean() < 230  # tissue, neither black nor glass
        (level,) = slide.to_dask()
        assert level.shape == (2967, 2220, 3) and level.chunksize == (240, 240, 3)


@pytest.mark.parametrize("path", REAL_SLIDES, ids=[p.name for p in REAL_SLIDES])
def test_every_real_slide_in_shared_data_opens(path):
    with Slide(path) as slide:
        w, h = slide.dimensions
        assert w > 0 and h > 0 and slide.level_count >= 1
        region = slide.read_region(w // 2, h // 2, min(256, w // 2), min(256, h // 2))
        assert region.dtype == np.uint8 and region.ndim == 3
        levels = slide.to_dask()
        small = levels[-1]
        assert small[: min(64, small.shape[0]), : min(64, small.shape[1])].compute().shape[2] == 3


def test_a_damaged_tile_is_named_when_read(tmp_path):
    path = tmp_path / "damaged.tif"
    tifffile.imwrite(path, he_tile()[:512, :512], tile=(256, 256), compression="jpeg", photometric="rgb")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[3], tif.pages[0].databytecounts[3]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\x00" * count
    path.write_bytes(bytes(data))
    with Slide(path) as slide:
        assert slide.read_region(0, 0, 256, 256).shape == (256, 256, 3)  # intact tiles still read
        with pytest.raises(SlideError, match=r"damaged.tif: cannot decode level 0 pixels x 256–512, y 256–512"):
            slide.read_region(256, 256, 256, 256)
