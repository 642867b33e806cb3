"""Validation during training: sample masks for held-out slices and score them (Dice).

Each held-out slice is sampled with DPM-Solver++ and fused by the mean probability; the
score is :func:`napari_medsegdiff.metrics.dice` per foreground class, averaged.
Under torchrun every rank samples its shard and the sums are reduced, so the value does not
depend on the number of ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_medsegdiff.config import ModelConfig, TrainConfig
from napari_medsegdiff.data import SliceSet
from napari_medsegdiff.diffusion.sampling import denoise_loop, initial_noise, make_scheduler
from napari_medsegdiff.ensemble import fuse, member_probabilities
from napari_medsegdiff.metrics import dice
from napari_medsegdiff.progress import CancelToken
from napari_medsegdiff.seeds import member_seed


def dice_score(pred: np.ndarray, truth: np.ndarray, classes: int, worst: bool = False) -> float:
    """Mean (``worst``: lowest) Dice over foreground classes present in either map (both
    empty -> 1)."""
    scores = [
        dice(pred == k, truth == k)
        for k in range(1, max(2, classes))
        if np.any(pred == k) or np.any(truth == k)
    ]
    if not scores:
        return 1.0
    return float(np.min(scores) if worst else np.mean(scores))


@torch.no_grad()
def sample_masks(
    model: torch.nn.Module,
    cfg: ModelConfig,
    images: torch.Tensor,
    *,
    steps: int = 20,
    ensemble: int = 1,
    seed: int = 0,
    sampler: str = "dpm++",
    batch: int = 8,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """Fused label maps (N, H, W) for model-sized images (N, C, H, W) (validation helper)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, images.shape[0], batch):
        img = images[start : start + batch].to(device)
        n = img.shape[0]
        cond = model.encode_condition(img)
        idx = torch.arange(n, device=device).repeat_interleave(ensemble)
        # (slice, member) rows seeded like Segmenter's, so validation scores what users get
        gens = [
            torch.Generator().manual_seed(member_seed(seed, m))
            for _ in range(n)
            for m in range(ensemble)
        ]
        x = initial_noise((cfg.mask_channels, *img.shape[-2:]), gens, device)
        row_cond = cond.index(idx)
        x0 = denoise_loop(
            lambda x_t, t, c=row_cond: model.denoise(x_t, t, c),
            x,
            make_scheduler(sampler, cfg),
            steps,
            gens,
            cancel,
        )
        probs = member_probabilities(x0.float().cpu().numpy())
        probs = probs.reshape(n, ensemble, *probs.shape[1:])
        out.extend(fuse(p, "mean").mask for p in probs)
    return np.stack(out)


def validate(
    model: torch.nn.Module,
    cfg: ModelConfig,
    val: SliceSet,
    steps: int = 20,
    ensemble: int = 1,
    seed: int = 0,
) -> float:
    """Mean foreground Dice of sampled masks on a held-out SliceSet."""
    if len(val) == 0:
        return float("nan")
    return _dice_sum(model, cfg, val.images, val.labels, steps, ensemble, seed) / len(val)


def _dice_sum(
    model: torch.nn.Module,
    cfg: ModelConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    ensemble: int,
    seed: int,
    worst: bool = False,
) -> float:
    if images.shape[0] == 0:
        return 0.0
    was_training = model.training
    model.eval()
    pred = sample_masks(model, cfg, images, steps=steps, ensemble=ensemble, seed=seed)
    model.train(was_training)
    truth = labels.numpy()
    scores = [dice_score(p, t, cfg.num_classes, worst) for p, t in zip(pred, truth)]
    return float(np.sum(scores))


def validate_shadow(
    shadow: dict[str, torch.Tensor],
    cfg: ModelConfig,
    val: SliceSet,
    tcfg: TrainConfig,
    device: torch.device,
    rank: int,
    world: int,
) -> float:
    """Validation Dice of weights ``shadow`` (the EMA); each rank samples its shard, the
    sums are reduced.

    Sampling seeds do not depend on the slice's position, so the result equals the
    one-process :func:`validate` whatever the number of ranks. A fit check (``tcfg.stop_at_dice``
    set) scores each slice by its worst class, so one class left unfit is not averaged away.
    """
    from napari_medsegdiff.distributed import all_reduce
    from napari_medsegdiff.model import build_model

    with torch.random.fork_rng(devices=[]):  # building a model must not shift training RNG
        ema_model = build_model(cfg).to(device)
    ema_model.load_state_dict(shadow)
    mine = list(range(rank, len(val), world))
    local = _dice_sum(
        ema_model,
        cfg,
        val.images[mine],
        val.labels[mine],
        tcfg.val_steps,
        tcfg.val_ensemble,
        tcfg.seed,
        worst=tcfg.stop_at_dice is not None,
    )
    del ema_model
    (total,) = all_reduce([local])
    return total / len(val)
