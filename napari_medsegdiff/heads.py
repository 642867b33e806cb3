"""Change the classes a model segments: grow the mask head, or build one for a new task.

The mask (K channels) enters a MedSegDiff network in exactly three places: the V2 anchor
head (condition UNet, out channels K), the mask branch's stem (in channels K) and its
output convolution (out channels K). Every tensor whose shape depends on K is found by
comparing the state dicts of the K- and K'-class networks, so this works for V1 and V2
and for any preset.

* :func:`grow_classes` keeps the old classes bit for bit (channels ``0..K-1``) and starts
  each new output channel as a copy of a *parent* class (the class the new structure was
  part of before: usually background); new input channels start at zero, so the network
  initially ignores them.
* :func:`new_task_head` keeps the image/condition weights and builds the mask head for the
  user's classes: background from the old background, every foreground class from the
  mean of the old foreground channels.

A binary model (K = 1, foreground logit) becomes one-hot (background = -foreground).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from napari_medsegdiff.config import ModelConfig
from napari_medsegdiff.errors import InputError

Tensor = torch.Tensor
MAX_CLASSES = 64


def _k_axes(cfg: ModelConfig) -> dict[str, int]:
    """Tensors whose shape follows K (the mask channels): name -> the axis of K."""
    from napari_medsegdiff.model import build_model

    with torch.device("meta"):
        old = build_model(cfg).state_dict()
        new = build_model(_with_k(cfg, cfg.mask_channels + 1)).state_dict()
    out = {}
    for name, tensor in old.items():
        axes = [a for a, (o, n) in enumerate(zip(tensor.shape, new[name].shape)) if o != n]
        if len(axes) > 1:
            raise InputError(f"cannot change the classes of tensor {name!r}")
        if axes:
            out[name] = axes[0]
    return out


def _is_input(tensor: Tensor, axis: int) -> bool:
    """The stem convolution reads the mask: K is its input axis."""
    return axis == 1 and tensor.ndim == 4


def _with_k(cfg: ModelConfig, k: int) -> ModelConfig:
    return ModelConfig.from_dict({**cfg.to_dict(), "mask_channels": k})


def _one_hot_rows(tensor: Tensor, axis: int) -> list[Tensor]:
    """Per-class slices along ``axis``. A binary model's one channel becomes
    [-fg, fg] on the output side and [0, fg] on the input side (stem)."""
    rows = list(tensor.unbind(axis))
    if len(rows) == 1:
        background = torch.zeros_like(rows[0]) if _is_input(tensor, axis) else -rows[0]
        rows = [background, rows[0]]
    return rows


def grow_classes(
    state: Mapping[str, Tensor],
    cfg: ModelConfig,
    classes: int,
    parents: Mapping[int, int] | None = None,
) -> tuple[dict[str, Tensor], ModelConfig]:
    """Grow the mask head from ``cfg.num_classes`` to ``classes`` (background included).

    Old channels keep their weights; a new class ``c`` starts as a copy of
    ``parents.get(c, 0)`` on the output side and at zero on the input side (stem).
    """
    old_k = cfg.num_classes
    if not old_k < classes <= MAX_CLASSES:
        raise InputError(f"cannot grow a {old_k}-class model to {classes} classes")
    parents = dict(parents or {})
    out = {k: v.clone() for k, v in state.items()}
    for name, axis in _k_axes(cfg).items():
        rows = _one_hot_rows(state[name], axis)
        stem = _is_input(state[name], axis)
        for c in range(len(rows), classes):
            parent = parents.get(c, 0)
            rows.append(torch.zeros_like(rows[0]) if stem else rows[parent].clone())
        out[name] = torch.stack(rows, axis).contiguous()
    return out, _with_k(cfg, classes)


def new_task_head(
    state: Mapping[str, Tensor], cfg: ModelConfig, classes: int
) -> tuple[dict[str, Tensor], ModelConfig]:
    """A mask head for exactly ``classes`` classes (background included, at least 2):
    background from the old background, each foreground class from the mean of the old
    foreground channels; the image/condition weights are kept."""
    if not 2 <= classes <= MAX_CLASSES:
        raise InputError(f"a new model needs 2..{MAX_CLASSES} classes, got {classes}")
    out = {k: v.clone() for k, v in state.items()}
    for name, axis in _k_axes(cfg).items():
        rows = _one_hot_rows(state[name], axis)
        foreground = torch.stack(rows[1:]).mean(0)
        fresh = [rows[0]] + [foreground.clone() for _ in range(classes - 1)]
        out[name] = torch.stack(fresh, axis).contiguous()
    return out, _with_k(cfg, classes)


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
