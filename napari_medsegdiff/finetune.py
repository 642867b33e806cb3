"""Fine-tune a model on the user's corrected slices into a *new* version in the model store.

The base model's files are only read. Training data are the slices whose labels differ
from the model's kept proposal, plus slices marked reviewed (or an explicit list). A
fraction is held out to report Dice with the fast sampler; the best weights are kept, and
a cancel still saves the best so far, marked partial.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_medsegdiff import __version__
from napari_medsegdiff.augment import AugmentConfig
from napari_medsegdiff.checkpoints import (
    WEIGHTS,
    ModelStore,
    file_sha256,
    load_model,
    resolve_model,
)
from napari_medsegdiff.config import TrainConfig
from napari_medsegdiff.data import SliceSet, slices_from_volume, split_holdout
from napari_medsegdiff.devices import choose_device
from napari_medsegdiff.errors import Cancelled, InputError
from napari_medsegdiff.preprocessing import normalize_intensity
from napari_medsegdiff.progress import CancelToken, ProgressCallback
from napari_medsegdiff.training import train, validate


@dataclass
class FinetuneResult:
    """The new version's folder and what happened."""

    path: Path
    provenance: dict[str, Any]

    @property
    def held_out_dice(self) -> float | None:
        return self.provenance.get("held_out_dice_best")

    def summary(self) -> str:
        before = self.provenance.get("held_out_dice_before")
        after = self.held_out_dice
        dice = ""
        if after is not None:
            dice = (
                f"; held-out Dice {before:.3f} -> {after:.3f}"
                if before is not None
                else f"; held-out Dice {after:.3f}"
            )
        partial = " (partial: cancelled)" if self.provenance.get("partial") else ""
        return f"new model version {self.path}{partial}{dice}"


def corrected_slices(labels: np.ndarray, proposal: np.ndarray) -> list[int]:
    """Indices along axis 0 where the user's labels differ from the model's proposal."""
    if labels.shape != proposal.shape:
        raise InputError(f"labels shape {labels.shape} differs from proposal {proposal.shape}")
    diff = np.asarray(labels) != np.asarray(proposal)
    return [int(i) for i in np.flatnonzero(diff.reshape(diff.shape[0], -1).any(axis=1))]


def training_slices(
    labels: np.ndarray,
    proposal: np.ndarray | None = None,
    reviewed: Sequence[int] = (),
    slices: Sequence[int] | None = None,
) -> list[int]:
    """The slice list: explicit ``slices``, else corrected + reviewed."""
    if slices is not None:
        chosen = sorted(set(int(s) for s in slices))
    else:
        chosen = sorted(
            set(corrected_slices(labels, proposal) if proposal is not None else [])
            | set(int(s) for s in reviewed)
        )
    if not chosen:
        raise InputError(
            "no corrected or reviewed slices to learn from: correct some slices "
            "(or mark them reviewed) first, or pass --slices"
        )
    bad = [s for s in chosen if not 0 <= s < labels.shape[0]]
    if bad:
        raise InputError(f"--slices: {bad[:5]} outside the volume's 0..{labels.shape[0] - 1}")
    return chosen


def replay_slices(
    size: int, channels: int, classes: int, count: int = 16, seed: int = 0
) -> SliceSet:
    """Slices of the shipped sample scan (the default model's training data) for replay."""
    from napari_medsegdiff._sample_data import sample_paths
    from napari_medsegdiff.nifti import read_volume

    if channels != 1:
        raise InputError(
            f"--replay: the sample data has 1 channel but the model expects {channels}"
        )
    t1, tissue = sample_paths()
    image, labels = read_volume(t1), np.rint(read_volume(tissue).data).astype(np.int64)
    if classes == 2:
        labels = (labels > 0).astype(np.int64)
    fg = [i for i in range(labels.shape[0]) if labels[i].any()]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.permutation(fg)[:count].tolist())
    return slices_from_volume(image.data, labels, size, pick, name="sample")


