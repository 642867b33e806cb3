"""Fuse M diffusion samples ("members") of a mask into one label map plus uncertainty.

Shapes: ``M`` members, ``K`` mask channels (``K == 1`` binary foreground; ``K > 1`` one-hot
classes *including* background, class index = label value), then spatial axes, usually
``(H, W)`` (any number of spatial axes works).

Fusion methods (:data:`FUSIONS`):

* ``mean``  -- mean member probability; ``> threshold`` (K=1) or argmax (K>1).
* ``vote``  -- majority of the members' hard masks: foreground where *more than half* of
  the members say so (K=1), else the most voted class, ties to the lower label (K>1).
* ``staple`` -- STAPLE (Warfield, Zou & Wells, IEEE TMI 2004): EM over the members' hard
  masks estimating each member's sensitivity ``p`` and specificity ``q`` and the
  probability ``W`` of the true segmentation; ``W > threshold`` (K=1). For K>1, binary
  STAPLE per class (one vs rest), then argmax of the per-class ``W``.

Uncertainty is always returned: ``variance`` is the across-member variance of the member
probabilities (K=1: of the foreground probability; K>1: summed over classes) -- zero where
all members agree exactly. ``entropy`` (nats) is the entropy of the mean distribution:
binary entropy of the mean foreground probability for K=1, the categorical entropy of the
mean class distribution for K>1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_medsegdiff.config import FUSIONS
from napari_medsegdiff.errors import InputError


@dataclass
class Fused:
    """Result of fusing M members.

    mask: ``[*S]`` uint8 labels (0 background). probability: ``[K, *S]`` float32 (K=1: fused
    foreground probability; K>1: class probabilities summing to 1) -- the mean probability
    for ``mean``, vote fractions for ``vote``, STAPLE's ``W`` for ``staple``.
    variance, entropy: ``[*S]`` float32. sensitivity / specificity: STAPLE's per-member
    estimates ``[K, M]`` (K>1: one row per class), ``None`` for other methods.
    """

    mask: np.ndarray
    probability: np.ndarray
    variance: np.ndarray
    entropy: np.ndarray | None
    method: str = "mean"
    sensitivity: np.ndarray | None = None
    specificity: np.ndarray | None = None


def _check_members(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 3:
        raise InputError(f"{name}: expected [members, channels, H, W], got shape {x.shape}")
    if x.shape[0] < 1:
        raise InputError(f"{name}: need at least one ensemble member, got 0")
    if x.shape[1] < 1:
        raise InputError(f"{name}: need at least one mask channel, got 0")
    return x


def member_probabilities(x0: np.ndarray) -> np.ndarray:
    """Map sampled masks ``x0 [M, K, H, W]`` in [-1, 1] to probabilities ``[M, K, H, W]``.

    ``(x0 + 1) / 2`` clipped to [0, 1] (NaN -> 0); for K>1 renormalised to sum to 1 over
    the class axis, uniform where every class is 0. Returns float32.
    """
    x0 = _check_members(x0, "x0")
    p = np.clip((x0.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)
    p = np.nan_to_num(p, nan=0.0)
    if p.shape[1] > 1:
        total = p.sum(axis=1, keepdims=True)
        uniform = np.float32(1.0 / p.shape[1])
        p = np.where(total > 0, p / np.where(total > 0, total, 1.0), uniform)
    return p.astype(np.float32, copy=False)


_EPS = 1e-12


def _staple_e_step(dp: np.ndarray, p: np.ndarray, q: np.ndarray, f: float) -> np.ndarray:
    """Posterior foreground probability ``W [U]`` for decision patterns ``dp [M, U]``.

    ``log(a / b) = log(f/(1-f)) + Σ_j [D_j log(p_j/(1-q_j)) + (1-D_j) log((1-p_j)/q_j)]``,
    evaluated as one mat-vec and turned into ``a / (a + b)`` by a logistic.
    """
    lp, l1p = np.log(np.maximum(p, _EPS)), np.log(np.maximum(1.0 - p, _EPS))
    lq, l1q = np.log(np.maximum(q, _EPS)), np.log(np.maximum(1.0 - q, _EPS))
    const = np.log(f) - np.log(1.0 - f) + float((l1p - lq).sum())
    logit = const + (lp - l1q - l1p + lq) @ dp
    return 1.0 / (1.0 + np.exp(-np.clip(logit, -700.0, 700.0)))


def staple(
    decisions: np.ndarray,
    max_iter: int = 100,
    tol: float = 1e-6,
    prior: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary STAPLE by expectation-maximisation.

    decisions: ``[M, *S]`` bool, the M raters' masks. prior: the prior probability of
    foreground (default: the mean of all decisions, the global foreground fraction, as in
    ITK/SimpleITK). Starts from ``p = q = 0.99999`` (like ITK) and alternates

    * E-step: ``W = f·Πp^D(1-p)^(1-D) / (f·Πp^D(1-p)^(1-D) + (1-f)·Πq^(1-D)(1-q)^D)``
    * M-step: ``p_j = ΣW·D_j / ΣW``, ``q_j = Σ(1-W)(1-D_j) / Σ(1-W)``

    until the largest change of any ``p_j`` or ``q_j`` is ``<= tol`` or ``max_iter``.
    Returns ``(W [*S] float64, p [M], q [M])``. With a prior of 0 or 1 (e.g. every
    decision is background) ``W`` is that constant and ``p = q = 1`` by convention.
    """
    d = np.asarray(decisions)
    if d.ndim < 2 or d.shape[0] < 1:
        raise InputError(f"decisions: expected [raters, ...] with >= 1 rater, got {d.shape}")
    if max_iter < 1:
        raise InputError(f"max_iter: must be >= 1, got {max_iter}")
    m = d.shape[0]
    spatial = d.shape[1:]
    flat = d.reshape(m, -1).astype(bool)
    f = float(flat.mean()) if prior is None else float(prior)
    if not 0.0 <= f <= 1.0:
        raise InputError(f"prior: must be in [0, 1], got {prior}")
    if f in (0.0, 1.0):  # nothing to estimate: every voxel is (a priori) that value
        return np.full(spatial, f), np.ones(m), np.ones(m)

    # Only the distinct decision patterns matter: group voxels by their column of votes.
    if m <= 62:
        keys = np.zeros(flat.shape[1], dtype=np.int64)
        for j in range(m):
            keys |= flat[j].astype(np.int64) << j
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        dp = flat[:, first].astype(np.float64)  # [M, U]
    else:
        patterns, inverse = np.unique(flat.T, axis=0, return_inverse=True)
        dp = patterns.T.astype(np.float64)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, minlength=dp.shape[1]).astype(np.float64)
    p = np.full(m, 0.99999)
    q = np.full(m, 0.99999)
    total = float(counts.sum())
    w = _staple_e_step(dp, p, q, f)
    for _ in range(int(max_iter)):
        cw = counts * w  # [U] expected true-foreground voxels per pattern
        sw = float(cw.sum())
        new_p = (dp @ cw) / max(sw, _EPS)
        new_q = ((total - sw) - dp @ (counts - cw)) / max(total - sw, _EPS)
        change = max(np.abs(new_p - p).max(), np.abs(new_q - q).max())
        p, q = new_p, new_q
        w = _staple_e_step(dp, p, q, f)
        if change <= tol:
            break
    return w[inverse].reshape(spatial), p, q


