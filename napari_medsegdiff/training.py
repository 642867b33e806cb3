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
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_medsegdiff.augment import AugmentConfig, augment_batch
from napari_medsegdiff.checkpoints import save_model
from napari_medsegdiff.config import ModelConfig, TrainConfig
from napari_medsegdiff.cpu_share import CpuShare
from napari_medsegdiff.data import SliceSet
from napari_medsegdiff.devices import autocast, is_out_of_memory, released_memory
from napari_medsegdiff.diffusion.schedule import NoiseSchedule
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.objective import diffusion_loss, has_unused_parameters, sample_noise
from napari_medsegdiff.progress import CancelToken, EtaClock, Progress, ProgressCallback
from napari_medsegdiff.seeds import mix_seed
from napari_medsegdiff.training_state import EMA, load_last, restore_state, save_last
from napari_medsegdiff.validation import validate_shadow


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


@dataclass
class _Run:
    """One rank's training run: the network, its optimiser and the loop's counters."""

    cfg: ModelConfig
    tcfg: TrainConfig
    data: SliceSet
    out: Path
    device: torch.device
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    ema: EMA
    meta: dict[str, Any]
    log: Callable[[str], None] | None
    aug: AugmentConfig
    rank: int = 0
    world: int = 1
    distributed: bool = False
    step: int = 0
    history: dict[str, Any] = field(
        default_factory=lambda: {"loss": [], "val_dice": [], "best_dice": None}
    )
    net: torch.nn.Module | None = None
    schedule: NoiseSchedule | None = None
    scaler: Any = None
    use_amp: bool = False
    params: list[torch.nn.Parameter] = field(default_factory=list)
    per_rank: int = 1
    micro: int = 1
    best_dir: Path | None = None
    aug_gen: torch.Generator = field(default_factory=torch.Generator)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def say(self, message: str) -> None:
        if self.log and self.main:
            self.log(message)


def _setup(
    cfg: ModelConfig,
    tcfg: TrainConfig,
    data: SliceSet,
    out: Path,
    device: torch.device,
    init_state: dict[str, torch.Tensor] | None,
    **run_kwargs: Any,
) -> _Run:
    """Build the network (same initial weights on every rank), optimiser and EMA."""
    from napari_medsegdiff.distributed import is_distributed, rank, world_size
    from napari_medsegdiff.model import build_model

    if len(data) == 0:
        raise InputError("no training slices: nothing to learn from")
    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    if tcfg.freeze_condition:
        for p in model.condition_parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    ema = EMA(model, tcfg.ema_decay)
    best_dir = out / "best" if (out / "best").is_dir() else None
    return _Run(
        cfg,
        tcfg,
        data,
        out,
        device,
        model,
        opt,
        ema,
        **run_kwargs,
        rank=rank(),
        world=world_size(),
        distributed=is_distributed(),
        best_dir=best_dir,
        params=params,
    )


def _resume(run: _Run) -> None:
    """Continue from ``out/last`` when it holds a training state (all ranks must agree)."""
    from napari_medsegdiff.distributed import all_gather_object

    loaded = load_last(run.out)
    if loaded is not None:
        tensors, state_json = loaded
        run.ema.shadow, run.step, run.history = restore_state(
            run.model, run.opt, tensors, state_json, run.device
        )
        run.say(f"resumed from {run.out / 'last'} at step {run.step}")
    if run.distributed and len(set(all_gather_object(run.step))) > 1:
        raise InputError(
            f"resume: the ranks found different states in {run.out / 'last'}; "
            "the output folder must be on a filesystem shared by all nodes",
            argument="resume",
        )


