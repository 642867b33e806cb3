"""Auxiliary losses: the V2 anchor loss on the condition model's segmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from napari_medsegdiff.errors import InputError


def soft_dice_loss(
    prob: Tensor, target: Tensor, eps: float = 1.0, weight: Tensor | None = None
) -> Tensor:
    """1 - soft Dice, averaged over batch and channels: prob, target [B, K, H, W] -> [].

    ``weight`` [B, H, W] (optional) scales each voxel's share (0: the voxel is ignored).
    """
    dims = (2, 3)
    w = 1.0 if weight is None else weight[:, None]
    inter = (prob * target * w).sum(dims)
    denom = (prob * w).sum(dims) + (target * w).sum(dims)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def anchor_loss(anchor_logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Dice + cross-entropy of the condition model's anchor logits (MedSegDiff-V2).

    anchor_logits [B, K, H, W]; target [B, H, W] long class indices (0 = background).
    K = 1: BCE-with-logits + soft Dice of the foreground; K > 1: CE + soft Dice over the
    foreground classes. ``weight`` [B, H, W] (optional): per-voxel weights (0 = ignored).
    Returns a scalar.
    """
    if anchor_logits.ndim != 4 or target.shape != (
        anchor_logits.shape[0],
        *anchor_logits.shape[2:],
    ):
        raise InputError(
            f"anchor_loss: logits [B, K, H, W] and target [B, H, W] must match, got "
            f"{tuple(anchor_logits.shape)} and {tuple(target.shape)}"
        )
    logits = anchor_logits.float()
    k = logits.shape[1]
    target = target.long()
    if k == 1:
        fg = (target > 0).float()[:, None]
        bce = F.binary_cross_entropy_with_logits(logits, fg, reduction="none")[:, 0]
        return _weighted_mean(bce, weight) + soft_dice_loss(
            torch.sigmoid(logits), fg, weight=weight
        )
    ce = F.cross_entropy(logits, target.clamp(0, k - 1), reduction="none")
    onehot = F.one_hot(target.clamp(0, k - 1), k).permute(0, 3, 1, 2).float()
    prob = torch.softmax(logits, dim=1)
    return _weighted_mean(ce, weight) + soft_dice_loss(prob[:, 1:], onehot[:, 1:], weight=weight)


def _weighted_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """Mean of values [B, H, W], weighted per voxel when ``weight`` is given."""
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp_min(1.0)
