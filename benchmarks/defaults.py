"""Sampling defaults by measurement: the cheapest steps x ensemble whose held-out Dice is
within a tolerance of 50-step sampling at ensemble 10.

    python benchmarks/defaults.py [--model DIR] [--tolerance 0.005] [--write]

Held-out slices: those recorded in the model's config.json (never trained on), every
k-th up to 8 slices. Cost = steps x ensemble network passes per slice (the condition
branch runs once per slice whatever the setting). ``--write`` stores the winner as the
model's recommended ``sampler`` settings in its config.json (weights untouched).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from quality import CLASSES, auroc, load_heldout

from napari_medsegdiff.checkpoints import resolve_model
from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.metrics import dice
from napari_medsegdiff.sampler_defaults import (
    ENSEMBLES,
    MIN_ENSEMBLE,
    REFERENCE,
    STEPS,
    TOLERANCE,
    SamplerChoice,
    cheapest_within,
    write_sampler,
)
from napari_medsegdiff.segmenter import Segmenter


def mean_dice(seg: Segmenter, image, labels, slices, steps: int, ensemble: int) -> float:
    """Mean GM/WM Dice over ``slices`` (seed 0)."""
    sampler = SamplerConfig(steps=steps, ensemble=ensemble, seed=0)
    scores = []
    for r in seg.segment_volume(image, slices=slices, sampler=sampler):
        scores.append(np.mean([dice(r.mask == k, labels[r.index] == k) for k in CLASSES]))
    return float(np.mean(scores))


def variance_auroc(seg: Segmenter, image, labels, slices, steps: int, ensemble: int) -> float:
    """How well the variance flags wrong voxels (AUROC inside the head)."""
    sampler = SamplerConfig(steps=steps, ensemble=ensemble, seed=0)
    scores, wrong = [], []
    for r in seg.segment_volume(image, slices=slices, sampler=sampler):
        head = (labels[r.index] > 0) | (r.mask > 0)
        scores.append(r.variance[head])
        wrong.append((r.mask != labels[r.index])[head])
    return auroc(np.concatenate(scores), np.concatenate(wrong))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    parser.add_argument(
        "--min-ensemble",
        type=int,
        default=MIN_ENSEMBLE,
        help=f"the uncertainty layer needs several samples (default {MIN_ENSEMBLE})",
    )
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="store the winner in config.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = resolve_model(args.model)
    seg = Segmenter.load(model_dir, "cpu")
    image, labels, held, _ = load_heldout(model_dir)
    subset = held[:: max(1, len(held) // 8)][:8]
    start = time.perf_counter()
    reference = mean_dice(seg, image, labels, subset, *REFERENCE)
    print(
        f"model {seg.name}: {len(subset)} held-out slices; reference {REFERENCE[0]} steps x "
        f"ensemble {REFERENCE[1]}: mean GM/WM Dice {reference:.4f}"
    )
    print("steps \\ ensemble " + " ".join(f"{e:>7d}" for e in ENSEMBLES))
    table = {}
    for steps in STEPS:
        cells = []
        for ensemble in ENSEMBLES:
            table[(steps, ensemble)] = mean_dice(seg, image, labels, subset, steps, ensemble)
            cells.append(f"{table[(steps, ensemble)]:7.4f}")
        print(f"{steps:>16d} " + " ".join(cells), flush=True)
    best = cheapest_within(table, reference, args.tolerance, args.min_ensemble)
    print(
        f"cheapest with ensemble >= {args.min_ensemble} within {args.tolerance} of the "
        f"reference: {best[0]} steps x ensemble "
        f"{best[1]} (Dice {table.get(best, reference):.4f}, {best[0] * best[1]} passes per "
        f"slice vs 100 for 20 x 5); sweep took {time.perf_counter() - start:.0f} s"
    )
    for steps, ensemble in (best, (20, 5)):
        value = variance_auroc(seg, image, labels, subset, steps, ensemble)
        print(f"variance flags errors at {steps} x {ensemble}: AUROC {value:.3f}")
    if args.write:
        choice = SamplerChoice(
            best[0], best[1], table.get(best, reference), reference, args.tolerance, table
        )
        path = write_sampler(model_dir, choice, by="benchmarks/defaults.py")
        print(f"wrote the recommended sampler settings to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
