"""Training and fine-tuning loop: AdamW, EMA, AMP (CUDA), clipping, validation, resume, DDP.

Writes two model folders under ``out``: ``best/`` (EMA weights with the highest validation
Dice, or the last ones without validation) and ``last/`` (EMA weights plus the training
state needed to resume: raw weights, EMA, optimiser, step).

Distributed (``torchrun``, see docs/DISTRIBUTED.md): when a process group is initialised the
model is wrapped in DistributedDataParallel (``find_unused_parameters`` only where a probe
finds parameters outside the loss graph) and each epoch's shuffled order comes from a
DistributedSampler (``set_epoch``), so every rank gets a different shard. ``batch_size`` is
the *global* batch: each of the W ranks takes ``batch_size // W`` samples. Diffusion noise
and timesteps are drawn per sample from ``(seed, step, sample index)``, so W ranks x b
samples train exactly like one process with W x b; augmentation draws per ``(seed, step,
rank)``. Losses, validation Dice (computed on all ranks over shards of the held-out set)
and cancellation are reduced over ranks, so every rank takes the same decisions. Only
rank 0 writes ``best/`` and ``last/`` (atomically, via :func:`save_model`) and reports
progress; the saved state is global, so a run resumes with any number of ranks.
"""

from __future__ import annotations

import contextlib
import json
import math
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
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.metrics import dice
from napari_medsegdiff.progress import CancelToken, EtaClock, Progress, ProgressCallback
from napari_medsegdiff.seeds import mix_seed

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
    class_balance: float = 0.0,
) -> torch.Tensor:
    """Mean training loss of a batch for explicit timesteps ``t`` and ``noise``.

    MSE between the network output and the schedule's target (epsilon or v), plus
    ``aux_weight`` x the V2 anchor loss (Dice + CE of the condition model) when > 0.
    """
    from napari_medsegdiff.model import anchor_loss

    x0 = labels_to_mask(labels, mask_channels)
    x_t = schedule.add_noise(x0, noise, t)
    output = net(x_t, t, images)
    error = (output.prediction.float() - schedule.target(x0, noise, t)) ** 2
    if class_balance:
        error = error * class_weights(labels, mask_channels, class_balance)[:, None]
    loss = error.mean()
    if aux_weight and output.anchor_logits is not None:
        loss = loss + aux_weight * anchor_loss(output.anchor_logits.float(), labels)
    return loss


