"""Tissue masks from slides and from user mask images, and the level-0 tiles that touch tissue."""

from __future__ import annotations

import numpy as np
import pytest
from _pyramids import CMU1_MASK, SVS, glass, he_on_glass, write_pyramid
from PIL import Image
from tifffile.zarr import ZarrTiffStore

from napari_hoverfast.core.slide import Slide
from napari_hoverfast.core.tissue import (
    TissueError,
    TissueMask,
    TissueOptions,
    mask_from_image,
    tiles_on_tissue,
    tissue_mask,
    tissue_tile_grid,
)

WIDTH, HEIGHT = 6144, 4096
TISSUE = [(1024, 1024, 2048, 1024), (4096, 2048, 1024, 1024)]  # (x, y, w, h), level 0


def touching(boxes, rects=TISSUE):
    """The boxes that overlap any rectangle: the geometric truth."""
    return [
        b
        for b in boxes
        if any(b[0] < x + w and x < b[0] + b[2] and b[1] < y + h and y < b[1] + b[3] for x, y, w, h in rects)
    ]


def grid(tile, step, width=WIDTH, height=HEIGHT):
    return [
        (x, y, min(tile, width - x), min(tile, height - y))
        for y in range(0, height, step)
        for x in range(0, width, step)
    ]


@pytest.fixture(scope="module")
def he_slide(tmp_path_factory):
    """40× H&E tissue in two rectangles on glass, a 4-level JPEG pyramid."""
    path = tmp_path_factory.mktemp("tissue") / "he_on_glass.tif"
    return write_pyramid(path, he_on_glass(HEIGHT, WIDTH, TISSUE), levels=4)


@pytest.fixture(scope="module")
def he_mask(he_slide):
    with Slide(he_slide) as slide:
        return tissue_mask(slide)


