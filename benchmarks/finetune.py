"""Fine-tuning on a few corrected slices: does the rest of the scan come out right?

Scenarios (benchmarks/scenarios.py): (a) a new class (lateral ventricles) added to the
default model, (b) a new model for a new task (a kidney in a synthetic CT), (c) a T2-like
contrast and a gamma + bias shift, (d) which 5 slices to correct: suggested vs evenly
spaced vs random, (e) a scan that was not skull-stripped (the brain inside a synthetic
head): the corrections erase the scalp. Each prints Dice on slices *not* corrected,
before and after, and the wall time of the fine-tune. Product defaults unless flags say otherwise.

    python benchmarks/finetune.py [--scenario all] [--variant 0] [--steps N] [--lr X]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from scenarios import SCENARIOS, Scenario

from napari_medsegdiff.checkpoints import read_model_info, recommended_sampler, resolve_model
from napari_medsegdiff.config import FinetuneSettings, SamplerConfig
from napari_medsegdiff.finetune import DEFAULT_LR, DEFAULT_STEPS, finetune
from napari_medsegdiff.metrics import dice
from napari_medsegdiff.segmenter import Segmenter
from napari_medsegdiff.suggest import suggest_slices


def evenly_spaced(candidates: list[int], count: int) -> list[int]:
    inner = candidates[2:-2] if len(candidates) > count + 4 else candidates
    return sorted({inner[int(i)] for i in np.linspace(0, len(inner) - 1, count).round()})


def scores(model, sc: Scenario, slices: list[int], sampler: SamplerConfig) -> dict[int, float]:
    """Mean Dice per scored class over ``slices`` (slices where a class is absent in both
    truth and prediction are skipped for that class)."""
    seg = Segmenter.load(model, "cpu")
    per: dict[int, list[float]] = {c: [] for c in sc.scored}
    for r in seg.segment_volume(sc.image, slices=slices, sampler=sampler):
        for c in sc.scored:
            truth, pred = sc.labels[r.index] == c, r.mask == c
            if truth.any() or pred.any():
                per[c].append(dice(pred, truth))
    return {c: float(np.mean(v)) if v else float("nan") for c, v in per.items()}


def threshold_baseline(sc: Scenario, train: list[int], evaluated: list[int]) -> float:
    """A simple baseline for a new task: the intensity range of the annotated voxels
    (2nd-98th percentile), then per slice the connected component nearest the annotated
    voxels' mean position (in-plane)."""
    from scipy import ndimage as ndi

    values = np.concatenate([sc.image[z][sc.labels[z] == 1] for z in train])
    lo, hi = np.percentile(values, [2, 98])
    where = np.concatenate([np.argwhere(sc.labels[z] == 1) for z in train])
    centre = where.mean(0)
    out = []
    for z in evaluated:
        mask = (sc.image[z] >= lo) & (sc.image[z] <= hi)
        parts, n = ndi.label(mask)
        if n:
            centres = np.array(ndi.center_of_mass(mask, parts, range(1, n + 1)))
            sizes = np.asarray(ndi.sum(mask, parts, range(1, n + 1)))
            distance = np.linalg.norm(centres - centre, axis=1) + 1e3 * (sizes < 10)
            mask = parts == int(np.argmin(distance)) + 1
        out.append(dice(mask, sc.labels[z] == 1))
    return float(np.mean(out))


def run_one(
    sc: Scenario, picked: list[int], args: argparse.Namespace, base, sampler, tag: str
) -> dict:
    evaluated_pool = [z for z in sc.slices if z not in picked]
    evaluated = evenly_spaced(evaluated_pool, args.eval_slices)
    names = {c: str(c) for c in sc.scored}
    if sc.new_model:
        before = {1: threshold_baseline(sc, picked, evaluated)}
        before_what = "threshold baseline"
    elif set(sc.scored) - set(range(3)):
        before = {c: 0.0 for c in sc.scored}  # the base model has no such class
        before_what = "base model (no such class)"
    else:
        before = scores(base, sc, evaluated, sampler)
        before_what = "base model"
    start = time.perf_counter()
    store = tempfile.mkdtemp(prefix="ft-bench-")
    chosen = FinetuneSettings(**{k: v for k, v in settings(args).items() if v is not None})
    result = finetune(
        base,
        sc.image,
        sc.labels,
        slices=picked,
        new_model=sc.new_model,
        device="cpu",
        store=store,
        settings=chosen,
    )
    wall = time.perf_counter() - start
    after = scores(result.path, sc, evaluated, sampler)
    if "classes" in result.provenance:
        names = {c: result.provenance["classes"].get(str(c), str(c)) for c in sc.scored}
    extra = {}
    if sc.name.startswith("new class"):
        extra = scores(
            result.path, Scenario(sc.name, sc.image, sc.labels, [], (1, 2)), evaluated, sampler
        )
    line = ", ".join(f"{names[c]} {before[c]:.3f} -> {after[c]:.3f}" for c in sc.scored)
    if extra:
        line += f"; GM/WM after {np.nanmean(list(extra.values())):.3f}"
    print(
        f"[{tag}] {sc.name}: corrected {picked}, Dice on {len(evaluated)} other slices "
        f"({before_what} -> fine-tuned): {line}; fine-tune {wall:.0f} s "
        f"({result.provenance['steps_done']} steps)",
        flush=True,
    )
    return {"before": before, "after": after, "wall": wall, "extra": extra}


def settings(args: argparse.Namespace) -> dict:
    """Fine-tune settings given on the command line (None = the product default)."""
    return {
        "steps": args.steps or None,
        "lr": args.lr or None,
        "freeze_condition": args.freeze_condition or None,
        "holdout": args.holdout,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="all", choices=["all", "suggest", *SCENARIOS])
    parser.add_argument("--variant", type=int, default=0, help="0 = the reference variant")
    parser.add_argument("--model", default=None)
    parser.add_argument("--corrected", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0, help=f"default {DEFAULT_STEPS}")
    parser.add_argument("--lr", type=float, default=0.0, help=f"default {DEFAULT_LR}")
    parser.add_argument("--holdout", type=float, default=None)
    parser.add_argument("--freeze-condition", action="store_true")
    parser.add_argument("--eval-slices", type=int, default=10)
    parser.add_argument("--ensemble", type=int, default=0, help="default: the model's")
    parser.add_argument("--sampling-steps", type=int, default=0, help="default: the model's")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = resolve_model(args.model)
    recommended = recommended_sampler(read_model_info(base).meta)  # the product's defaults
    sampler = SamplerConfig(
        steps=args.sampling_steps or recommended.get("steps", 20),
        ensemble=args.ensemble or recommended.get("ensemble", 5),
    )
    print(f"scoring with DPM-Solver++ {sampler.steps} steps x ensemble {sampler.ensemble}")
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    if args.scenario == "all":
        names.append("suggest")
    for name in names:
        if name == "suggest":
            sc = SCENARIOS["t2"](args.variant)
            rng = np.random.default_rng(args.variant)
            picks = {
                "suggested": suggest_slices(base, sc.image, count=args.corrected).slices,
                "evenly spaced": evenly_spaced(sc.slices, args.corrected),
                "random": sorted(rng.choice(sc.slices, args.corrected, replace=False).tolist()),
            }
            for tag, picked in picks.items():
                run_one(sc, picked, args, base, sampler, f"suggest: {tag}")
            continue
        sc = SCENARIOS[name](args.variant)
        run_one(sc, evenly_spaced(sc.slices, args.corrected), args, base, sampler, name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
