"""Fine-tune a model on the user's corrected slices into a *new* version in the model store.

The base model's files are only read. Training data are the slices whose labels differ
from the model's kept proposal, plus slices marked reviewed (or an explicit list). A
fraction is held out to report Dice with the fast sampler; the best weights are kept, and
a cancel still saves the best so far, marked partial.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_medsegdiff import __version__
from napari_medsegdiff.augment import AugmentConfig
from napari_medsegdiff.checkpoints import (
    WEIGHTS,
    ModelInfo,
    ModelStore,
    file_sha256,
    load_model,
    resolve_model,
    save_model,
)
from napari_medsegdiff.config import (
    FINETUNE_CLASS_BALANCE,
    FINETUNE_HEAD_LR_SCALE,
    FINETUNE_LR,
    FINETUNE_STEPS,
    TrainConfig,
)
from napari_medsegdiff.data import SliceSet, slices_from_volume, split_holdout
from napari_medsegdiff.devices import choose_device
from napari_medsegdiff.errors import Cancelled, InputError
from napari_medsegdiff.heads import (
    MAX_CLASSES,
    class_names,
    grow_classes,
    head_parameter_names,
    new_task_head,
)
from napari_medsegdiff.preprocessing import normalize_intensity
from napari_medsegdiff.progress import CancelToken, ProgressCallback
from napari_medsegdiff.training import train
from napari_medsegdiff.validation import validate

DEFAULT_STEPS = FINETUNE_STEPS
DEFAULT_LR = FINETUNE_LR


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

    def classes_line(self) -> str | None:
        """One line naming the classes that were added (or the new model's classes)."""
        names = self.provenance.get("classes", {})
        added = self.provenance.get("added_classes", [])
        if not added:
            return None
        listed = ", ".join(f"{c} = {names.get(str(c), f'class {c}')}" for c in added)
        if self.provenance.get("class_change") == "new":
            return f"new model for {len(added)} class(es) besides background: {listed}"
        return f"added {len(added)} class(es) the base model did not have: {listed}"


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
    from napari_medsegdiff.nifti import read_volume
    from napari_medsegdiff.sample import sample_paths

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


@dataclass(frozen=True)
class ClassPlan:
    """How the model's classes change: ``mode`` is 'keep', 'grow' or 'new'."""

    mode: str
    classes: int
    added: tuple[int, ...] = ()
    parents: dict[int, int] = field(default_factory=dict)


def plan_classes(base_classes: int, labels: np.ndarray, new_model: bool) -> ClassPlan:
    """Which classes the fine-tuned model will have, from the labels' largest value."""
    top = int(labels.max()) if labels.size else 0
    if new_model:
        if top < 1:
            raise InputError("a new model needs labels with at least one structure (value 1+)")
        return ClassPlan("new", top + 1, tuple(range(1, top + 1)))
    if top < base_classes:
        return ClassPlan("keep", base_classes)
    return ClassPlan("grow", top + 1, tuple(range(base_classes, top + 1)))


def infer_parents(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    added: Sequence[int],
    proposal: torch.Tensor | None = None,
) -> dict[int, int]:
    """For each new class, the old class its pixels had: from the kept proposal, else
    the V2 anchor segmentation (one forward), else background.

    images [N, C, S, S], labels / proposal [N, S, S]."""
    if proposal is None:
        with torch.inference_mode():
            logits = model.encode_condition(images).anchor_logits
        if logits is None:
            return {c: 0 for c in added}
        proposal = (logits.argmax(1) if logits.shape[1] > 1 else logits[:, 0] > 0).long()
    parents = {}
    for c in added:
        under = proposal[labels == c]
        parents[c] = int(torch.bincount(under).argmax()) if under.numel() else 0
    return parents


def finetune(
    base_model: str | Path | None,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    slices: Sequence[int] | None = None,
    proposal: np.ndarray | None = None,
    reviewed: Sequence[int] = (),
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    augment: bool = True,
    replay: bool = False,
    freeze_condition: bool = False,
    class_balance: float = FINETUNE_CLASS_BALANCE,
    head_lr_scale: float = FINETUNE_HEAD_LR_SCALE,
    new_model: bool = False,
    class_names: Mapping[int, str] | None = None,
    holdout: float = 0.2,
    val_every: int | None = None,
    store: ModelStore | str | Path | None = None,
    out: str | Path | None = None,
    image_files: Sequence[str] = (),
    seed: int = 0,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> FinetuneResult:
    """Fine-tune ``base_model`` on slices of image (z, y, x[, c]) / labels (z, y, x).

    Label values above the model's classes add classes (the mask head grows, old classes
    keep their weights); ``new_model`` builds a head for exactly the labels' classes and
    keeps only the image/condition weights. The result goes to ``out`` (a new folder) or
    a new version in ``store``.
    """
    base_path = resolve_model(base_model)
    target = _fresh_folder(out) if out is not None else None
    dev = choose_device(device)
    base_net, info = load_model(base_path, "cpu")
    img, lab = _check_inputs(image, labels, info)
    plan = plan_classes(info.config.num_classes, lab, new_model)
    chosen = training_slices(lab, proposal, reviewed, slices)
    cfg = info.config
    norm = normalize_intensity(img)
    data = slices_from_volume(norm, lab, cfg.image_size, chosen, normalized=True, name="scan")
    init_state = base_net.state_dict()
    if plan.mode == "grow":
        kept = None
        if proposal is not None:
            kept = slices_from_volume(
                norm, np.asarray(proposal), cfg.image_size, chosen, normalized=True
            ).labels
        parents = infer_parents(base_net, data.images, data.labels, plan.added, kept)
        plan = ClassPlan(plan.mode, plan.classes, plan.added, parents)
        init_state, cfg = grow_classes(init_state, cfg, plan.classes, parents)
    elif plan.mode == "new":
        init_state, cfg = new_task_head(init_state, cfg, plan.classes)
    names = _class_names(info, plan, class_names)
    train_idx, held_idx = split_holdout(len(chosen), holdout if len(chosen) >= 4 else 0, seed)
    train_set, val_set = data.subset(train_idx), data.subset(held_idx) if held_idx else None
    if replay and plan.mode == "keep":
        train_set = SliceSet.concat(
            [train_set, replay_slices(cfg.image_size, cfg.in_channels, cfg.num_classes, seed=seed)]
        )
    store = store if isinstance(store, ModelStore) else ModelStore(store)
    before = None
    if val_set is not None and plan.mode == "keep":
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
        class_balance=class_balance,
        head_params=head_parameter_names(cfg) if plan.mode != "keep" else (),
        head_lr_scale=head_lr_scale,
    )
    aug = AugmentConfig(rotate_deg=8.0, scale=(0.92, 1.08), translate=0.04)
    scratch_root = target.parent if target is not None else store.root
    scratch_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=scratch_root))
    try:
        result = train(
            cfg,
            tcfg,
            train_set,
            work,
            val=val_set,
            device=dev,
            init_state=init_state,
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
            "classes": {str(k): v for k, v in names.items()},
            "class_change": plan.mode,
            "added_classes": list(plan.added),
            "class_parents": {str(k): v for k, v in plan.parents.items()},
            "steps": steps,
            "steps_done": result.steps_done,
            "lr": lr,
            "batch_size": batch_size,
            "replay": replay,
            "freeze_condition": freeze_condition,
            "class_balance": class_balance,
            "head_lr_scale": head_lr_scale if plan.mode != "keep" else 1.0,
            "losses": [round(v, 6) for v in result.losses],
            "held_out_dice": result.val_dice,
            "held_out_dice_before": before,
            "held_out_dice_best": result.best_dice,
            "partial": result.cancelled,
            "device": str(dev),
            "package_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        meta = {
            "base": info.name,
            "partial": result.cancelled,
            "val_dice": result.best_dice,
            "classes": {str(k): v for k, v in names.items()},
        }
        if target is not None:
            path = save_model(target, state, cfg, meta=meta, provenance=provenance)
        else:
            path = store.save_version(info.name, state, cfg, meta=meta, provenance=provenance)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return FinetuneResult(path, provenance)


