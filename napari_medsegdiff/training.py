"""Training and fine-tuning loop: AdamW, EMA, AMP (CUDA), clipping, validation, resume, DDP.

Writes two model folders under ``out``: ``best/`` (EMA weights with the highest validation
Dice, or the last ones without validation) and ``last/`` (EMA weights plus the training
state needed to resume: raw weights, EMA, optimiser, step). Under ``torchrun`` the model is
wrapped in DistributedDataParallel, data are sharded with a DistributedSampler, and only
rank 0 writes files or reports progress.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from napari_medsegdiff.augment import AugmentConfig, augment_batch
from napari_medsegdiff.checkpoints import WEIGHTS, save_model
from napari_medsegdiff.config import ModelConfig, TrainConfig
from napari_medsegdiff.data import SliceSet
from napari_medsegdiff.devices import autocast, is_out_of_memory, released_memory
from napari_medsegdiff.diffusion.sampling import denoise_loop, initial_noise, make_scheduler
from napari_medsegdiff.diffusion.schedule import NoiseSchedule
from napari_medsegdiff.ensemble import fuse, member_probabilities
from napari_medsegdiff.errors import Cancelled, InputError
from napari_medsegdiff.progress import CancelToken, EtaClock, Progress, ProgressCallback

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


@dataclass
class TrainResult:
    """Where the weights went and how training went."""

    best: Path | None
    last: Path | None
    steps_done: int
    losses: list[float] = field(default_factory=list)
    val_dice: list[tuple[int, float]] = field(default_factory=list)
    best_dice: float | None = None
    cancelled: bool = False


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def labels_to_mask(labels: torch.Tensor, mask_channels: int) -> torch.Tensor:
    """Class map (B, H, W) -> diffusion target (B, K, H, W) in [-1, 1]."""
    if mask_channels == 1:
        return (labels > 0).float()[:, None] * 2 - 1
    if int(labels.max()) >= mask_channels:
        raise InputError(
            f"labels contain value {int(labels.max())} but the model has {mask_channels} classes"
        )
    return F.one_hot(labels.long(), mask_channels).permute(0, 3, 1, 2).float() * 2 - 1


class EMA:
    """Exponential moving average of a model's floating-point state."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # warm-up for short runs
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.shadow[key].lerp_(value.detach(), 1 - decay)
            else:
                self.shadow[key].copy_(value)


def dice_score(pred: np.ndarray, truth: np.ndarray, classes: int) -> float:
    """Mean Dice over foreground classes present in either map (both empty -> 1)."""
    scores = []
    for k in range(1, max(2, classes)):
        p, t = pred == k, truth == k
        denom = p.sum() + t.sum()
        if denom:
            scores.append(2.0 * np.logical_and(p, t).sum() / denom)
    return float(np.mean(scores)) if scores else 1.0