def finetune(
    base_model: str | Path | None,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    slices: Sequence[int] | None = None,
    proposal: np.ndarray | None = None,
    reviewed: Sequence[int] = (),
    steps: int = 200,
    lr: float = 5e-5,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    augment: bool = True,
    replay: bool = False,
    freeze_condition: bool = False,
    holdout: float = 0.2,
    val_every: int | None = None,
    store: ModelStore | str | Path | None = None,
    image_files: Sequence[str] = (),
    seed: int = 0,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> FinetuneResult:
    """Fine-tune ``base_model`` on slices of image (z, y, x[, c]) / labels (z, y, x)."""
    base_path = resolve_model(base_model)
    dev = choose_device(device)
    base_net, info = load_model(base_path, "cpu")
    cfg = info.config
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[..., None]
    lab = np.asarray(labels)
    if img.shape[:3] != lab.shape:
        raise InputError(f"labels shape {lab.shape} does not match the image {img.shape[:3]}")
    if img.shape[-1] != cfg.in_channels:
        raise InputError(
            f"image has {img.shape[-1]} channel(s) but model {info.name!r} "
            f"expects {cfg.in_channels}"
        )
    if np.issubdtype(lab.dtype, np.floating) and not np.array_equal(lab, np.rint(lab)):
        raise InputError("labels must be integers, got non-integer values")
    lab = lab.astype(np.int64)
    if lab.min() < 0 or lab.max() >= cfg.num_classes:
        raise InputError(
            f"labels must be within 0..{cfg.num_classes - 1} for this model, "
            f"got {lab.min()}..{lab.max()}"
        )
    chosen = training_slices(lab, proposal, reviewed, slices)
    norm = normalize_intensity(img)
    data = slices_from_volume(norm, lab, cfg.image_size, chosen, normalized=True, name="scan")
    train_idx, held_idx = split_holdout(len(chosen), holdout if len(chosen) >= 4 else 0, seed)
    train_set, val_set = data.subset(train_idx), data.subset(held_idx) if held_idx else None
    if replay:
        train_set = SliceSet.concat(
            [train_set, replay_slices(cfg.image_size, cfg.in_channels, cfg.num_classes, seed=seed)]
        )
    store = store if isinstance(store, ModelStore) else ModelStore(store)
    before = None
    if val_set is not None:
        before = validate(base_net.to(dev), cfg, val_set, steps=20, ensemble=1, seed=seed)
    tcfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        ema_decay=0.99,
        val_every=val_every or max(1, steps // 5),
        save_every=steps,
        seed=seed,
        augment=augment,
        freeze_condition=freeze_condition,
    )
    aug = AugmentConfig(rotate_deg=8.0, scale=(0.92, 1.08), translate=0.04)
    store.root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=store.root))
    try:
        result = train(
            cfg,
            tcfg,
            train_set,
            work,
            val=val_set,
            device=dev,
            init_state=base_net.state_dict(),
            augment=aug,
            on_progress=on_progress,
            cancel=cancel,
        )
        source = result.best or result.last
        if source is None or result.steps_done == 0:
            raise Cancelled("fine-tuning cancelled before the first step; no version saved")
        from safetensors.torch import load_file

        state = load_file(str(source / WEIGHTS))
        provenance = {
            "base_model": {
                "name": info.name,
                "path": str(base_path),
                "sha256": file_sha256(base_path / WEIGHTS),
            },
            "image_files": [str(p) for p in image_files],
            "slices": chosen,
            "train_slices": [chosen[i] for i in train_idx],
            "held_out_slices": [chosen[i] for i in held_idx],
            "reviewed_slices": sorted(int(s) for s in reviewed),
            "steps": steps,
            "steps_done": result.steps_done,
            "lr": lr,
            "batch_size": batch_size,
            "replay": replay,
            "freeze_condition": freeze_condition,
            "losses": [round(v, 6) for v in result.losses],
            "held_out_dice": result.val_dice,
            "held_out_dice_before": before,
            "held_out_dice_best": result.best_dice,
            "partial": result.cancelled,
            "device": str(dev),
            "package_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        meta = {"base": info.name, "partial": result.cancelled, "val_dice": result.best_dice}
        path = store.save_version(info.name, state, cfg, meta=meta, provenance=provenance)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return FinetuneResult(path, provenance)


def finetune_files(args: argparse.Namespace) -> str:
    """CLI: read scan + corrected labels (+ proposal), fine-tune, describe the result."""
    from napari_medsegdiff.inputs import read_scan
    from napari_medsegdiff.nifti import read_volume
    from napari_medsegdiff.segmenter import parse_slices

    volume = read_scan(args.image, series=getattr(args, "series", None))
    labels_vol = read_volume(args.labels)
    if not volume.geometry.same_space(labels_vol.geometry):
        raise InputError(
            f"--labels {args.labels}: not in the same space (shape/affine) as {args.image[0]}"
        )
    labels = np.rint(labels_vol.data).astype(np.int64)
    if labels.size and labels.min() < 0:
        raise InputError(
            f"--labels {args.labels}: negative label value {labels.min()}; "
            "labels are 0 (background), 1, 2, ..."
        )
    proposal = None
    if args.proposal:
        proposal = np.rint(read_volume(args.proposal).data).astype(np.int64)
    slices = parse_slices(args.slices, labels.shape[0]) if args.slices else None
    if slices is None and proposal is None:
        raise InputError("say which slices were corrected: pass --slices or --proposal")
    result = finetune(
        args.model,
        volume.data,
        labels,
        slices=slices,
        proposal=proposal,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        device=args.device,
        replay=args.replay,
        freeze_condition=args.freeze_condition,
        store=args.out,
        image_files=args.image,
        seed=args.seed,
    )
    return result.summary()