def _wrap(run: _Run) -> None:
    """Per-rank RNG, the noise schedule, DDP (under a process group), AMP and batch sizes."""
    cfg, tcfg, device = run.cfg, run.tcfg, run.device
    torch.manual_seed(mix_seed(tcfg.seed, 1, run.rank))  # dropout etc. differ per rank
    run.schedule = NoiseSchedule(cfg)
    run.net = run.model
    if run.distributed:
        from torch.nn.parallel import DistributedDataParallel

        unused = has_unused_parameters(run.model, run.schedule, cfg, run.data, device)
        ids = None
        if device.type == "cuda":
            ids = [device.index if device.index is not None else torch.cuda.current_device()]
        run.net = DistributedDataParallel(run.model, device_ids=ids, find_unused_parameters=unused)
    run.use_amp = tcfg.amp and device.type == "cuda"
    run.scaler = torch.amp.GradScaler(
        "cuda", enabled=run.use_amp and not torch.cuda.is_bf16_supported()
    )
    run.per_rank = run.micro = max(1, tcfg.batch_size // run.world)
    if run.per_rank * run.world != tcfg.batch_size:
        run.say(
            f"batch size {tcfg.batch_size} is not a multiple of {run.world} processes: using "
            f"{run.per_rank} per process ({run.per_rank * run.world} in total)"
        )


def _batches(run: _Run, first_step: int):
    """(dataset indices, images, labels) of this rank, continuing at ``first_step``.

    Shuffled per epoch from (seed, epoch); rank r takes every W-th index of the global order.
    """
    per_rank, data = run.per_rank, run.data
    sampler = torch.utils.data.DistributedSampler(
        data,
        num_replicas=run.world,
        rank=run.rank,
        shuffle=True,
        seed=run.tcfg.seed,
        drop_last=False,
    )
    per_epoch = max(1, len(sampler) // per_rank)
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


def _draw(run: _Run, idx: list[int], images: torch.Tensor, labels: torch.Tensor) -> tuple:
    """The batch on the device, augmented, with its timesteps and noise."""
    device, tcfg = run.device, run.tcfg
    images, labels = images.to(device), labels.to(device)
    if tcfg.augment:
        run.aug_gen.manual_seed(mix_seed(tcfg.seed, run.step, 1, run.rank))
        images, labels = augment_batch(images, labels, run.aug_gen, run.aug)
    shape = (run.cfg.mask_channels, *labels.shape[-2:])
    t, noise = sample_noise(idx, run.step, tcfg.seed, shape, run.schedule.num_timesteps)
    return images, labels, t.to(device), noise.to(device)


def _accumulate(run: _Run, images, labels, t, noise) -> float:
    """Forward and backward in micro-batches of ``run.micro``; returns the batch mean loss."""
    cfg, tcfg, micro = run.cfg, run.tcfg, run.micro
    use_aux = cfg.version == "v2" and run.step % tcfg.aux_loss_interval == 0
    aux_weight = tcfg.aux_loss_weight if use_aux else 0.0
    run.opt.zero_grad(set_to_none=True)
    loss_value = 0.0
    starts = list(range(0, images.shape[0], micro))
    for j, s in enumerate(starts):
        part = slice(s, s + micro)
        frac = images[part].shape[0] / images.shape[0]
        # DDP: all-reduce gradients once, after the last micro-batch.
        last = not run.distributed or j == len(starts) - 1
        with contextlib.nullcontext() if last else run.net.no_sync():
            with autocast(run.device, run.use_amp):
                loss = diffusion_loss(
                    run.net,
                    run.schedule,
                    images[part],
                    labels[part],
                    t[part],
                    noise[part],
                    mask_channels=cfg.mask_channels,
                    aux_weight=aux_weight,
                    unlabelled_weight=tcfg.unlabelled_weight,
                )
            run.scaler.scale(loss * frac).backward()
        loss_value += float(loss.detach()) * frac
    return loss_value


def _micro_step(run: _Run, batch: tuple) -> float | None:
    """Gradients of one batch; on out-of-memory halve the micro-batch and return None."""
    try:
        return _accumulate(run, *batch)
    except RuntimeError as exc:
        if not is_out_of_memory(exc) or run.micro == 1:
            raise
        if run.distributed:  # ranks cannot agree on a retry: stop with advice
            raise InputError(
                f"out of memory on rank {run.rank} with {run.per_rank} samples per "
                "process; lower the batch size (or the preset / image size)"
            ) from None
        with released_memory(run.device):
            run.micro = max(1, run.micro // 2)
        run.say(f"out of memory: continuing with micro-batches of {run.micro}")
        return None


def learning_rate(tcfg: TrainConfig, step: int) -> float:
    """The learning rate at ``step``: constant, or cosine from ``lr`` to ``lr_final``."""
    if tcfg.lr_final is None:
        return tcfg.lr
    frac = min(1.0, step / max(1, tcfg.steps - 1))
    return tcfg.lr_final + 0.5 * (tcfg.lr - tcfg.lr_final) * (1 + math.cos(math.pi * frac))


def _apply(run: _Run, loss_value: float, cancel: CancelToken | None) -> tuple[float, bool]:
    """Clip, step, EMA; the global mean loss and whether any rank was cancelled."""
    from napari_medsegdiff.distributed import all_reduce

    for group in run.opt.param_groups:
        group["lr"] = learning_rate(run.tcfg, run.step)
    run.scaler.unscale_(run.opt)
    torch.nn.utils.clip_grad_norm_(run.params, run.tcfg.grad_clip)
    run.scaler.step(run.opt)
    run.scaler.update()
    run.ema.update(run.model, run.step)
    run.step += 1
    stop = False
    if run.distributed:  # the global mean loss; a cancel on any rank stops all of them
        loss_sum, flags = all_reduce([loss_value, float(cancel is not None and cancel.cancelled)])
        loss_value, stop = loss_sum / run.world, flags > 0
    if not math.isfinite(loss_value):
        raise InputError(
            f"training diverged at step {run.step} (loss {loss_value}); lower the learning rate"
        )
    run.history["loss"].append(loss_value)
    return loss_value, stop


def _validate_and_save(run: _Run, val: SliceSet | None) -> float | None:
    """Validation Dice every ``val_every`` steps (new best -> ``best/``); ``last/`` every
    ``save_every`` steps. Returns the Dice when one was measured."""
    step, tcfg = run.step, run.tcfg
    metric = None
    if val is not None and len(val) and (step % tcfg.val_every == 0 or step == tcfg.steps):
        metric = validate_shadow(
            run.ema.shadow, run.cfg, val, tcfg, run.device, run.rank, run.world
        )
        run.history["val_dice"].append([step, metric])
        best = run.history.get("best_dice")
        if best is None or metric > best:
            run.history["best_dice"] = metric
            if run.main:
                run.best_dir = save_model(
                    run.out / "best",
                    run.ema.shadow,
                    run.cfg,
                    meta={**run.meta, "step": step, "val_dice": metric},
                    overwrite=True,
                )
    if run.main and (step % tcfg.save_every == 0 or step == tcfg.steps):
        _save_last(run, run.meta)
    return metric


def _save_last(run: _Run, meta: dict[str, Any]) -> Path:
    return save_last(
        run.out,
        run.model,
        run.ema.shadow,
        run.opt,
        run.cfg,
        run.tcfg,
        run.step,
        run.history,
        meta,
    )


def _finish(run: _Run, start_step: int, cancelled: bool, val: SliceSet | None) -> TrainResult:
    """Final ``last/`` (and ``best/`` without validation) on rank 0; all ranks wait."""
    from napari_medsegdiff.distributed import barrier

    last = None
    if run.main and run.step > start_step:
        last = _save_last(run, {**run.meta, "partial": cancelled})
        if val is None or not len(val):
            run.best_dir = save_model(
                run.out / "best",
                run.ema.shadow,
                run.cfg,
                meta={**run.meta, "step": run.step, "partial": cancelled},
                overwrite=True,
            )
    if run.distributed:
        barrier()  # rank 0's files are complete before any rank returns
        if run.best_dir is None and (run.out / "best").is_dir():
            run.best_dir = run.out / "best"
    history = run.history
    return TrainResult(
        best=run.best_dir,
        last=last,
        steps_done=run.step,
        losses=list(history["loss"]),
        val_dice=[tuple(v) for v in history["val_dice"]],
        best_dice=history.get("best_dice"),
        cancelled=cancelled,
    )


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
    Stages: :func:`_setup` / :func:`_resume`, :func:`_wrap` (DDP), per step :func:`_draw`,
    :func:`_micro_step` (out-of-memory fallback), :func:`_apply`, :func:`_validate_and_save`.
    """
    out = Path(out)
    run = _setup(
        cfg,
        tcfg,
        data,
        out,
        torch.device(device),
        init_state,
        meta=dict(meta or {}),
        log=log,
        aug=augment or AugmentConfig(),
    )
    if resume:
        _resume(run)
    _wrap(run)
    clock = EtaClock(tcfg.steps - run.step)
    start_step = run.step
    stream = _batches(run, run.step)
    run.net.train()
    share = CpuShare(run.device)  # fewer threads while other processes are busy
    try:
        cancelled = _loop(run, val, stream, share, clock, start_step, cancel, on_progress)
    finally:
        share.restore()
    return _finish(run, start_step, cancelled, val)


def _loop(
    run: _Run,
    val: SliceSet | None,
    stream: Iterator[tuple],
    share: CpuShare,
    clock: EtaClock,
    start_step: int,
    cancel: CancelToken | None,
    on_progress: ProgressCallback | None,
) -> bool:
    """The optimiser steps, from ``run.step`` to ``tcfg.steps``; True when cancelled."""
    tcfg = run.tcfg
    cancelled = stop = False
    while run.step < tcfg.steps:
        if stop or (cancel is not None and cancel.cancelled and not run.distributed):
            cancelled = True
            break
        share.adjust()
        loss_value = _micro_step(run, _draw(run, *next(stream)))
        if loss_value is None:
            continue
        loss_value, stop = _apply(run, loss_value, cancel)
        metric = _validate_and_save(run, val)
        fitted = (
            metric is not None and tcfg.stop_at_dice is not None and metric >= tcfg.stop_at_dice
        )
        if on_progress and run.main:
            note = (
                f" - fitted (Dice {metric:.3f} >= {tcfg.stop_at_dice:.2f}): stopping"
                if fitted
                else ""
            )
            on_progress(
                Progress(
                    tcfg.steps if fitted else run.step,
                    tcfg.steps,
                    f"step {run.step}: loss {loss_value:.4f}{note}",
                    clock.eta(run.step - start_step),
                    loss=loss_value,
                    metric=metric,
                )
            )
        if fitted:
            run.history["stopped_fitted"] = run.step
            break
    return cancelled
