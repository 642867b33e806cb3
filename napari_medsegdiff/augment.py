"""Batch augmentations on the training device: flips, small affine, intensity jitter,
contrast inversion (T2-like) and display windows (CT-like).

Images are normalised to [-1, 1]; labels are integer class maps. Every random draw takes
a ``torch.Generator`` so training is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each augmentation (0 disables it)."""

    flip: bool = True
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    gamma: tuple[float, float] = (0.8, 1.25)
    contrast: float = 0.1
    brightness: float = 0.1
    noise: float = 0.03
    elastic: float = 0.0  # displacement amplitude as a fraction of the image size
    bias: float = 0.0  # strength of a smooth multiplicative bias field
    invert: float = 0.0  # probability of inverting the contrast inside the head (T2-like)
    window: float = 0.0  # probability of a random intensity window (CT-like, saturating)
    curve: float = 0.0  # probability of a random intensity curve (other contrasts/scanners)
    lowres: float = 0.0  # probability of thick-slice blur along one in-plane axis


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def random_affine(
    n: int, g: torch.Generator, rotate_deg: float, scale: tuple[float, float], translate: float
) -> torch.Tensor:
    """Random 2x3 affine matrices for ``affine_grid``, shape (n, 2, 3)."""
    angle = _uniform(n, -rotate_deg, rotate_deg, g) * math.pi / 180
    s = torch.exp(_uniform(n, math.log(scale[0]), math.log(scale[1]), g))
    tx, ty = _uniform(n, -translate, translate, g), _uniform(n, -translate, translate, g)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    return torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)


