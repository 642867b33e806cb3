"""Segmentation metrics: Dice, IoU and HD95 (spacing-aware), as pure numpy/scipy functions.

Conventions (also used by ``medsegdiff evaluate``):

* Masks are boolean arrays of the same shape, 2-D ``(y, x)`` or 3-D ``(z, y, x)``; any
  other dtype is read as ``!= 0``.
* Both masks empty: ``dice = iou = 1`` and ``hd95 = 0`` (perfect agreement on "nothing").
* Exactly one empty: ``dice = iou = 0`` and ``hd95 = inf`` (undefined distance; written as
  ``null`` in JSON reports).
* HD95 is the 95th percentile (numpy's linear interpolation) of the *symmetric* surface
  distances: the distances from every boundary voxel of ``pred`` to the nearest boundary
  voxel of ``truth`` and vice versa, pooled (the MedPy definition). A boundary voxel is a
  foreground voxel with at least one face-connected background neighbour (voxels on the
  array edge count as boundary). Distances are Euclidean in millimetres, using ``spacing``
  (one value per axis, in array order) so anisotropic voxels are measured correctly.
* Means over labels skip non-finite values (an ``inf`` HD95 does not poison the mean); a
  mean over nothing is ``nan`` (``null`` in JSON).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from napari_medsegdiff.errors import InputError

METRIC_KEYS: tuple[str, ...] = ("dice", "iou", "hd95_mm")


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return both masks as boolean arrays after checking their shapes agree."""
    p = np.asarray(pred)
    t = np.asarray(truth)
    if p.shape != t.shape:
        raise InputError(f"pred/truth: shapes differ, {p.shape} vs {t.shape}")
    if p.ndim == 0:
        raise InputError("pred/truth: masks must have at least one dimension")
    return p.astype(bool, copy=False), t.astype(bool, copy=False)


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Validate ``spacing`` (one positive finite value per axis); default 1 mm per axis."""
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=float)))
    if len(values) != ndim:
        raise InputError(f"spacing: expected {ndim} values (one per axis), got {len(values)}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise InputError(f"spacing: values must be positive and finite, got {values}")
    return values


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient ``2|P∩T| / (|P|+|T|)`` of two masks of equal shape (1.0 if both empty)."""
    p, t = _pair(pred, truth)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union ``|P∩T| / |P∪T|`` of two masks (1.0 if both empty)."""
    p, t = _pair(pred, truth)
    union = int(np.logical_or(p, t).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, t).sum()) / union


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask: foreground with a face-connected background neighbour.

    Voxels on the array edge are boundary (the outside counts as background).
    """
    m = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=structure, border_value=0)


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Symmetric surface distances in mm: pred-surface→truth-surface then truth→pred, pooled.

    Both masks must be non-empty. Returns a 1-D float64 array of length
    ``|surface(pred)| + |surface(truth)|``.
    """
    p, t = _pair(pred, truth)
    sampling = _spacing(spacing, p.ndim)
    if not p.any() or not t.any():
        raise InputError("pred/truth: surface distances need two non-empty masks")
    sp, st = surface(p), surface(t)
    to_truth = ndimage.distance_transform_edt(~st, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=sampling)
    return np.concatenate([to_truth[sp], to_pred[st]])


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (0 if both empty, inf if one is).

    ``spacing``: voxel size per axis in array order (e.g. ``(dz, dy, dx)``); default 1.
    """
    p, t = _pair(pred, truth)
    _spacing(spacing, p.ndim)
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return 0.0
    if has_p != has_t:
        return math.inf
    return float(np.percentile(surface_distances(p, t, spacing), 95))


def binary_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """``{"dice", "iou", "hd95_mm"}`` for one pair of boolean masks."""
    return {
        "dice": dice(pred, truth),
        "iou": iou(pred, truth),
        "hd95_mm": hd95(pred, truth, spacing),
    }


def present_labels(*label_maps: np.ndarray) -> list[int]:
    """Sorted nonzero label values present in any of the integer label maps."""
    found: set[int] = set()
    for labels in label_maps:
        found.update(int(v) for v in np.unique(np.asarray(labels)))
    found.discard(0)
    return sorted(found)


def label_metrics(
    pred_labels: np.ndarray,
    truth_labels: np.ndarray,
    spacing: Sequence[float] | None = None,
    labels: Iterable[int] | None = None,
) -> dict[int, dict[str, float]]:
    """Per-label metrics of two integer label maps of equal shape.

    ``labels``: which label values to score; default every nonzero label present in either
    map. Returns ``{label: {"dice": .., "iou": .., "hd95_mm": ..}}`` (conventions above, so a
    label missing from one map scores 0 / 0 / inf).
    """
    pred_labels = np.asarray(pred_labels)
    truth_labels = np.asarray(truth_labels)
    if pred_labels.shape != truth_labels.shape:
        raise InputError(f"pred/truth: shapes differ, {pred_labels.shape} vs {truth_labels.shape}")
    _spacing(spacing, pred_labels.ndim)
    chosen = present_labels(pred_labels, truth_labels) if labels is None else list(labels)
    out: dict[int, dict[str, float]] = {}
    for label in chosen:
        label = int(label)
        out[label] = binary_metrics(pred_labels == label, truth_labels == label, spacing)
    return out


def finite_mean(values: Iterable[float]) -> float:
    """Mean of the finite values (nan if there are none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def mean_metrics(per_label: dict[int, dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over labels, skipping non-finite values."""
    return {key: finite_mean(m[key] for m in per_label.values()) for key in METRIC_KEYS}


def summarize(
    pred_labels: np.ndarray,
    truth_labels: np.ndarray,
    spacing: Sequence[float] | None = None,
    labels: Iterable[int] | None = None,
) -> dict[str, dict]:
    """Per-label metrics plus their mean: ``{"labels": {label: {...}}, "mean": {...}}``.

    The mean skips non-finite values (e.g. an ``inf`` HD95 from a missed label); with no
    labels to score the means are ``nan``.
    """
    per_label = label_metrics(pred_labels, truth_labels, spacing, labels)
    return {"labels": per_label, "mean": mean_metrics(per_label)}


def json_number(value: float) -> float | None:
    """A float fit for JSON: ``None`` for inf / nan."""
    value = float(value)
    return value if math.isfinite(value) else None
