"""The haematoxylin-only augmentation: H&E training patches redrawn the way IHC tiles reach the network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_hoverfast.core.ihc import haematoxylin_like
from napari_hoverfast.core.training_data import AugmentOptions, load_folder, sample_patch


@pytest.fixture(scope="module")
def gbm_tile(shared_dir: Path):
    return load_folder(shared_dir / "data" / "nuclei" / "gbm40")[0]


def _od(rgb: np.ndarray) -> np.ndarray:
    return -np.log10(np.clip(rgb, 1e-6, 1.0))


def test_a_redrawn_patch_is_haematoxylin_only_with_nuclei_dark_and_labels_kept(gbm_tile, shared_dir: Path) -> None:
    plain = AugmentOptions(blur_probability=0, lowres_probability=0, jpeg_probability=0)
    redrawn = AugmentOptions(blur_probability=0, lowres_probability=0, jpeg_probability=0, haematoxylin_only_probability=1.0)
    image0, labels0 = sample_patch(gbm_tile, 128, np.random.default_rng(3), plain)
    image1, labels1 = sample_patch(gbm_tile, 128, np.random.default_rng(3), redrawn)
    assert np.array_equal(labels0, labels1)  # same crop, same geometry: only the colour changes
    assert not np.allclose(image0, image1)
    od = _od(image1.transpose(1, 2, 0)).reshape(-1, 3)
    # One stain: every pixel's optical density points the way of the one IHC input uses.
    ihc_od = _od(haematoxylin_like(np.array([[[150, 100, 60]]], dtype=np.uint8))).reshape(3)
    direction = ihc_od / np.linalg.norm(ihc_od)
    stained = od[np.linalg.norm(od, axis=1) > 0.05]
    assert len(stained) > 100
    assert np.all(stained @ direction / np.linalg.norm(stained, axis=1) > 0.999)
    density = np.linalg.norm(od, axis=1).reshape(labels1.shape)
    assert density[labels1 > 0].mean() > 2 * density[labels1 == 0].mean()


def test_probability_zero_is_upstream_recipe_and_out_of_range_is_refused() -> None:
    assert AugmentOptions().haematoxylin_only_probability == 0.0
    with pytest.raises(ValueError, match=r"haematoxylin_only_probability must lie in \[0, 1\], got 1.5"):
        AugmentOptions(haematoxylin_only_probability=1.5)


def test_train_cli_refuses_a_share_outside_zero_to_one(tmp_path: Path) -> None:
    out = tmp_path / "x.pth"
    bad = subprocess.run([sys.executable, "-m", "napari_hoverfast.cli", "train", str(tmp_path), "-o", str(out),
                          "--haematoxylin-only", "2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--haematoxylin-only: must be from 0 to 1, got 2" in bad.stderr
    assert not out.exists()
