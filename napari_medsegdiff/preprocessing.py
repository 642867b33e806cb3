"""Intensity normalisation per volume and resizing of slices to the model size and back.

* :func:`normalize_intensity` maps a volume ``(z, y, x)`` or ``(z, y, x, c)`` to float32 in
  [-1, 1]: robust percentiles (``method="percentile"``) or a CT window (``method="ct"``).
* :func:`square_canvas` places an ``(h, w)`` slice in the model's square input
  (:class:`Canvas`: aspect kept, centred, padded), the same in training and segmentation.
* :func:`with_context` stacks each slice with its neighbours as channels (2.5-D models).
* :func:`foreground_slices` finds the slices that hold tissue (the rest can be skipped).
* :func:`resize_slices` / :func:`resize_probabilities` resize ``[N, C, H, W]`` stacks
  bilinearly (numpy arrays or torch tensors; the type comes back unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from napari_medsegdiff.errors import InputError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

NORMALIZATIONS: tuple[str, ...] = ("percentile", "ct")
DEFAULT_CT_WINDOW: tuple[float, float] = (40.0, 400.0)  # soft-tissue window (HU)


def _scale(channel: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly to [-1, 1] and clip; non-finite values become -1."""
    out = np.empty(channel.shape, np.float32)
    np.subtract(channel, lo, out=out, casting="unsafe")
    out *= np.float32(2.0 / (hi - lo))
    out -= np.float32(1.0)
    out[~np.isfinite(channel)] = -1.0
    np.clip(out, -1.0, 1.0, out=out)
    return out


#: Above this many voxels, intensity percentiles are estimated from a slice subsample.
PERCENTILE_SAMPLE = 16_000_000


def _percentile_range(
    channel: np.ndarray, low: float, high: float, mask: np.ndarray | None
) -> tuple[float, float] | None:
    """Robust (lo, hi): percentiles of the finite voxels in ``mask`` (default: nonzero).

    Falls back to all finite voxels when the selection is empty or constant; ``None`` if
    the volume has no finite voxels or is constant.
    """
    if channel.ndim == 3 and channel.size > PERCENTILE_SAMPLE:
        # Large volumes: percentiles from every k-th slice keep memory near the volume size.
        step = int(np.ceil(channel.size / PERCENTILE_SAMPLE))
        channel = channel[::step]
        mask = mask[::step] if mask is not None else None
    finite = np.isfinite(channel)
    chosen = finite & (mask if mask is not None else channel != 0)
    for selection in (chosen, finite):
        values = channel[selection]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, [low, high])
        if hi > lo:
            return float(lo), float(hi)
    return None


