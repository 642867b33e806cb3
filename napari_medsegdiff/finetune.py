"""Fine-tune a model on the user's corrected slices into a *new* version in the model store.

The base model's files are only read. Training data are the slices whose labels differ
from the model's kept proposal, plus slices marked reviewed (or an explicit list). A
fraction is held out to report Dice with the fast sampler; the best weights are kept, and
a cancel still saves the best so far, marked partial.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_medsegdiff import __version__
from napari_medsegdiff import config as _defaults
from napari_medsegdiff.augment import AugmentConfig
from napari_medsegdiff.checkpoints import (
    WEIGHTS,
    ModelInfo,
    ModelStore,
    class_names,
    file_sha256,
    load_model,
    resolve_model,
    save_model,
)
from napari_medsegdiff.config import (
    FINETUNE_LR,
    FINETUNE_STEPS,
    FinetuneSettings,
    ModelConfig,
    TrainConfig,
)
from napari_medsegdiff.data import (
    SliceSet,
    image_and_labels,
    replay_slices,
    slices_from_volume,
    split_holdout,
)
from napari_medsegdiff.devices import choose_device
from napari_medsegdiff.errors import Cancelled, InputError
from napari_medsegdiff.heads import (
    MAX_CLASSES,
    ClassPlan,
    grow_classes,
    infer_parents,
    new_task_head,
    plan_classes,
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
        painted = self.provenance.get("painted_dice_best")
        if after is None and painted is not None:
            fitted = " (fitted: stopped early)" if self.provenance.get("stopped_fitted") else ""
            dice = f"; painted slices come back at Dice {painted:.3f}{fitted}"
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
            "(or mark them reviewed) first, or name the corrected slices"
        )
    bad = [s for s in chosen if not 0 <= s < labels.shape[0]]
    if bad:
        raise InputError(
            f"slices {bad[:5]} outside the volume's 0..{labels.shape[0] - 1}", argument="slices"
        )
    return chosen


def finetune(
    base_model: str | Path | None,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    slices: Sequence[int] | None = None,
    proposal: np.ndarray | None = None,
    reviewed: Sequence[int] = (),
    settings: FinetuneSettings | None = None,
    device: str | torch.device = "auto",
    new_model: bool = False,
    class_names: Mapping[int, str] | None = None,
    store: ModelStore | str | Path | None = None,
    out: str | Path | None = None,
    image_files: Sequence[str] = (),
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **overrides: Any,
) -> FinetuneResult:
    """Fine-tune ``base_model`` on slices of image (z, y, x[, c]) / labels (z, y, x).

    ``settings`` holds the training knobs (steps, lr, batch size, augmentation, replay,
    freezing, hold-out, validation interval, seed); keyword ``overrides`` of its fields
    (``steps=50``) are a shorthand for scripts and tests. Label values above the model's
    classes add classes (the mask head grows, old classes keep their weights);
    ``new_model`` builds a head for exactly the labels' classes and keeps only the
    image/condition weights. The result goes to ``out`` (a new folder) or a new version in
    ``store``.
    """
    settings = dataclasses.replace(settings or FinetuneSettings(), **overrides)
    seed = settings.seed
    base_path = resolve_model(base_model)
    target = _fresh_folder(out) if out is not None else None
    dev = choose_device(device)
    base_net, info = load_model(base_path, "cpu")
    img, lab = _check_inputs(image, labels, info)
    chosen = training_slices(lab, proposal, reviewed, slices)
    prep = _prepare(base_net, info, img, lab, chosen, proposal, new_model, settings.holdout, seed)
    plan, cfg = prep.plan, prep.cfg
    names = _class_names(info, plan, class_names)
    painted_set = prep.train_set  # before replay slices join: the fit check's slices
    if settings.replay and plan.mode == "keep":
        extra = replay_slices(
            cfg.image_size, cfg.in_channels, cfg.num_classes, seed=seed, context=cfg.context
        )
        prep.train_set = SliceSet.concat([prep.train_set, extra])
    store = store if isinstance(store, ModelStore) else ModelStore(store)
    before = None
    if prep.val_set is not None and plan.mode == "keep":
        before = validate(base_net.to(dev), cfg, prep.val_set, steps=20, ensemble=1, seed=seed)
    sampler_steps = _sampler_steps(info)
    fit_check = prep.val_set is None  # no held-out slices: check the fit on the painted ones
    tcfg = _train_config(settings, sampler_steps, fit_check)
    val_set = painted_set if fit_check else prep.val_set
    aug = AugmentConfig(rotate_deg=8.0, scale=(0.92, 1.08), translate=0.04)
    scratch_root = target.parent if target is not None else store.root
    scratch_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=scratch_root))
    try:
        result = train(
            cfg, tcfg, prep.train_set, work, val=val_set, device=dev,
            init_state=prep.init_state, augment=aug, on_progress=on_progress, cancel=cancel,
        )  # fmt: skip
        provenance = _provenance(
            info, base_path, image_files, chosen, prep, reviewed, names, settings, result,
            before, dev,
        )  # fmt: skip
        path = _save_result(result, info, cfg, names, provenance, target, store)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return FinetuneResult(path, provenance)


def _save_result(
    result: Any,
    info: ModelInfo,
    cfg: ModelConfig,
    names: Mapping[int, str],
    provenance: dict[str, Any],
    target: Path | None,
    store: ModelStore,
) -> Path:
    """The run's best (else last) weights as the ``target`` folder or a new store version."""
    source = result.best or result.last
    if source is None or result.steps_done == 0:
        raise Cancelled("fine-tuning cancelled before the first step; no version saved")
    from safetensors.torch import load_file

    state = load_file(str(source / WEIGHTS))
    meta = {
        "base": info.name,
        "partial": result.cancelled,
        "val_dice": result.best_dice,
        "classes": {str(k): v for k, v in names.items()},
    }
    if "sampler" in info.meta:  # the base's measured sampling defaults carry over
        meta["sampler"] = info.meta["sampler"]
    if target is not None:
        return save_model(target, state, cfg, meta=meta, provenance=provenance)
    return store.save_version(info.name, state, cfg, meta=meta, provenance=provenance)