def _entropy(mean: np.ndarray) -> np.ndarray:
    """Entropy in nats of the mean distribution ``[K, *S]`` (K=1: binary entropy)."""
    p = mean.astype(np.float64)
    if p.shape[0] == 1:
        p = np.concatenate([p, 1.0 - p], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=0).astype(np.float32)


def _normalise(w: np.ndarray) -> np.ndarray:
    """Normalise ``[K, *S]`` over K to sum 1 (uniform where all zero)."""
    total = w.sum(axis=0, keepdims=True)
    return np.where(total > 0, w / np.where(total > 0, total, 1.0), 1.0 / w.shape[0])


def fuse(probs: np.ndarray, method: str = "mean", threshold: float = 0.5) -> Fused:
    """Fuse member probabilities ``probs [M, K, H, W]`` (in [0, 1]) into a :class:`Fused`.

    threshold: K=1 only -- members' hard masks are ``prob > threshold`` (``vote``,
    ``staple``) and the fused mask is ``mean > threshold`` / ``W > threshold``.
    """
    if method not in FUSIONS:
        raise InputError(
            f"fusion: unknown fusion {method!r}; choose mean, vote, staple", argument="fusion"
        )
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"threshold: must be in [0, 1], got {threshold}")
    probs = _check_members(probs, "probs").astype(np.float32, copy=False)
    m, k = probs.shape[:2]
    mean = probs.mean(axis=0)  # [K, *S]
    if k == 1:
        variance = probs[:, 0].var(axis=0)
    else:
        variance = probs.var(axis=0).sum(axis=0)
    variance = variance.astype(np.float32)
    entropy = _entropy(mean)
    sens = spec = None

    if k == 1:
        hard = probs[:, 0] > threshold  # [M, *S]
        if method == "mean":
            probability = mean
            mask = mean[0] > threshold
        elif method == "vote":
            probability = hard.mean(axis=0)[None]
            mask = 2 * hard.sum(axis=0) > m
        else:
            w, p, q = staple(hard)
            probability = w[None]
            mask = w > threshold
            sens, spec = p[None], q[None]
    else:
        labels = probs.argmax(axis=1)  # [M, *S]
        votes = np.stack([(labels == c).sum(axis=0) for c in range(k)])  # [K, *S]
        if method == "mean":
            probability = mean
        elif method == "vote":
            probability = votes / float(m)
        else:
            results = [staple(labels == c) for c in range(k)]
            w = np.stack([r[0] for r in results])
            sens = np.stack([r[1] for r in results])
            spec = np.stack([r[2] for r in results])
            probability = _normalise(w)
        # argmax picks the first maximum: ties go to the lower label.
        mask = (votes if method == "vote" else probability).argmax(axis=0)

    return Fused(
        mask=np.asarray(mask).astype(np.uint8),
        probability=np.asarray(probability, dtype=np.float32),
        variance=variance,
        entropy=entropy,
        method=method,
        sensitivity=sens,
        specificity=spec,
    )
