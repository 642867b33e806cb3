"""What a fine-tuning run will train on and hold out, said before it runs (no Qt here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_medsegdiff.data import split_holdout
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.finetune import corrected_slices, training_slices
from napari_medsegdiff.metrics import dice

HOLDOUT_FRACTION = 0.2
MIN_FOR_HOLDOUT = 4  # the engine holds nothing out below this many slices
MODES = {  # the first is the default: with a handful of slices each one counts (BENCHMARKS.md)
    "train on all slices": "all",
    "hold out 1 in 5 to measure Dice": "holdout",
}


@dataclass
class Plan:
    """Slices to train on / hold out, and why; ``holdout`` is the fraction for the engine."""

    train: list[int] = field(default_factory=list)
    held_out: list[int] = field(default_factory=list)
    corrected: list[int] = field(default_factory=list)
    reviewed: list[int] = field(default_factory=list)
    holdout: float = 0.0
    proposal_dice: float | None = None
    note: str = ""

    @property
    def ready(self) -> bool:
        return bool(self.train)


def _fmt(indices: Sequence[int]) -> str:
    from napari_medsegdiff.gui.widgets import slice_list

    return slice_list(list(indices))


def proposal_dice(labels: np.ndarray, proposal: np.ndarray, slices: Sequence[int]) -> float | None:
    """Mean Dice over foreground labels of the model's proposal vs the corrections."""
    if not slices:
        return None
    lab, prop = labels[list(slices)], proposal[list(slices)]
    values = sorted((set(np.unique(lab).tolist()) | set(np.unique(prop).tolist())) - {0})
    if not values:
        return None
    return float(np.mean([dice(prop == v, lab == v) for v in values]))


def make_plan(
    labels: np.ndarray,
    proposal: np.ndarray | None,
    reviewed: Sequence[int],
    mode: str = "holdout",
    seed: int = 0,
) -> Plan:
    """The plan for (z, y, x) ``labels``; ``proposal`` None means hand-drawn labels."""
    slices = None
    if proposal is None:  # hand-drawn labels: every labelled slice counts
        slices = [int(z) for z in np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))]
    try:
        chosen = training_slices(labels, proposal, reviewed, slices)
    except InputError as exc:
        return Plan(note=f"nothing to train on yet: {exc}")
    corrected = corrected_slices(labels, proposal) if proposal is not None else chosen
    rev = sorted(set(int(s) for s in reviewed) - set(corrected))
    holdout = HOLDOUT_FRACTION if mode == "holdout" and len(chosen) >= MIN_FOR_HOLDOUT else 0.0
    train_idx, held_idx = split_holdout(len(chosen), holdout, seed)
    plan = Plan(
        train=[chosen[i] for i in train_idx],
        held_out=[chosen[i] for i in held_idx],
        corrected=[z for z in corrected if z in chosen],
        reviewed=[z for z in rev if z in chosen],
        holdout=holdout,
    )
    if proposal is not None:
        plan.proposal_dice = proposal_dice(labels, proposal, plan.corrected)
    plan.note = describe(plan, mode, hand_drawn=proposal is None)
    return plan


def describe(plan: Plan, mode: str, hand_drawn: bool = False) -> str:
    """Plain sentences: what trains, what is held out and why, which Dice will be shown."""
    if hand_drawn:
        source = f"{len(plan.corrected)} labelled slice(s) (hand-drawn labels, no proposal)"
    else:
        parts = []
        if plan.corrected:
            parts.append(f"{len(plan.corrected)} corrected ({_fmt(plan.corrected)})")
        if plan.reviewed:
            parts.append(f"{len(plan.reviewed)} reviewed ({_fmt(plan.reviewed)})")
        source = " + ".join(parts)
    lines = [f"Uses {source}."]
    if plan.held_out:
        lines.append(
            f"Trains on {_fmt(plan.train)}; holds out {_fmt(plan.held_out)} "
            "(not trained on) to measure Dice before and after."
        )
    else:
        why = (
            "as chosen"
            if mode == "all"
            else f"fewer than {MIN_FOR_HOLDOUT} slices, so none is held out"
        )
        lines.append(f"Trains on all {len(plan.train)} slice(s) ({why}); no held-out Dice.")
    if plan.proposal_dice is not None:
        lines.append(f"Model's proposal vs your corrections: Dice {plan.proposal_dice:.3f}.")
    return " ".join(lines)