@dataclass
class _Prepared:
    """Training data and starting point of a fine-tune run."""

    cfg: ModelConfig
    plan: ClassPlan
    init_state: dict[str, torch.Tensor]
    train_idx: list[int]
    held_idx: list[int]
    train_set: SliceSet
    val_set: SliceSet | None


def _prepare(
    base_net: torch.nn.Module,
    info: ModelInfo,
    img: np.ndarray,
    lab: np.ndarray,
    chosen: list[int],
    proposal: np.ndarray | None,
    new_model: bool,
    holdout: float,
    seed: int,
) -> _Prepared:
    """Model-sized slices, the class plan (grown / new head) and the hold-out split."""
    cfg = info.config
    plan = plan_classes(cfg.num_classes, lab, new_model)
    norm = normalize_intensity(img)
    data = slices_from_volume(
        norm, lab, cfg.image_size, chosen, normalized=True, name="scan", context=cfg.context
    )
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
    train_idx, held_idx = split_holdout(len(chosen), holdout if len(chosen) >= 4 else 0, seed)
    val_set = data.subset(held_idx) if held_idx else None
    return _Prepared(cfg, plan, init_state, train_idx, held_idx, data.subset(train_idx), val_set)


def _sampler_steps(info: ModelInfo) -> int:
    section = info.meta.get("sampler")
    steps = section.get("steps") if isinstance(section, Mapping) else None
    return int(steps) if isinstance(steps, int) and steps > 0 else 20