def class_weights(labels: torch.Tensor, mask_channels: int, power: float) -> torch.Tensor:
    """Per-pixel loss weights (B, H, W), (1 / class frequency in the batch) ** ``power``,
    scaled to mean 1: a rare structure (a new class on a few slices) is not drowned by
    background. labels (B, H, W)."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=max(2, mask_channels))
    freq = counts.float() / counts.sum()
    per_class = torch.where(counts > 0, freq.clamp_min(1e-4) ** -power, torch.zeros_like(freq))
    weights = per_class[labels.long()]
    return weights / weights.mean()


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
    scores = [
        dice(pred == k, truth == k)
        for k in range(1, max(2, classes))
        if np.any(pred == k) or np.any(truth == k)
    ]
    return float(np.mean(scores)) if scores else 1.0


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
        gens = [
            torch.Generator().manual_seed(seed * 1000 + m)
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
) -> float:
    if images.shape[0] == 0:
        return 0.0
    was_training = model.training
    model.eval()
    pred = sample_masks(model, cfg, images, steps=steps, ensemble=ensemble, seed=seed)
    model.train(was_training)
    truth = labels.numpy()
    return float(np.sum([dice_score(p, t, cfg.num_classes) for p, t in zip(pred, truth)]))


def _validate_ema(
    ema: EMA,
    cfg: ModelConfig,
    val: SliceSet,
    tcfg: TrainConfig,
    device: torch.device,
    rank: int,
    world: int,
) -> float:
    """Validation Dice of the EMA weights; each rank samples its shard, the sum is reduced.

    Sampling seeds do not depend on the slice's position, so the result equals the
    one-process :func:`validate` whatever the number of ranks.
    """
    from napari_medsegdiff.distributed import all_reduce
    from napari_medsegdiff.model import build_model

    with torch.random.fork_rng(devices=[]):  # building a model must not shift training RNG
        ema_model = build_model(cfg).to(device)
    ema_model.load_state_dict(ema.shadow)
    mine = list(range(rank, len(val), world))
    local = _dice_sum(
        ema_model,
        cfg,
        val.images[mine],
        val.labels[mine],
        tcfg.val_steps,
        tcfg.val_ensemble,
        tcfg.seed,
    )
    del ema_model
    (total,) = all_reduce([local])
    return total / len(val)


def _param_groups(model: torch.nn.Module, tcfg: TrainConfig) -> list[dict[str, Any]]:
    """Trainable parameters; those named in ``tcfg.head_params`` learn ``head_lr_scale``
    times faster (a grown or new mask head starting from a copy)."""
    head = set(tcfg.head_params)
    plain, fast = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (fast if name in head else plain).append(p)
    groups = [{"params": plain}]
    if fast:
        groups.append({"params": fast, "lr": tcfg.lr * tcfg.head_lr_scale})
    return groups


def _has_unused_parameters(
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


def _restore_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _save_last(
    out: Path,
    model: torch.nn.Module,
    ema: EMA,
    opt: torch.optim.Optimizer,
    cfg: ModelConfig,
    tcfg: TrainConfig,
    step: int,
    history: dict,
    meta: dict,
) -> Path:
    from safetensors.torch import save

    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    tensors.update(opt_tensors)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    state_json = {
        "step": step,
        "optimizer": opt_meta,
        "history": history,
        "train_config": tcfg.to_dict(),
    }
    extra = {
        STATE_TENSORS: save(tensors),
        STATE_JSON: (json.dumps(state_json, default=float) + "\n").encode(),
    }
    return save_model(
        out / "last",
        ema.shadow,
        cfg,
        meta={**meta, "step": step},
        extra_files=extra,
        overwrite=True,
    )


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
    """Train (or fine-tune from ``init_state``) for ``tcfg.steps`` optimiser steps.

    Under an initialised process group (torchrun) this is one rank of a data-parallel run:
    ``tcfg.batch_size`` is the global batch, split evenly over the ranks (module docstring).
    """
    from napari_medsegdiff.distributed import all_gather_object, all_reduce, barrier
    from napari_medsegdiff.model import build_model

    out = Path(out)
    device = torch.device(device)
    if len(data) == 0:
        raise InputError("no training slices: nothing to learn from")
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    main = rank == 0
    meta = dict(meta or {})
    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    if tcfg.freeze_condition:
        for p in model.condition_parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(_param_groups(model, tcfg), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
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
        if distributed and len(set(all_gather_object(step))) > 1:
            raise InputError(
                f"--resume: the ranks found different states in {out / 'last'}; "
                "--out must be on a filesystem shared by all nodes"
            )
    torch.manual_seed(mix_seed(tcfg.seed, 1, rank))  # dropout etc. differ per rank
    schedule = NoiseSchedule(cfg)
    net: torch.nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        unused = _has_unused_parameters(model, schedule, cfg, data, device)
        ids = None
        if device.type == "cuda":
            ids = [device.index if device.index is not None else torch.cuda.current_device()]
        net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)
    use_amp = tcfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
    per_rank = max(1, tcfg.batch_size // world)
    if main and log and per_rank * world != tcfg.batch_size:
        log(
            f"batch size {tcfg.batch_size} is not a multiple of {world} processes: using "
            f"{per_rank} per process ({per_rank * world} in total)"
        )
    aug_gen = torch.Generator()
    # Shuffled per epoch from (seed, epoch); rank r takes every W-th index of the global order.
    sampler = torch.utils.data.DistributedSampler(
        data, num_replicas=world, rank=rank, shuffle=True, seed=tcfg.seed, drop_last=False
    )
    per_epoch = max(1, len(sampler) // per_rank)
    micro = per_rank
    clock = EtaClock(tcfg.steps - step)
    start_step = step
    cancelled = stop = False
    aug = augment or AugmentConfig()
    best_dir: Path | None = out / "best" if (out / "best").is_dir() else None

    def batches(first_step: int):
        """(dataset indices, images, labels) of this rank, continuing at ``first_step``."""
        epoch, skip = divmod(first_step, per_epoch)
        while True:
            sampler.set_epoch(epoch)  # a new shuffle, and a different shard per rank
            order = list(iter(sampler))
            if len(order) < per_rank:
                order = (order * math.ceil(per_rank / len(order)))[:per_rank]
            for b in range(skip, per_epoch):
                idx = order[b * per_rank : (b + 1) * per_rank]
                yield idx, data.images[idx], data.labels[idx]
            skip = 0
            epoch += 1

    stream = batches(step)
    net.train()
    while step < tcfg.steps:
        if stop or (cancel is not None and cancel.cancelled and not distributed):
            cancelled = True
            break
        idx, images, labels = next(stream)
        images, labels = images.to(device), labels.to(device)
        if tcfg.augment:
            aug_gen.manual_seed(mix_seed(tcfg.seed, step, 1, rank))
            images, labels = augment_batch(images, labels, aug_gen, aug)
        t, noise = sample_noise(
            idx, step, tcfg.seed, (cfg.mask_channels, *labels.shape[-2:]), schedule.num_timesteps
        )
        t, noise = t.to(device), noise.to(device)
        use_aux = cfg.version == "v2" and step % tcfg.aux_loss_interval == 0
        aux_weight = tcfg.aux_loss_weight if use_aux else 0.0
        try:
            opt.zero_grad(set_to_none=True)
            loss_value = 0.0
            starts = list(range(0, images.shape[0], micro))
            for j, s in enumerate(starts):
                part = slice(s, s + micro)
                frac = images[part].shape[0] / images.shape[0]
                # DDP: all-reduce gradients once, after the last micro-batch.
                sync = (
                    net.no_sync()
                    if distributed and j < len(starts) - 1
                    else contextlib.nullcontext()
                )
                with sync:
                    with autocast(device, use_amp):
                        loss = diffusion_loss(
                            net,
                            schedule,
                            images[part],
                            labels[part],
                            t[part],
                            noise[part],
                            mask_channels=cfg.mask_channels,
                            aux_weight=aux_weight,
                            class_balance=tcfg.class_balance,
                        )
                    scaler.scale(loss * frac).backward()
                loss_value += float(loss.detach()) * frac
        except RuntimeError as exc:
            if not is_out_of_memory(exc) or micro == 1:
                raise
            if distributed:  # ranks cannot agree on a retry: stop with advice
                raise InputError(
                    f"out of memory on rank {rank} with {per_rank} samples per "
                    "process; lower --batch-size (or the preset / image size)"
                ) from None
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
        if distributed:  # the global mean loss; a cancel on any rank stops all of them
            loss_sum, flags = all_reduce(
                [loss_value, float(cancel is not None and cancel.cancelled)]
            )
            loss_value, stop = loss_sum / world, flags > 0
        if not math.isfinite(loss_value):
            raise InputError(f"training diverged at step {step} (loss {loss_value}); lower --lr")
        history["loss"].append(loss_value)
        metric = None
        if val is not None and len(val) and (step % tcfg.val_every == 0 or step == tcfg.steps):
            metric = _validate_ema(ema, cfg, val, tcfg, device, rank, world)
            history["val_dice"].append([step, metric])
            best = history.get("best_dice")
            if best is None or metric > best:
                history["best_dice"] = metric
                if main:
                    best_dir = save_model(
                        out / "best",
                        ema.shadow,
                        cfg,
                        meta={**meta, "step": step, "val_dice": metric},
                        overwrite=True,
                    )
        if main and (step % tcfg.save_every == 0 or step == tcfg.steps):
            _save_last(out, model, ema, opt, cfg, tcfg, step, history, meta)
        if on_progress and main:
            on_progress(
                Progress(
                    step,
                    tcfg.steps,
                    f"step {step}: loss {loss_value:.4f}",
                    clock.eta(step - start_step),
                    loss=loss_value,
                    metric=metric,
                )
            )
    last = None
    if main and step > start_step:
        last = _save_last(
            out, model, ema, opt, cfg, tcfg, step, history, {**meta, "partial": cancelled}
        )
    if main and (val is None or not len(val)) and step > start_step:
        best_dir = save_model(
            out / "best",
            ema.shadow,
            cfg,
            meta={**meta, "step": step, "partial": cancelled},
            overwrite=True,
        )
    if distributed:
        barrier()  # rank 0's files are complete before any rank returns
        if best_dir is None and (out / "best").is_dir():
            best_dir = out / "best"
    return TrainResult(
        best=best_dir,
        last=last if main else None,
        steps_done=step,
        losses=list(history["loss"]),
        val_dice=[tuple(v) for v in history["val_dice"]],
        best_dice=history.get("best_dice"),
        cancelled=cancelled,
    )