def test_glass_yields_no_tiles_and_tissue_all_of_its_tiles(he_mask):
    assert he_mask.downsample == 32 and he_mask.mask.shape == (HEIGHT // 32, WIDTH // 32)
    assert he_mask.dimensions == (WIDTH, HEIGHT)
    assert he_mask.fraction == pytest.approx(3 / 24)
    assert tissue_tile_grid(he_mask, 1024) == [
        (1024, 1024, 1024, 1024),
        (2048, 1024, 1024, 1024),
        (4096, 2048, 1024, 1024),
    ]
    for tile, step in [(512, 384), (1024, 896), (700, 700), (256, 256)]:
        assert tissue_tile_grid(he_mask, tile, step) == touching(grid(tile, step)), (tile, step)


def test_tiles_on_tissue_flags_arbitrary_boxes(he_mask):
    boxes = [(0, 0, 1024, 1024), (1000, 1000, 30, 30), (1023, 1023, 1, 1), (3072, 0, 1024, 1024),
             (5100, 3000, 5000, 5000), (-500, -500, 1600, 1600)]
    assert tiles_on_tissue(he_mask, boxes) == [False, True, False, False, True, True]
    # a box a quarter on tissue passes min_fraction=0.2 but not 0.3
    quarter = [(512, 512, 1024, 1024)]
    assert tiles_on_tissue(he_mask, quarter, min_fraction=0.2) == [True]
    assert tiles_on_tissue(he_mask, quarter, min_fraction=0.3) == [False]
    assert he_mask.box_fraction(512, 512, 1024, 1024) == pytest.approx(0.25)


def test_the_mask_is_read_from_a_low_level(he_slide, monkeypatch):
    decoded: list[str] = []
    original = ZarrTiffStore.get

    async def counting_get(self, key, *args, **kwargs):
        if key[-1].isdigit():
            decoded.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(ZarrTiffStore, "get", counting_get)
    with Slide(he_slide) as slide:
        tissue_mask(slide)
    assert decoded and all(key.startswith("3/") for key in decoded)  # level 3: 768 × 512, 6 tiles
    assert len(decoded) == 6


def test_pure_glass_has_no_tissue(tmp_path):
    path = write_pyramid(tmp_path / "glass.tif", glass(1024, 2048), levels=2)
    with Slide(path) as slide:
        mask = tissue_mask(slide)
    assert mask.fraction == 0
    assert tissue_tile_grid(mask, 256) == []


def test_a_slide_without_mpp_uses_a_fixed_downsample(tmp_path):
    img = he_on_glass(2048, 2048, [(1024, 0, 1024, 1024)])
    path = write_pyramid(tmp_path / "nompp.tif", img, levels=3, mpp=None)
    with Slide(path) as slide:
        mask = tissue_mask(slide)
    assert mask.downsample == 32
    assert tissue_tile_grid(mask, 1024) == [(1024, 0, 1024, 1024)]


def test_options_are_validated():
    with pytest.raises(TissueError, match="mpp"):
        TissueOptions(mpp=0)
    with pytest.raises(TissueError, match="saturation"):
        TissueOptions(saturation=1.5)
    with pytest.raises(TissueError, match="2-D"):
        TissueMask(np.zeros((2, 2, 2), bool), 1.0, (2, 2))


@pytest.mark.skipif(not SVS.exists(), reason="shared CMU-1-Small-Region.svs not present")
def test_real_svs_tissue():
    with Slide(SVS) as slide:
        mask = tissue_mask(slide)
    assert mask.downsample == 16  # 8 µm / 0.499 µm
    assert 0.25 < mask.fraction < 0.5
    # the top-left corner is glass; the skin runs down the lower middle of the scan
    assert tiles_on_tissue(mask, [(0, 0, 600, 600), (1100, 2000, 256, 256), (1500, 2700, 256, 256)]) == [
        False, True, True,
    ]
    tiles = tissue_tile_grid(mask, 512)
    all_tiles = grid(512, 512, *slide.dimensions)
    assert 0.3 * len(all_tiles) < len(tiles) < 0.8 * len(all_tiles)


# --- user masks -------------------------------------------------------------------------------------


def test_a_user_mask_of_any_scale_gives_the_same_tiles(tmp_path, he_mask):
    small = np.zeros((HEIGHT // 64, WIDTH // 64), np.uint8)
    for x, y, w, h in TISSUE:
        small[y // 64 : (y + h) // 64, x // 64 : (x + w) // 64] = 255
    Image.fromarray(small).save(tmp_path / "mask.png")
    Image.fromarray(np.dstack([small] * 3)).save(tmp_path / "mask_rgb.png")
    from_array = mask_from_image(small, (WIDTH, HEIGHT))
    from_png = mask_from_image(tmp_path / "mask.png", (WIDTH, HEIGHT))
    from_rgb = mask_from_image(str(tmp_path / "mask_rgb.png"), (WIDTH, HEIGHT))
    assert from_array.downsample == 64
    for mask in (from_array, from_png, from_rgb):
        np.testing.assert_array_equal(mask.mask, small > 0)
        assert tissue_tile_grid(mask, 512, 384) == tissue_tile_grid(he_mask, 512, 384)


@pytest.mark.skipif(not CMU1_MASK.exists(), reason="shared CMU-1.png not present")
def test_real_cmu1_mask_at_one_eighth():
    mask = mask_from_image(CMU1_MASK, (46000, 32914))
    assert mask.mask.shape == (4114, 5750)
    assert mask.downsample == pytest.approx(8.0, abs=1e-3)
    tiles = tissue_tile_grid(mask, 1024, 896)
    # brute force on the mask itself
    rows, cols = np.nonzero(mask.mask)
    x0, x1, y0, y1 = cols.min() * 8, (cols.max() + 1) * 8, rows.min() * 8, (rows.max() + 1) * 8
    expected = []
    for x, y, w, h in grid(1024, 896, 46000, 32914):
        r0, r1 = int(y // mask.downsample), int(np.ceil((y + h) / mask.downsample))
        c0, c1 = int(x // mask.downsample), int(np.ceil((x + w) / mask.downsample))
        if mask.mask[r0:r1, c0:c1].any():
            expected.append((x, y, w, h))
    assert tiles == expected
    assert 10 < len(tiles) < 200
    assert all(x < x1 and x + w > x0 and y < y1 and y + h > y0 for x, y, w, h in tiles)


def test_a_mask_of_another_shape_is_refused(tmp_path):
    with pytest.raises(TissueError, match=r"the mask \(100 × 100 px\) does not have the slide's shape \(46000 × 32914 px\)"):
        mask_from_image(np.ones((100, 100), np.uint8), (46000, 32914))
    (tmp_path / "notes.png").write_text("not a png")
    with pytest.raises(TissueError, match="not a mask image"):
        mask_from_image(tmp_path / "notes.png", (100, 100))
    with pytest.raises(TissueError, match="no such mask"):
        mask_from_image(tmp_path / "absent.png", (100, 100))
    with pytest.raises(TissueError, match="2-D"):
        mask_from_image(np.zeros((3, 4, 5, 6), np.uint8), (100, 100))
