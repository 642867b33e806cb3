"""Rank slices for review by ensemble uncertainty (pure numpy/scipy; no Qt here)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage


def boundary_region(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of a (H, W) label slice near a label edge: dilate(fg) XOR erode(fg).

    Multi-class edges count too (a pixel whose 3x3 neighbourhood holds another label).
    Returns a (H, W) bool array (all False for an empty or uniform slice).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected a (H, W) slice, got shape {mask.shape}")
    footprint = ndimage.generate_binary_structure(2, 1)
    lo = ndimage.grey_erosion(mask, footprint=footprint, mode="nearest")
    hi = ndimage.grey_dilation(mask, footprint=footprint, mode="nearest")
    edge = lo != hi
    if width > 1:
        edge = ndimage.binary_dilation(edge, footprint, iterations=width - 1)
    return edge


def slice_uncertainty(variance: np.ndarray, mask: np.ndarray) -> float:
    """Mean variance over the mask boundary of one (H, W) slice (whole slice if none)."""
    variance = np.asarray(variance, dtype=np.float64)
    if variance.shape != np.shape(mask):
        raise ValueError(f"variance {variance.shape} and mask {np.shape(mask)} differ in shape")
    edge = boundary_region(mask)
    region = variance[edge] if edge.any() else variance
    return float(region.mean()) if region.size else 0.0


def rank_slices_by_uncertainty(
    variance: np.ndarray, mask: np.ndarray, slices: Iterable[int] | None = None
) -> list[tuple[int, float]]:
    """Rank slices of (z, y, x) ``variance``/``mask``, most uncertain first.

    The score is the mean variance in the boundary region of the mask (dilation XOR
    erosion), or over the whole slice when the mask has no boundary there. ``slices``
    defaults to all; ties keep slice order. Returns ``[(slice, score), ...]``.
    """
    variance = np.asarray(variance)
    mask = np.asarray(mask)
    if variance.ndim != 3 or variance.shape != mask.shape:
        raise ValueError(
            f"variance {variance.shape} and mask {mask.shape} must be equal (z, y, x) shapes"
        )
    indices = range(variance.shape[0]) if slices is None else sorted({int(s) for s in slices})
    scores = []
    for z in indices:
        if not 0 <= z < variance.shape[0]:
            raise ValueError(f"slices: {z} outside 0..{variance.shape[0] - 1}")
        scores.append((z, slice_uncertainty(variance[z], mask[z])))
    return sorted(scores, key=lambda item: -item[1])


# A pixel is "uncertain" when the samples disagree about its class: with confident samples,
# one of five voting otherwise gives a variance of 0.16 (binary) or 0.32 (summed over two
# classes); soft probabilities that agree stay well below.
UNCERTAIN_VARIANCE = 0.15


def boundary_uncertain_fraction(
    variance: np.ndarray, mask: np.ndarray, threshold: float = UNCERTAIN_VARIANCE
) -> float:
    """Share (0..1) of a slice's mask boundary pixels whose variance is ``>= threshold``."""
    edge = boundary_region(mask)
    if not edge.any():
        return 0.0
    return float((np.asarray(variance)[edge] >= threshold).mean())


def display_limits(
    variance: np.ndarray,
    mask: np.ndarray,
    slices: Iterable[int] | None = None,
    top_only: bool = False,
) -> tuple[float, float]:
    """Contrast limits that separate "sure" from "unsure" voxels of a (z, y, x) variance.

    Taken from the boundary region of the segmented ``slices`` (where uncertainty lives):
    low = median, high = 99th percentile; ``top_only`` raises low to the 90th percentile,
    so only the most uncertain tenth is drawn. Falls back to the nonzero voxels, then to
    ``(0, 1e-3)`` for an all-zero map.
    """
    variance = np.asarray(variance)
    mask = np.asarray(mask)
    indices = range(variance.shape[0]) if slices is None else sorted({int(s) for s in slices})
    values = [boundary_values(variance[z], mask[z]) for z in indices if 0 <= z < len(variance)]
    region = np.concatenate(values) if values else np.empty(0)
    if not region.size or not region.any():
        region = variance[variance > 0]
    return limits_from_values(region, top_only)


def boundary_values(variance: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The variance of one (H, W) slice on its mask boundary (1-D float array)."""
    return np.asarray(variance)[boundary_region(mask)].ravel()


def limits_from_values(values: np.ndarray, top_only: bool = False) -> tuple[float, float]:
    """(median or 90th percentile, 99th percentile) of ``values``; ``(0, 1e-3)`` if none."""
    values = np.asarray(values)
    if not values.size or not values.any():
        return 0.0, 1e-3
    lo = float(np.percentile(values, 90 if top_only else 50))
    hi = float(np.percentile(values, 99))
    if hi <= lo:
        hi = lo + max(1e-6, abs(lo) * 1e-3)
    return lo, hi


def review_volume(
    variance: np.ndarray,
    mask: np.ndarray,
    slices: Iterable[int],
    threshold: float = UNCERTAIN_VARIANCE,
) -> tuple[list[tuple[int, float]], dict[int, float], np.ndarray]:
    """One pass over ``slices`` of (z, y, x) arrays: the ranking (as
    :func:`rank_slices_by_uncertainty`), the uncertain share of each slice's boundary, and
    all boundary variance values (for :func:`limits_from_values`)."""
    scores, shares, values = [], {}, []
    for z in sorted({int(s) for s in slices}):
        if not 0 <= z < variance.shape[0]:
            continue
        var = np.asarray(variance[z], dtype=np.float64)
        edge = boundary_region(np.asarray(mask[z]))
        region = var[edge] if edge.any() else var
        scores.append((z, float(region.mean()) if region.size else 0.0))
        shares[z] = float((var[edge] >= threshold).mean()) if edge.any() else 0.0
        values.append(np.asarray(variance[z])[edge].ravel())
    ranking = sorted(scores, key=lambda item: -item[1])
    return ranking, shares, np.concatenate(values) if values else np.empty(0)
