"""The training objective: per-sample noise draws and the diffusion loss.

Noise and timesteps are drawn per sample from ``(seed, step, sample index)``
(:func:`napari_medsegdiff.seeds.mix_seed`), so a sample's draw does not depend on the
rank or batch it lands in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_medsegdiff.config import ModelConfig
from napari_medsegdiff.data import SliceSet
from napari_medsegdiff.diffusion.schedule import NoiseSchedule
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.seeds import mix_seed


def sample_noise(
    indices: list[int], step: int, seed: int, shape: tuple[int, ...], num_timesteps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (B,) and noise (B, *shape) on CPU, drawn per sample from (seed, step, index).

    A sample's draw does not depend on which rank holds it nor on the batch it is in, so
    data-parallel training over any number of ranks sees the same noise as one process.
    """
    ts, noises = [], []
    for index in indices:
        g = torch.Generator().manual_seed(mix_seed(seed, step, 0, index))
        ts.append(torch.randint(0, num_timesteps, (1,), generator=g))
        noises.append(torch.randn(shape, generator=g))
    return torch.cat(ts), torch.stack(noises)


def diffusion_loss(
    net: torch.nn.Module,
    schedule: NoiseSchedule,
    images: torch.Tensor,
    labels: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    *,
    mask_channels: int,
    aux_weight: float = 0.0,
    unlabelled_weight: float = 0.0,
) -> torch.Tensor:
    """Mean training loss of a batch for explicit timesteps ``t`` and ``noise``.

    MSE between the network output and the schedule's target (epsilon or v), plus
    ``aux_weight`` x the V2 anchor loss (Dice + CE of the condition model) when > 0.
    Unlabelled voxels (codes >= :data:`UNLABELLED`, see :func:`split_labels`) enter the
    noised mask with their provisional class and the loss with ``unlabelled_weight``
    (0: ignored), so a head with only a brain mask teaches that everything outside is
    background without teaching anything inside.
    """
    from napari_medsegdiff.model import anchor_loss

    classes, weight = split_labels(labels, mask_channels, unlabelled_weight)
    x0 = labels_to_mask(classes, mask_channels)
    x_t = schedule.add_noise(x0, noise, t)
    output = net(x_t, t, images)
    err = (output.prediction.float() - schedule.target(x0, noise, t)) ** 2
    if weight is None:
        loss = err.mean()
    else:
        w = weight[:, None].expand_as(err)
        loss = (err * w).sum() / w.sum().clamp_min(1.0)
    if aux_weight and output.anchor_logits is not None:
        loss = loss + aux_weight * anchor_loss(output.anchor_logits.float(), classes, weight)
    return loss


#: Label codes from UNLABELLED on mark voxels without a label: ``UNLABELLED + c`` carries a
#: provisional class ``c`` (e.g. from intensity thresholds) used only to noise the mask.
UNLABELLED = 1000


def split_labels(
    labels: torch.Tensor, mask_channels: int, unlabelled_weight: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Coded labels (B, H, W) -> classes (B, H, W) and per-voxel loss weights (B, H, W).

    Weights are None when every voxel is labelled (the plain mean applies).
    """
    unlabelled = labels >= UNLABELLED
    if not bool(unlabelled.any()):
        return labels, None
    provisional = labels - UNLABELLED
    if int(provisional[unlabelled].max()) >= max(mask_channels, 2):
        raise InputError(
            f"unlabelled voxel code {int(labels.max())}: provisional class out of range "
            f"for {mask_channels} classes"
        )
    classes = torch.where(unlabelled, provisional, labels)
    weight = torch.where(unlabelled, unlabelled_weight, 1.0).float()
    return classes, weight


def labels_to_mask(labels: torch.Tensor, mask_channels: int) -> torch.Tensor:
    """Class map (B, H, W) -> diffusion target (B, K, H, W) in [-1, 1]."""
    if mask_channels == 1:
        return (labels > 0).float()[:, None] * 2 - 1
    if int(labels.max()) >= mask_channels:
        raise InputError(
            f"labels contain value {int(labels.max())} but the model has {mask_channels} classes"
        )
    return F.one_hot(labels.long(), mask_channels).permute(0, 3, 1, 2).float() * 2 - 1


def has_unused_parameters(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    cfg: ModelConfig,
    data: SliceSet,
    device: torch.device,
) -> bool:
    """Probe one sample: do some trainable parameters get no gradient (DDP must be told)?"""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        images, labels = data.images[:1].to(device), data.labels[:1].to(device)
        t = torch.zeros(1, dtype=torch.long, device=device)
        noise = torch.zeros((1, cfg.mask_channels, *labels.shape[-2:]), device=device)
        diffusion_loss(
            model, schedule, images, labels, t, noise, mask_channels=cfg.mask_channels
        ).backward()
    unused = any(p.grad is None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    return unused
