"""Auxiliary losses: the V2 anchor loss on the condition model's segmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from napari_medsegdiff.errors import InputError


def soft_dice_loss(prob: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """1 - soft Dice, averaged over batch and channels: prob, target [B, K, H, W] -> []."""
    dims = (2, 3)
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def anchor_loss(anchor_logits: Tensor, target: Tensor) -> Tensor:
    """Dice + cross-entropy of the condition model's anchor logits (MedSegDiff-V2).

    anchor_logits [B, K, H, W]; target [B, H, W] long class indices (0 = background).
    K = 1: BCE-with-logits + soft Dice of the foreground; K > 1: CE + soft Dice over the
    foreground classes. Returns a scalar.
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
        bce = F.binary_cross_entropy_with_logits(logits, fg)
        return bce + soft_dice_loss(torch.sigmoid(logits), fg)
    ce = F.cross_entropy(logits, target)
    onehot = F.one_hot(target.clamp(0, k - 1), k).permute(0, 3, 1, 2).float()
    prob = torch.softmax(logits, dim=1)
    return ce + soft_dice_loss(prob[:, 1:], onehot[:, 1:])