@torch.no_grad()
def sample_masks(model: torch.nn.Module, cfg: ModelConfig, images: torch.Tensor, *,
                 steps: int = 20, ensemble: int = 1, seed: int = 0, sampler: str = "dpm++",
                 batch: int = 8, cancel: CancelToken | None = None) -> np.ndarray:
    """Fused label maps (N, H, W) for model-sized images (N, C, H, W) (validation helper)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, images.shape[0], batch):
        img = images[start: start + batch].to(device)
        n = img.shape[0]
        cond = model.encode_condition(img)
        idx = torch.arange(n, device=device).repeat_interleave(ensemble)
        gens = [torch.Generator().manual_seed(seed * 1000 + m) for _ in range(n)
                for m in range(ensemble)]
        x = initial_noise((cfg.mask_channels, *img.shape[-2:]), gens, device)
        row_cond = cond.index(idx)
        x0 = denoise_loop(lambda x_t, t: model.denoise(x_t, t, row_cond), x,
                          make_scheduler(sampler, cfg), steps, gens, cancel)
        probs = member_probabilities(x0.float().cpu().numpy())
        probs = probs.reshape(n, ensemble, *probs.shape[1:])
        out.extend(fuse(p, "mean").mask for p in probs)
    return np.stack(out)


def validate(model: torch.nn.Module, cfg: ModelConfig, val: SliceSet, steps: int = 20,
             ensemble: int = 1, seed: int = 0) -> float:
    """Mean foreground Dice of sampled masks on a held-out SliceSet."""
    was_training = model.training
    model.eval()
    pred = sample_masks(model, cfg, val.images, steps=steps, ensemble=ensemble, seed=seed)
    model.train(was_training)
    truth = val.labels.numpy()
    return float(np.mean([dice_score(p, t, cfg.num_classes) for p, t in zip(pred, truth)]))


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                       meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _save_last(out: Path, model: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer,
               cfg: ModelConfig, tcfg: TrainConfig, step: int, history: dict, meta: dict
               ) -> Path:
    from safetensors.torch import save

    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    tensors.update(opt_tensors)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    state_json = {"step": step, "optimizer": opt_meta, "history": history,
                  "train_config": tcfg.to_dict()}
    extra = {STATE_TENSORS: save(tensors),
             STATE_JSON: (json.dumps(state_json, default=float) + "\n").encode()}
    return save_model(out / "last", ema.shadow, cfg, meta={**meta, "step": step},
                      extra_files=extra, overwrite=True)


def _load_last(out: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    from safetensors.torch import load_file

    folder = out / "last"
    if not (folder / STATE_TENSORS).is_file() or not (folder / WEIGHTS).is_file():
        return None
    return load_file(str(folder / STATE_TENSORS)), json.loads((folder / STATE_JSON).read_text())


def train(
    cfg: ModelConfig,
    tcfg: TrainConfig,
    data: SliceSet,
    out: str | Path,
    *,
    val: SliceSet | None = None,
    device: torch.device | str = "cpu",
    resume: bool = False,
    init_state: dict[str, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
    augment: AugmentConfig | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train (or fine-tune from ``init_state``) for ``tcfg.steps`` optimiser steps."""
    from napari_medsegdiff.model import anchor_loss, build_model

    out = Path(out)
    device = torch.device(device)
    if len(data) == 0:
        raise InputError("no training slices: nothing to learn from")
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    main = rank == 0
    meta = dict(meta or {})
    torch.manual_seed(tcfg.seed)
    model = build_model(cfg).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    if tcfg.freeze_condition:
        for p in model.condition_parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    ema = EMA(model, tcfg.ema_decay)
    history: dict[str, Any] = {"loss": [], "val_dice": [], "best_dice": None}
    step = 0
    if resume:
        loaded = _load_last(out)
        if loaded is not None:
            tensors, state_json = loaded
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            ema.shadow = {k[4:]: v.to(device) for k, v in tensors.items() if k.startswith("ema.")}
            _restore_optimizer(opt, tensors, state_json["optimizer"])
            step, history = int(state_json["step"]), state_json["history"]
            if log and main:
                log(f"resumed from {out / 'last'} at step {step}")
    net: torch.nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                      else None)
    schedule = NoiseSchedule(cfg)
    use_amp = tcfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
    per_rank = max(1, tcfg.batch_size // world)
    gen = torch.Generator().manual_seed(tcfg.seed * 7919 + rank)
    sampler = (torch.utils.data.DistributedSampler(data, num_replicas=world, rank=rank,
                                                   shuffle=True, seed=tcfg.seed, drop_last=False)
               if distributed else None)
    micro = per_rank
    clock = EtaClock(tcfg.steps - step)
    start_step = step
    cancelled = False
    aug = augment or AugmentConfig()
    best_dir: Path | None = out / "best" if (out / "best").is_dir() else None

    def batches():
        epoch = step // max(1, math.ceil(len(data) / (per_rank * world)))
        while True:
            if sampler is not None:
                sampler.set_epoch(epoch)
                order = list(iter(sampler))
            else:
                order = torch.randperm(len(data), generator=gen).tolist()
            for i in range(0, len(order) - per_rank + 1 if len(order) >= per_rank else 1,
                           per_rank):
                idx = order[i: i + per_rank]
                while len(idx) < per_rank:
                    idx = idx + order[: per_rank - len(idx)]
                yield data.images[idx], data.labels[idx]
            epoch += 1

    stream = batches()
    net.train()
    while step < tcfg.steps:
        if cancel is not None and cancel.cancelled:
            cancelled = True
            break
        images, labels = next(stream)
        images, labels = images.to(device), labels.to(device)
        if tcfg.augment:
            images, labels = augment_batch(images, labels, gen, aug)
        x0 = labels_to_mask(labels, cfg.mask_channels)
        t = schedule.sample_timesteps(x0.shape[0], gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        use_aux = cfg.version == "v2" and step % tcfg.aux_loss_interval == 0
        try:
            opt.zero_grad(set_to_none=True)
            loss_value = 0.0
            for s in range(0, x0.shape[0], micro):
                part = slice(s, s + micro)
                frac = x0[part].shape[0] / x0.shape[0]
                with autocast(device, use_amp):
                    x_t = schedule.add_noise(x0[part], noise[part], t[part])
                    output = net(x_t, t[part], images[part])
                    loss = F.mse_loss(output.prediction.float(),
                                      schedule.target(x0[part], noise[part], t[part]))
                    if use_aux and output.anchor_logits is not None:
                        loss = loss + tcfg.aux_loss_weight * anchor_loss(
                            output.anchor_logits.float(), labels[part])
                scaler.scale(loss * frac).backward()
                loss_value += float(loss.detach()) * frac
        except RuntimeError as exc:
            if not is_out_of_memory(exc) or micro == 1:
                raise
            with released_memory(device):
                micro = max(1, micro // 2)
            if log and main:
                log(f"out of memory: continuing with micro-batches of {micro}")
            continue
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        ema.update(model, step)
        step += 1
        if not math.isfinite(loss_value):
            raise InputError(f"training diverged at step {step} (loss {loss_value}); lower --lr")
        history["loss"].append(loss_value)
        metric = None
        if val is not None and len(val) and (step % tcfg.val_every == 0 or step == tcfg.steps):
            if main:
                ema_model = copy.deepcopy(model)
                ema_model.load_state_dict(ema.shadow)
                metric = validate(ema_model, cfg, val, tcfg.val_steps, tcfg.val_ensemble,
                                  tcfg.seed)
                history["val_dice"].append([step, metric])
                best = history.get("best_dice")
                if best is None or metric > best:
                    history["best_dice"] = metric
                    best_dir = save_model(out / "best", ema.shadow, cfg,
                                          meta={**meta, "step": step, "val_dice": metric},
                                          overwrite=True)
                del ema_model
        if main and (step % tcfg.save_every == 0 or step == tcfg.steps):
            _save_last(out, model, ema, opt, cfg, tcfg, step, history, meta)
        if on_progress and main:
            on_progress(Progress(step, tcfg.steps, f"step {step}: loss {loss_value:.4f}",
                                 clock.eta(step - start_step), loss=loss_value, metric=metric))
    last = None
    if main and step > start_step:
        last = _save_last(out, model, ema, opt, cfg, tcfg, step, history,
                          {**meta, "partial": cancelled})
    if main and (val is None or not len(val)) and step > start_step:
        best_dir = save_model(out / "best", ema.shadow, cfg,
                              meta={**meta, "step": step, "partial": cancelled}, overwrite=True)
    if distributed:
        dist.barrier()
    return TrainResult(best=best_dir, last=last if main else None, steps_done=step,
                       losses=list(history["loss"]),
                       val_dice=[tuple(v) for v in history["val_dice"]],
                       best_dice=history.get("best_dice"), cancelled=cancelled)


def raise_if_cancelled(result: TrainResult) -> None:
    if result.cancelled:
        raise Cancelled("training cancelled")


def seconds_since(start: float) -> float:
    return time.perf_counter() - start
