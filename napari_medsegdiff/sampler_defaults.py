"""Sampling defaults by measurement: the cheapest steps x ensemble within a tolerance of
50 steps x ensemble 10.

A model's recommended sampler (``config.json`` -> ``sampler``) is chosen on slices it never
trained on: each candidate (steps, ensemble) is scored by a caller-supplied function (mean
foreground Dice), and the winner is the candidate with the fewest network passes per slice
(steps x ensemble; the condition branch runs once per slice whatever the setting) whose score
is within ``tolerance`` of the reference, with enough members for the variance layer to mean
something. ``benchmarks/defaults.py`` uses it on the shipped model's held-out slices;
``medsegdiff train --choose-sampler`` on a training run's validation slices.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_medsegdiff.checkpoints import CONFIG, read_model_info
from napari_medsegdiff.config import ModelConfig
from napari_medsegdiff.data import SliceSet
from napari_medsegdiff.folder_io import write_json_synced
from napari_medsegdiff.validation import validate

#: Candidate DPM-Solver++ step counts and ensemble sizes.
STEPS: tuple[int, ...] = (2, 3, 5, 10, 20)
ENSEMBLES: tuple[int, ...] = (1, 2, 3, 5, 10)
#: The setting every candidate is compared with: (steps, ensemble).
REFERENCE: tuple[int, int] = (50, 10)
TOLERANCE = 0.005
#: Fewest ensemble members a default may have (the variance layer needs several samples).
MIN_ENSEMBLE = 3

Setting = tuple[int, int]


@dataclass(frozen=True)
class SamplerChoice:
    """The chosen (steps, ensemble), its score, the reference score and every score seen."""

    steps: int
    ensemble: int
    dice: float
    reference_dice: float
    tolerance: float
    table: dict[Setting, float] = field(default_factory=dict)

    def config_section(self, by: str) -> dict[str, Any]:
        """``sampler`` and ``sampler_measured`` entries for a model's config.json."""
        return {
            "sampler": {"steps": self.steps, "ensemble": self.ensemble, "seed": 0},
            "sampler_measured": {
                "by": by,
                "reference": {
                    "steps": REFERENCE[0],
                    "ensemble": REFERENCE[1],
                    "dice": self.reference_dice,
                },
                "dice": self.dice,
                "tolerance": self.tolerance,
            },
        }


def cheapest_within(
    table: dict[Setting, float],
    reference_dice: float,
    tolerance: float = TOLERANCE,
    min_ensemble: int = MIN_ENSEMBLE,
) -> Setting:
    """Fewest passes (then fewest steps) with score >= reference - tolerance; else REFERENCE."""
    good = [k for k, v in table.items() if v >= reference_dice - tolerance and k[1] >= min_ensemble]
    return min(good, key=lambda k: (k[0] * k[1], k[0])) if good else REFERENCE


def choose_sampler(
    score: Callable[[int, int], float],
    steps: Iterable[int] = STEPS,
    ensembles: Iterable[int] = ENSEMBLES,
    tolerance: float = TOLERANCE,
    min_ensemble: int = MIN_ENSEMBLE,
    log: Callable[[str], None] | None = None,
) -> SamplerChoice:
    """Score the reference and every candidate with ``score(steps, ensemble)``; pick one."""
    reference = score(*REFERENCE)
    ensembles = [e for e in ensembles if e >= min_ensemble]
    table = {(s, e): score(s, e) for s in steps for e in ensembles}
    best = cheapest_within(table, reference, tolerance, min_ensemble)
    if log is not None:
        log(
            f"sampler: {best[0]} steps x ensemble {best[1]} (Dice "
            f"{table.get(best, reference):.4f}; {REFERENCE[0]} x {REFERENCE[1]}: {reference:.4f})"
        )
    return SamplerChoice(best[0], best[1], table.get(best, reference), reference, tolerance, table)


def validation_score(
    model: torch.nn.Module, cfg: ModelConfig, val: SliceSet
) -> Callable[[int, int], float]:
    """``score(steps, ensemble)``: mean foreground Dice on ``val`` (seed 0, as users sample)."""
    return lambda steps, ensemble: validate(model, cfg, val, steps, ensemble, seed=0)


def write_sampler(model_dir: str | Path, choice: SamplerChoice, by: str) -> Path:
    """Store ``choice`` in ``model_dir/config.json`` (atomically; weights untouched)."""
    info = read_model_info(model_dir)
    meta = dict(info.meta, **choice.config_section(by))
    path = Path(model_dir) / CONFIG
    tmp = path.with_name(f".{CONFIG}.tmp")
    write_json_synced(tmp, meta)
    os.replace(tmp, path)
    return path