def resample(
    image: torch.Tensor, labels: torch.Tensor, grid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample image (N, C, H, W) bilinearly and labels (N, H, W) nearest at ``grid``.

    Outside the image, the image takes its own minimum and labels background (0).
    """
    fill = image.amin(dim=(2, 3), keepdim=True)
    warped = F.grid_sample(image - fill, grid, mode="bilinear", align_corners=False) + fill
    lab = F.grid_sample(labels[:, None].float(), grid, mode="nearest", align_corners=False)
    return warped, lab[:, 0].round().long()


def warp(
    image: torch.Tensor, labels: torch.Tensor, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply affine ``theta`` (N, 2, 3): image (N, C, H, W) bilinear, labels (N, H, W) nearest."""
    grid = F.affine_grid(theta.to(image), list(image.shape), align_corners=False)
    return resample(image, labels, grid)


def _smooth_field(
    n: int, channels: int, size: tuple[int, int], g: torch.Generator, coarse: int = 4
) -> torch.Tensor:
    """Random smooth fields (n, channels, H, W) in about [-1, 1] (bicubic from a coarse grid)."""
    base = torch.rand(n, channels, coarse, coarse, generator=g) * 2 - 1
    return F.interpolate(base, size=size, mode="bicubic", align_corners=True)


def elastic_warp(
    image: torch.Tensor, labels: torch.Tensor, g: torch.Generator, amplitude: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random displacement (amplitude x half-size), image bilinear, labels nearest."""
    n, _, h, w = image.shape
    disp = _smooth_field(n, 2, (h, w), g).permute(0, 2, 3, 1) * amplitude * 2
    theta = torch.eye(2, 3).expand(n, 2, 3)
    grid = F.affine_grid(theta.to(image), [n, 1, h, w], align_corners=False) + disp.to(image)
    return resample(image, labels, grid)


def _dilate(mask: torch.Tensor, radius: int, outside: float) -> torch.Tensor:
    """Binary dilation of (N, 1, H, W) 0/1 by a square; beyond the border counts as ``outside``."""
    padded = F.pad(mask, (radius,) * 4, value=outside)
    return F.max_pool2d(padded, 2 * radius + 1, stride=1)


def head_mask(image: torch.Tensor, radius: int = 4) -> torch.Tensor:
    """Inside the head (N, 1, H, W) as 0/1: above 10 % of each slice's range, closed so that
    dark structures within (CSF, ventricles up to ~2 x ``radius`` px wide) count as inside."""
    unit = image.mean(1, keepdim=True)
    lo = unit.amin(dim=(2, 3), keepdim=True)
    hi = unit.amax(dim=(2, 3), keepdim=True)
    fg = (unit > lo + 0.1 * (hi - lo)).float()
    return 1 - _dilate(1 - _dilate(fg, radius, 0.0), radius, 1.0)


def invert_contrast(image: torch.Tensor, chosen: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """T2-like: invert intensities inside the head of the ``chosen`` (N,) bool slices.

    Inside the head ``x -> offset - x`` (offset 0-0.3 of the range, so the darkest
    tissue does not fall to the background level); outside stays as it was.
    """
    n = image.shape[0]
    inside = head_mask(image)
    offset = _uniform(n, 0.0, 0.6, g).view(-1, 1, 1, 1).to(image.device)
    flipped = torch.where(inside > 0, offset - image, image)
    return torch.where(chosen.view(-1, 1, 1, 1).to(image.device), flipped, image)


def random_window(image: torch.Tensor, chosen: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """CT-like display windows: rescale a random window [a, b] of [-1, 1] to [-1, 1] and
    saturate outside it, for the ``chosen`` (N,) bool slices."""
    n = image.shape[0]
    lo = _uniform(n, -1.0, 0.2, g)
    width = _uniform(n, 0.6, 1.8, g)
    a = lo.view(-1, 1, 1, 1).to(image.device)
    b = (lo + width).view(-1, 1, 1, 1).to(image.device)
    windowed = ((image - a) / (b - a)).clamp(0, 1) * 2 - 1
    return torch.where(chosen.view(-1, 1, 1, 1).to(image.device), windowed, image)


def random_curve(
    image: torch.Tensor, chosen: torch.Tensor, g: torch.Generator, knots: int = 6
) -> torch.Tensor:
    """Contrast randomisation in the spirit of SynthSeg, for the ``chosen`` (N,) slices.

    Inside the head, intensities pass through a random piecewise-linear curve through
    ``knots`` random levels (not necessarily monotone: tissues may swap order, as between
    T1, T2, PD and FLAIR); outside the head stays as it was.
    """
    n = image.shape[0]
    dev = image.device
    levels = torch.rand(n, knots, generator=g).to(dev) * 1.6 - 0.6  # in [-0.6, 1]
    unit = ((image + 1) / 2).clamp(0, 1) * (knots - 1)
    lo = unit.floor().clamp(max=knots - 2)
    frac = unit - lo
    idx = lo.long().flatten(1)
    a = torch.gather(levels, 1, idx).view_as(image)
    b = torch.gather(levels, 1, idx + 1).view_as(image)
    curved = a + frac * (b - a)
    inside = head_mask(image) > 0
    out = torch.where(inside, curved, image)
    return torch.where(chosen.view(-1, 1, 1, 1).to(dev), out, image)


def thick_slices(image: torch.Tensor, chosen: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Thick or anisotropic acquisitions: average-pool the ``chosen`` (N,) slices by 2-4x along
    a random in-plane axis and scale back (linear), as when sagittal or coronal slices of a few
    mm are viewed axially."""
    n, _, h, w = image.shape
    out = image.clone()
    factors = torch.randint(2, 5, (n,), generator=g)
    axes = torch.rand(n, generator=g) < 0.5
    for i in torch.nonzero(chosen).flatten().tolist():
        f = int(factors[i])
        kernel = (f, 1) if bool(axes[i]) else (1, f)
        small = F.avg_pool2d(image[i : i + 1], kernel, ceil_mode=True)
        out[i : i + 1] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def augment_batch(
    image: torch.Tensor, labels: torch.Tensor, g: torch.Generator, cfg: AugmentConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch: image (N, C, H, W) in [-1, 1], labels (N, H, W) long."""
    cfg = cfg or AugmentConfig()
    n = image.shape[0]
    if cfg.flip:
        flip_x = torch.rand(n, generator=g) < 0.5
        flip_y = torch.rand(n, generator=g) < 0.5
        image = torch.where(flip_x.view(-1, 1, 1, 1).to(image.device), image.flip(-1), image)
        labels = torch.where(flip_x.view(-1, 1, 1).to(labels.device), labels.flip(-1), labels)
        image = torch.where(flip_y.view(-1, 1, 1, 1).to(image.device), image.flip(-2), image)
        labels = torch.where(flip_y.view(-1, 1, 1).to(labels.device), labels.flip(-2), labels)
    if cfg.rotate_deg or cfg.scale != (1.0, 1.0) or cfg.translate:
        theta = random_affine(n, g, cfg.rotate_deg, cfg.scale, cfg.translate)
        image, labels = warp(image, labels, theta)
    if cfg.elastic:
        image, labels = elastic_warp(image, labels, g, cfg.elastic)
    dev = image.device
    if cfg.bias:
        field = torch.exp(cfg.bias * _smooth_field(n, 1, tuple(image.shape[-2:]), g)).to(dev)
        image = (((image + 1) / 2) * field) * 2 - 1
    if cfg.gamma != (1.0, 1.0):
        gamma = torch.exp(_uniform(n, math.log(cfg.gamma[0]), math.log(cfg.gamma[1]), g))
        unit = ((image + 1) / 2).clamp(0, 1)
        image = unit.pow(gamma.view(-1, 1, 1, 1).to(dev)) * 2 - 1
    if cfg.contrast or cfg.brightness:
        c = 1 + _uniform(n, -cfg.contrast, cfg.contrast, g).view(-1, 1, 1, 1).to(dev)
        b = _uniform(n, -cfg.brightness, cfg.brightness, g).view(-1, 1, 1, 1).to(dev)
        image = image * c + b
    if cfg.invert:
        image = invert_contrast(image, torch.rand(n, generator=g) < cfg.invert, g)
    if cfg.window:
        image = random_window(image, torch.rand(n, generator=g) < cfg.window, g)
    if cfg.curve:
        image = random_curve(image, torch.rand(n, generator=g) < cfg.curve, g)
    if cfg.lowres:
        image = thick_slices(image, torch.rand(n, generator=g) < cfg.lowres, g)
    if cfg.noise:
        image = image + cfg.noise * torch.randn(image.shape, generator=g).to(dev)
    return image.clamp(-1.5, 1.5), labels