def normalize_intensity(
    volume: np.ndarray,
    method: str = "percentile",
    low: float = 0.5,
    high: float = 99.5,
    window: tuple[float, float] | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Normalise a volume to float32 in [-1, 1], per channel.

    volume: ``(z, y, x)`` (or any 2-D/3-D array: one channel) or ``(z, y, x, c)`` (channels
    last, each normalised on its own).
    method: ``"percentile"`` -- the ``low``/``high`` percentiles of the finite voxels inside
    ``mask`` (``(z, y, x)`` bool; default the nonzero voxels, so a zero background does
    not count) map to -1/1; ``"ct"`` -- ``window = (center, width)`` in HU (default
    (40, 400)) maps ``center ± width/2`` to -1/1. Values outside are clipped; NaN/Inf become
    -1 (the low value); a constant volume (or channel) becomes all zeros.
    """
    arr = np.asarray(volume)
    if arr.ndim not in (2, 3, 4):
        raise InputError(f"volume: expected (z, y, x) or (z, y, x, c), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"volume: expected numeric intensities, got dtype {arr.dtype}")
    if method not in NORMALIZATIONS:
        raise InputError(
            f"normalization: unknown method {method!r}; choose {', '.join(NORMALIZATIONS)}"
        )
    if not 0.0 <= low < high <= 100.0:
        raise InputError(f"low/high: need 0 <= low < high <= 100, got {low}, {high}")
    spatial = arr.shape[:3] if arr.ndim == 4 else arr.shape
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != spatial:
            raise InputError(f"mask: shape {mask.shape} does not match the volume {spatial}")
    window_range: tuple[float, float] | None = None
    if method == "ct":
        try:
            center, width = (float(v) for v in (DEFAULT_CT_WINDOW if window is None else window))
        except (TypeError, ValueError):
            raise InputError(f"window: need (center, width), got {window!r}") from None
        if not (np.isfinite(center) and np.isfinite(width) and width > 0):
            raise InputError(f"window: need (center, width) with width > 0, got {window}")
        window_range = (center - width / 2.0, center + width / 2.0)

    channels = [arr[..., i] for i in range(arr.shape[-1])] if arr.ndim == 4 else [arr]
    out = []
    for channel in channels:
        if np.issubdtype(channel.dtype, np.integer) or channel.dtype == bool:
            channel = channel.astype(np.float32)
        if method == "percentile":
            lo_hi = _percentile_range(channel, low, high, mask)
        else:
            lo_hi = window_range
        if lo_hi is None:
            out.append(np.zeros(channel.shape, np.float32))
        else:
            out.append(_scale(channel, *lo_hi))
    return np.stack(out, axis=-1) if arr.ndim == 4 else out[0]


@dataclass(frozen=True)
class Canvas:
    """Where a slice sits in the model's square input, as in training.

    The slice is resized keeping its aspect ratio (longer side = ``size``) to
    ``(height, width)`` and centred in a ``size x size`` square; the rest is padding at the
    normalised minimum (-1). Training (:func:`napari_medsegdiff.data.fit_to_square`) and
    segmentation place slices the same way.
    """

    size: int
    height: int
    width: int

    @property
    def top(self) -> int:
        return (self.size - self.height) // 2

    @property
    def left(self) -> int:
        return (self.size - self.width) // 2

    @property
    def shape(self) -> tuple[int, int]:
        return self.size, self.size

    def place(self, content: torch.Tensor, fill: float = -1.0) -> torch.Tensor:
        """``[N, C, height, width]`` -> ``[N, C, size, size]``, padded with ``fill``."""
        out = content.new_full((*content.shape[:2], self.size, self.size), fill)
        out[..., self.top : self.top + self.height, self.left : self.left + self.width] = content
        return out

    def crop(self, x: ArrayT) -> ArrayT:
        """``[..., size, size]`` -> ``[..., height, width]`` (the slice's own pixels)."""
        return x[..., self.top : self.top + self.height, self.left : self.left + self.width]


def square_canvas(h: int, w: int, image_size: int) -> Canvas:
    """The :class:`Canvas` of an ``(h, w)`` slice for a model of ``image_size``.

    E.g. ``(185, 149), 128 -> 128 x 103 centred in 128 x 128``.
    """
    for name, value in (("h", h), ("w", w), ("image_size", image_size)):
        if int(value) != value or value < 1:
            raise InputError(f"{name}: must be a positive integer, got {value}")
    scale = image_size / max(h, w)
    return Canvas(image_size, max(1, round(h * scale)), max(1, round(w * scale)))


def _check_stack(x: np.ndarray | torch.Tensor, name: str, size: Sequence[int]) -> None:
    if x.ndim != 4:
        raise InputError(f"{name}: expected [N, C, H, W], got shape {tuple(x.shape)}")
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise InputError(f"size: expected two positive integers (H, W), got {tuple(size)}")


def _interpolate(x: ArrayT, size: Sequence[int]) -> ArrayT:
    """Bilinear resize of ``[N, C, H, W]`` to ``size``, antialiased when shrinking."""
    is_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if is_numpy else x.float()
    target = (int(size[0]), int(size[1]))
    if tuple(t.shape[-2:]) == target:
        t = t.clone()
    else:
        shrink = target[0] < t.shape[-2] or target[1] < t.shape[-1]
        t = F.interpolate(t, size=target, mode="bilinear", align_corners=False, antialias=shrink)
    return t.numpy() if is_numpy else t


def resize_slices(x: ArrayT, size: Sequence[int]) -> ArrayT:
    """Resize image slices ``[N, C, H, W]`` to ``[N, C, *size]`` (float32, same type/device)."""
    _check_stack(x, "x", size)
    return _interpolate(x, size)


def resize_probabilities(p: ArrayT, size: Sequence[int]) -> ArrayT:
    """Resize probabilities ``[N, K, H, W]`` bilinearly to ``size``; clipped to [0, 1] and,
    for K>1, renormalised to sum to 1 over K. Threshold / argmax afterwards."""
    _check_stack(p, "p", size)
    out = _interpolate(p, size)
    if isinstance(out, np.ndarray):
        np.clip(out, 0.0, 1.0, out=out)
        if out.shape[1] > 1:
            total = out.sum(axis=1, keepdims=True)
            out = np.where(total > 0, out / np.maximum(total, 1e-12), 1.0 / out.shape[1])
            out = out.astype(np.float32, copy=False)
        return out
    out = out.clamp_(0.0, 1.0)
    if out.shape[1] > 1:
        total = out.sum(dim=1, keepdim=True)
        out = torch.where(total > 0, out / total.clamp_min(1e-12), 1.0 / out.shape[1])
    return out


def context_indices(index: int, depth: int, context: int) -> list[int]:
    """Slice indices ``index - k .. index + k`` (k = ``context``), mirrored at the ends of a
    volume of ``depth`` slices (``-1 -> 1``, ``depth -> depth - 2``); a one-slice volume
    repeats its slice."""
    out = []
    for offset in range(-context, context + 1):
        i = index + offset
        if depth == 1:
            i = 0
        else:
            period = 2 * (depth - 1)
            i = i % period
            i = period - i if i >= depth else i
        out.append(i)
    return out


def with_context(images: ArrayT, indices: Sequence[int], context: int) -> ArrayT:
    """Model input for 2.5-D models: images (z, C, H, W) -> (n, C * (2k + 1), H, W).

    Row ``j`` holds slices ``indices[j] - k .. indices[j] + k`` (mirrored at the volume's
    ends), each with its C channels, in that order; ``context = 0`` is ``images[indices]``.
    """
    if images.ndim != 4:
        raise InputError(f"images: expected (z, C, H, W), got shape {tuple(images.shape)}")
    depth = int(images.shape[0])
    rows = [i for index in indices for i in context_indices(int(index), depth, context)]
    picked = images[list(rows)]
    n, c, h, w = len(indices), int(images.shape[1]), int(images.shape[2]), int(images.shape[3])
    return picked.reshape(n, c * (2 * context + 1), h, w)


def foreground_slices(
    image: np.ndarray, min_fraction: float = 0.02, *, normalized: bool = False
) -> list[int]:
    """Slices (axis 0) where at least ``min_fraction`` of pixels are above the background
    level: 10 % of the way from the volume's 1st to its 99th intensity percentile, or from
    -1 to 1 for ``normalized`` input (output of :func:`normalize_intensity`).

    image (z, y, x[, c]); channels are averaged.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 4:
        arr = arr.mean(-1)
    if normalized:
        lo, hi = -1.0, 1.0
    else:
        finite = arr[np.isfinite(arr)]
        if not finite.size:
            return []
        lo, hi = np.percentile(finite[:: max(1, finite.size // 1_000_000)], [1, 99])
    fg = np.nan_to_num(arr, nan=lo) > lo + 0.1 * (hi - lo)
    fraction = fg.reshape(fg.shape[0], -1).mean(1)
    return [int(z) for z in np.flatnonzero(fraction >= min_fraction)]
