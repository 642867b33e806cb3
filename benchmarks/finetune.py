"""Fine-tuning on corrections: does Dice rise on the slices the user did not correct?

Takes the sample scan with a contrast the base model never saw (strong gamma + bias field),
segments it with the base model, "corrects" a few slices with the reference labels,
fine-tunes, re-segments the other slices and prints Dice before/after and the wall time.
Also times 200 steps on 10 slices of 128 px.

    python benchmarks/finetune.py [--model DIR] [--corrected 5] [--steps 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from napari_medsegdiff._sample_data import sample_paths
from napari_medsegdiff.checkpoints import ModelStore, resolve_model
from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.finetune import finetune
from napari_medsegdiff.metrics import dice
from napari_medsegdiff.nifti import read_volume
from napari_medsegdiff.segmenter import Segmenter


def shifted_contrast(image: np.ndarray, gamma: float = 2.5, bias: float = 0.8) -> np.ndarray:
    """A gamma + smooth bias-field change outside the training augmentation range."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    unit = np.clip((image - lo) / (hi - lo), 0, 1) ** gamma
    z, y, x = np.meshgrid(*(np.linspace(-0.5, 0.5, n) for n in image.shape), indexing="ij")
    field = np.exp(bias * (0.6 * y - 0.8 * x + 0.3 * z))
    return (unit * field * (hi - lo) + lo).astype(np.float32)


def mean_dice(
    seg: Segmenter, image: np.ndarray, labels: np.ndarray, slices: list[int], ensemble: int
) -> float:
    results = seg.segment_volume(
        image, slices=slices, sampler=SamplerConfig(steps=20, ensemble=ensemble)
    )
    scores = []
    for r in results:
        scores.append(np.mean([dice(r.mask == k, labels[r.index] == k) for k in (1, 2)]))
    return float(np.mean(scores))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--corrected", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval-slices", type=int, default=12)
    parser.add_argument("--ensemble", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = resolve_model(args.model)
    t1, tissue = sample_paths()
    image = shifted_contrast(read_volume(t1).data)
    labels = np.rint(read_volume(tissue).data).astype(np.int64)
    brain = [i for i in range(labels.shape[0]) if labels[i].sum() > 500]
    corrected = [int(v) for v in np.linspace(brain[5], brain[-6], args.corrected).round()]
    others = [i for i in brain if i not in corrected]
    evaluated = [others[int(i)] for i in np.linspace(0, len(others) - 1, args.eval_slices)]
    seg = Segmenter.load(base, "cpu")
    before = mean_dice(seg, image, labels, evaluated, args.ensemble)
    print(
        f"base model {base.name}: mean GM/WM Dice {before:.3f} on {len(evaluated)} slices "
        f"not used for fine-tuning (shifted contrast, DPM-Solver++ 20 x {args.ensemble})"
    )
    store = ModelStore(tempfile.mkdtemp(prefix="ft-bench-"))
    start = time.perf_counter()
    result = finetune(
        base,
        image,
        labels,
        slices=corrected,
        steps=args.steps,
        lr=args.lr,
        batch_size=4,
        device="cpu",
        store=store,
        holdout=0.0,
    )
    wall = time.perf_counter() - start
    after = mean_dice(Segmenter.load(result.path, "cpu"), image, labels, evaluated, args.ensemble)
    print(
        f"fine-tuned on {len(corrected)} corrected slices {corrected}, {args.steps} steps: "
        f"{wall:.0f} s; Dice {before:.3f} -> {after:.3f} ({after - before:+.3f})"
    )
    ten = brain[:: max(1, len(brain) // 10)][:10]
    start = time.perf_counter()
    finetune(
        base,
        image,
        labels,
        slices=ten,
        steps=200,
        lr=args.lr,
        batch_size=4,
        device="cpu",
        store=store,
        holdout=0.0,
    )
    print(f"timing: 200 steps on 10 slices of 128 px took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