def _check_inputs(
    image: np.ndarray, labels: np.ndarray, info: ModelInfo
) -> tuple[np.ndarray, np.ndarray]:
    """image (z, y, x[, c]) float32 with the model's channels; labels (z, y, x) int64 >= 0."""
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
    if lab.size and lab.min() < 0:
        raise InputError(f"labels must be 0 (background), 1, 2, ...; got {lab.min()}")
    if lab.size and lab.max() >= MAX_CLASSES:
        raise InputError(f"labels go up to {lab.max()}; at most {MAX_CLASSES - 1} is supported")
    return img, lab


def _class_names(
    info: ModelInfo, plan: ClassPlan, given: Mapping[int, str] | None
) -> dict[int, str]:
    """Names of the new model's classes: the base's, then the user's for new ones."""
    names = class_names({} if plan.mode == "new" else info.meta, plan.classes)
    for key, value in (given or {}).items():
        if 0 < int(key) < plan.classes and str(value).strip():
            names[int(key)] = str(value).strip()
    return names


def _fresh_folder(out: str | Path) -> Path:
    """``--out`` names the new model folder itself: refuse a non-empty one."""
    folder = Path(out).expanduser()
    if folder.is_file():
        raise InputError(f"--out {folder}: is a file; give a new folder name")
    if folder.is_dir():
        if any(folder.iterdir()):
            raise InputError(f"--out {folder}: exists and is not empty; choose a new folder")
        folder.rmdir()  # an empty folder the user made for it: ours to fill
    return folder


def finetune_files(
    image_paths: Sequence[str],
    labels_path: str,
    *,
    proposal_path: str | None = None,
    slices: Sequence[int] | None = None,
    model: str | None = None,
    series: str | None = None,
    new_model: bool = False,
    out: str | None = None,
    store: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    on_progress: ProgressCallback | None = None,
    **settings: Any,
) -> FinetuneResult:
    """Files in, new model out: read the scan (NIfTI channels or a DICOM series) + corrected
    labels (+ proposal), fine-tune (``settings``: steps, lr, batch_size, replay, ...)."""
    from napari_medsegdiff.inputs import read_scan
    from napari_medsegdiff.nifti import read_volume

    volume = read_scan(list(image_paths), series=series)
    labels_vol = read_volume(labels_path)
    if not volume.geometry.same_space(labels_vol.geometry):
        raise InputError(f"{labels_path}: not in the same space (shape/affine) as {image_paths[0]}")
    labels = np.rint(labels_vol.data).astype(np.int64)
    if labels.size and labels.min() < 0:
        raise InputError(
            f"{labels_path}: negative label value {labels.min()}; "
            "labels are 0 (background), 1, 2, ..."
        )
    proposal = None
    if proposal_path:
        proposal = np.rint(read_volume(proposal_path).data).astype(np.int64)
    if slices is None and proposal is None:
        raise InputError("say which slices were corrected: pass --slices or --proposal")
    return finetune(
        model,
        volume.data,
        labels,
        slices=slices,
        proposal=proposal,
        new_model=new_model,
        device=device,
        store=store,
        out=out,
        image_files=list(image_paths),
        seed=seed,
        on_progress=on_progress,
        **settings,
    )
