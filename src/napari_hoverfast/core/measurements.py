"""Per-nucleus measurements as QuPath users know them: shape from the outline, stain from the pixels.

Names follow QuPath's cell detection ("Nucleus: Area µm^2", "Nucleus: Hematoxylin OD mean", …) so
the CSV, the GeoJSON measurements and the napari features read like a QuPath export. Definitions
(``docs/MEASUREMENTS.md`` has them all):

- shape, from the nucleus polygon (level-0 pixels, the outline exported in the GeoJSON): area and
  perimeter; circularity ``min(4πA/P², 1)``; solidity ``A / convex hull area``; max and min caliper
  (largest distance between two outline points; smallest width between parallel tangents);
  major/minor axis and eccentricity of the ellipse with the polygon's second moments
  (``4√λ₁``, ``4√λ₂``, ``√(1 − λ₂/λ₁)``).
- stain, from the tile's RGB under the nucleus's pixels (its label in the working resolution):
  optical density ``max(0, −log10(max(I, 1)/255))`` per channel, as QuPath, unmixed with
  scikit-image's stain vectors (Ruifrok & Johnston H&E; H-DAB for ``ihc_dab``) or vectors
  estimated from the slide (``stain_vectors.py``, Macenko's method); mean, std dev
  (population), min and max per nucleus. Unmixed values are not clipped (QuPath does not either).

Everything is vectorised over a tile's nuclei: the shape columns with shapely's array functions and
one padded NumPy pass over the convex hulls; the stain columns with one sort of the nucleus pixels
by label and ``ufunc.reduceat`` per statistic (``benchmarks/bench_measurements.py`` times both).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import shapely
from skimage.color import hdx_from_rgb, hed_from_rgb

StainMode = Literal["he", "ihc_dab"]

AREA_UM2 = "Nucleus: Area µm^2"
PERIMETER_UM = "Nucleus: Perimeter µm"
CIRCULARITY = "Nucleus: Circularity"
SOLIDITY = "Nucleus: Solidity"
MAX_CALIPER_UM = "Nucleus: Max caliper µm"
MIN_CALIPER_UM = "Nucleus: Min caliper µm"
MAJOR_AXIS_UM = "Nucleus: Major axis µm"
MINOR_AXIS_UM = "Nucleus: Minor axis µm"
ECCENTRICITY = "Nucleus: Eccentricity"

#: The two stains each mode unmixes, by QuPath's stain names, and the columns of the inverse matrix.
STAINS: dict[str, tuple[str, str]] = {"he": ("Hematoxylin", "Eosin"), "ihc_dab": ("Hematoxylin", "DAB")}
_UNMIX: dict[str, np.ndarray] = {
    "he": np.asarray(hed_from_rgb, dtype=np.float64)[:, :2],  # H, E (the third vector is DAB)
    "ihc_dab": np.asarray(hdx_from_rgb, dtype=np.float64)[:, :2],  # H, DAB (the third is residual)
}
STATISTICS = ("mean", "std dev", "max", "min")

#: Optical density of an 8-bit value against a white of 255, as QuPath's ``makeODLUT(255)``.
OD_LUT = np.maximum(0.0, -np.log10(np.maximum(np.arange(256), 1) / 255.0))


def stain_column(stain_name: str, statistic: str) -> str:
    """``"Nucleus: Hematoxylin OD mean"`` and the like."""
    return f"Nucleus: {stain_name} OD {statistic}"


DAB_OD_MEAN = stain_column("DAB", "mean")


def stain_columns(stain: StainMode) -> list[str]:
    """The stain columns a run with ``stain`` adds, in export order."""
    return [stain_column(name, stat) for name in STAINS[stain] for stat in STATISTICS]


def _check_stain(stain: str) -> None:
    if stain not in _UNMIX:
        raise ValueError(f"Unknown stain {stain!r}: use 'he' or 'ihc_dab'")


# ---- stain ------------------------------------------------------------------------------------


def _unmix_luts(stain: str, unmix: np.ndarray | None = None) -> np.ndarray:
    """(3 channels, 2 stains, 256) float32: the OD of value v in channel c's share of stain s.

    ``unmix`` (3 channels × 2 stains) replaces scikit-image's matrix: vectors estimated from the
    slide (``stain_vectors.py``).
    """
    _check_stain(stain)
    matrix = _UNMIX[stain] if unmix is None else np.asarray(unmix, dtype=np.float64)
    if matrix.shape != (3, 2):
        raise ValueError(f"an unmixing matrix is 3 channels × 2 stains, got shape {matrix.shape}")
    return (OD_LUT[None, None, :] * matrix[:, :, None]).astype(np.float32)


def stain_od(rgb: np.ndarray, stain: StainMode, unmix: np.ndarray | None = None) -> np.ndarray:
    """uint8 …×3 RGB → float32 …×2 stain optical densities (haematoxylin first), unclipped."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB with 3 channels last, got {rgb.dtype} {rgb.shape}")
    luts = _unmix_luts(stain, unmix)
    out = np.empty((*rgb.shape[:-1], 2), dtype=np.float32)
    for s in range(2):
        out[..., s] = luts[0, s][rgb[..., 0]] + luts[1, s][rgb[..., 1]] + luts[2, s][rgb[..., 2]]
    return out