def _train_config(
    settings: FinetuneSettings, sampler_steps: int = 20, fit_check: bool = False
) -> TrainConfig:
    """The fine-tune loop: EMA 0.99; with ``fit_check`` the painted slices
    are sampled every FINETUNE_CHECK_EVERY steps as the product samples them, and training
    stops once they come back at FINETUNE_STOP_DICE. Else about 5 validations."""
    steps = settings.steps
    every = _defaults.FINETUNE_CHECK_EVERY if fit_check else max(1, steps // 5)
    return TrainConfig(
        steps=steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        ema_decay=0.99,
        val_every=settings.val_every or every,
        val_steps=sampler_steps if fit_check else 20,
        save_every=steps,
        seed=settings.seed,
        augment=settings.augment,
        freeze_condition=settings.freeze_condition,
        stop_at_dice=_defaults.FINETUNE_STOP_DICE if fit_check else None,
    )


def _provenance(
    info: ModelInfo,
    base_path: Path,
    image_files: Sequence[str],
    chosen: list[int],
    prep: _Prepared,
    reviewed: Sequence[int],
    names: Mapping[int, str],
    settings: FinetuneSettings,
    result: Any,
    before: float | None,
    dev: torch.device,
) -> dict[str, Any]:
    """What ``provenance.json`` records about a fine-tuned version."""
    plan = prep.plan
    return {
        "base_model": {
            "name": info.name,
            "path": str(base_path),
            "sha256": file_sha256(base_path / WEIGHTS),
        },
        "image_files": [str(p) for p in image_files],
        "slices": chosen,
        "train_slices": [chosen[i] for i in prep.train_idx],
        "held_out_slices": [chosen[i] for i in prep.held_idx],
        "reviewed_slices": sorted(int(s) for s in reviewed),
        "classes": {str(k): v for k, v in names.items()},
        "class_change": plan.mode,
        "added_classes": list(plan.added),
        "class_parents": {str(k): v for k, v in plan.parents.items()},
        "settings": dataclasses.asdict(settings),
        "steps": settings.steps,
        "steps_done": result.steps_done,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "replay": settings.replay,
        "freeze_condition": settings.freeze_condition,
        "losses": [round(v, 6) for v in result.losses],
        **_scores(prep, result, before),
        "partial": result.cancelled,
        "device": str(dev),
        "package_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _scores(prep: _Prepared, result: Any, before: float | None) -> dict[str, Any]:
    """Held-out Dice when slices were held out, else the fit check on the painted slices."""
    if prep.held_idx:
        return {
            "held_out_dice": result.val_dice,
            "held_out_dice_before": before,
            "held_out_dice_best": result.best_dice,
        }
    return {
        "painted_dice": result.val_dice,
        "painted_dice_best": result.best_dice,
        "stopped_fitted": result.best_dice is not None
        and _defaults.FINETUNE_STOP_DICE is not None
        and result.best_dice >= _defaults.FINETUNE_STOP_DICE,
    }


def _check_inputs(
    image: np.ndarray, labels: np.ndarray, info: ModelInfo
) -> tuple[np.ndarray, np.ndarray]:
    """image (z, y, x[, c]) float32 with the model's channels; labels (z, y, x) int64 >= 0."""
    cfg = info.config
    img, lab = image_and_labels(image, labels, "labels")
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
    names = dict(enumerate(class_names({} if plan.mode == "new" else info.meta, plan.classes)))
    for key, value in (given or {}).items():
        if 0 < int(key) < plan.classes and str(value).strip():
            names[int(key)] = str(value).strip()
    return names


def _fresh_folder(out: str | Path) -> Path:
    """``--out`` names the new model folder itself: refuse a non-empty one."""
    folder = Path(out).expanduser()
    if folder.is_file():
        raise InputError(f"{folder}: is a file; give a new folder name", argument="out")
    if folder.is_dir():
        if any(folder.iterdir()):
            raise InputError(
                f"{folder}: exists and is not empty; choose a new folder", argument="out"
            )
        folder.rmdir()  # an empty folder the user made for it: ours to fill
    return folder