def stain_statistics(rgb: np.ndarray, labels: np.ndarray, ids: np.ndarray, stain: StainMode,
                     unmix: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per nucleus ``ids`` (labels of ``labels``), the OD mean/std dev/max/min of both stains
    (unmixed with ``unmix``, 3×2, when given; scikit-image's vectors otherwise).

    ``rgb`` (H×W×3 uint8) and ``labels`` (H×W) cover the same pixels. Only nucleus pixels are
    unmixed: they are gathered once in label order, then every statistic is one ``reduceat``.
    A label absent from ``labels`` gets NaN.
    """
    labels = np.asarray(labels)
    ids = np.asarray(ids, dtype=np.int64)
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"rgb is {rgb.shape[:2]} but labels are {labels.shape}")
    _check_stain(stain)
    names = STAINS[stain]
    out = {stain_column(n, s): np.full(len(ids), np.nan) for n in names for s in STATISTICS}
    if not len(ids):
        return out
    flat = labels.ravel()
    row_of = np.full(int(max(flat.max(initial=0), ids.max())) + 1, -1, dtype=np.int64)
    row_of[ids] = np.arange(len(ids))
    pos = np.flatnonzero(flat)
    rows = row_of[flat[pos]]
    pos, rows = pos[rows >= 0], rows[rows >= 0]
    if not len(pos):
        return out
    # numpy's stable sort is a radix sort for 16-bit keys: a tile's few thousand nuclei fit
    key = rows.astype(np.uint16) if len(ids) < 65536 else rows
    order = np.argsort(key, kind="stable")
    pixels = np.take(rgb.reshape(-1, 3), pos[order], axis=0)
    counts = np.bincount(rows, minlength=len(ids))
    present = counts > 0
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[present]
    n = counts[present].astype(np.float64)
    luts = _unmix_luts(stain, unmix)
    channels = [np.ascontiguousarray(pixels[:, c]) for c in range(3)]
    for s, name in enumerate(names):
        od = luts[0, s][channels[0]] + luts[1, s][channels[1]] + luts[2, s][channels[2]]
        od64 = od.astype(np.float64)
        total = np.add.reduceat(od64, starts)
        squares = np.add.reduceat(od64 * od64, starts)
        mean = total / n
        out[stain_column(name, "mean")][present] = mean
        out[stain_column(name, "std dev")][present] = np.sqrt(np.maximum(squares / n - mean * mean, 0.0))
        out[stain_column(name, "max")][present] = np.maximum.reduceat(od, starts)
        out[stain_column(name, "min")][present] = np.minimum.reduceat(od, starts)
    return out


# ---- shape ------------------------------------------------------------------------------------


_PAIRS_PER_CHUNK = 1 << 20


def _padded(coords: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Ragged (point, owner) lists → n×k×2, each row padded with its own first point."""
    counts = np.bincount(owner, minlength=n)
    k = max(int(counts.max(initial=0)), 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(owner)) - starts[owner]
    out = np.zeros((n, k, 2), dtype=np.float64)
    out[counts > 0] = coords[starts[counts > 0]][:, None, :]
    out[owner, slot] = coords
    return out


def _max_calipers(hulls: np.ndarray) -> np.ndarray:
    """The longest distance between two vertices of each convex hull (the max caliper, Feret's).

    Hulls go in chunks so the n×k×k pair arrays stay small (pixel outlines have long hulls);
    padding repeats a vertex, which changes no distance.
    """
    n = len(hulls)
    coords, owner = shapely.get_coordinates(hulls, return_index=True)
    counts = np.bincount(owner, minlength=n)
    k = int(counts.max(initial=1))
    step = max(1, _PAIRS_PER_CHUNK // (k * k))
    if n > step:
        return np.concatenate([_max_calipers(hulls[i : i + step]) for i in range(0, n, step)])
    pts = _padded(coords, owner, n)
    x = pts[..., 0] - pts[:, :1, 0]  # local coordinates: level-0 values are large
    y = pts[..., 1] - pts[:, :1, 1]
    dx = x[:, :, None] - x[:, None, :]
    dy = y[:, :, None] - y[:, None, :]
    out = np.sqrt((dx * dx + dy * dy).max(axis=(1, 2)))
    out[counts == 0] = np.nan
    return out


def _moments(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (λ₁ ≥ λ₂) of each polygon's second central moments of area (Green's theorem)."""
    n = len(geoms)
    oriented = shapely.orient_polygons(geoms)  # exterior counter-clockwise, holes clockwise
    rings, ring_owner = shapely.get_rings(oriented, return_index=True)
    coords, ring_of_point = shapely.get_coordinates(rings, return_index=True)
    owner = ring_owner[ring_of_point]
    origin = np.full((n, 2), np.nan)
    first = np.r_[0, np.flatnonzero(np.diff(owner)) + 1]
    origin[owner[first]] = coords[first]
    xy = coords - origin[owner]
    same = ring_of_point[:-1] == ring_of_point[1:]  # edges stay inside their ring
    x0, y0, x1, y1 = xy[:-1, 0][same], xy[:-1, 1][same], xy[1:, 0][same], xy[1:, 1][same]
    who = owner[:-1][same]
    cross = x0 * y1 - x1 * y0

    def total(values: np.ndarray) -> np.ndarray:
        return np.bincount(who, weights=values, minlength=n)

    a = total(cross) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = total((x0 + x1) * cross) / (6.0 * a)
        cy = total((y0 + y1) * cross) / (6.0 * a)
        sxx = total((x0 * x0 + x0 * x1 + x1 * x1) * cross) / (12.0 * a) - cx * cx
        syy = total((y0 * y0 + y0 * y1 + y1 * y1) * cross) / (12.0 * a) - cy * cy
        sxy = total((x0 * y1 + 2 * x0 * y0 + 2 * x1 * y1 + x1 * y0) * cross) / (24.0 * a) - cx * cy
    half_trace = (sxx + syy) / 2.0
    spread = np.sqrt(np.maximum(((sxx - syy) / 2.0) ** 2 + sxy * sxy, 0.0))
    return half_trace + spread, np.maximum(half_trace - spread, 0.0)


def shape_measurements(polygons: np.ndarray) -> dict[str, np.ndarray]:
    """Shape columns of shapely Polygons (level-0 px), lengths in pixels: the caller scales to µm.

    Keys: ``circularity``, ``solidity``, ``eccentricity`` (unitless) and ``max_caliper``,
    ``min_caliper``, ``major_axis``, ``minor_axis`` (px).
    """
    geoms = np.asarray(polygons, dtype=object)
    n = len(geoms)
    if n == 0:
        return {k: np.zeros(0) for k in ("circularity", "solidity", "eccentricity", "max_caliper", "min_caliper", "major_axis", "minor_axis")}
    area = shapely.area(geoms)
    perimeter = shapely.length(geoms)
    hulls = shapely.convex_hull(geoms)
    hull_area = shapely.area(hulls)
    max_cal = _max_calipers(hulls)
    # GEOS's minimum width: the narrowest strip between parallel lines holding the polygon
    min_cal = shapely.length(shapely.minimum_width(hulls))
    big, small = _moments(geoms)
    with np.errstate(invalid="ignore", divide="ignore"):
        circularity = np.minimum(4.0 * math.pi * area / (perimeter * perimeter), 1.0)
        solidity = area / hull_area
        eccentricity = np.sqrt(np.clip(1.0 - small / big, 0.0, 1.0))
    return {
        "circularity": circularity, "solidity": solidity, "eccentricity": eccentricity,
        "max_caliper": max_cal, "min_caliper": min_cal,
        "major_axis": 4.0 * np.sqrt(big), "minor_axis": 4.0 * np.sqrt(small),
    }
