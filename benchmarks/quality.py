"""Quality of the shipped default model on the held-out sample slices, against a classic
baseline, plus step/ensemble sweeps and whether the variance flags the errors.

    python benchmarks/quality.py [--model DIR] [--quick] [--per-slice]

Held-out data: the contiguous block of axial slices recorded in the model's config.json
(never seen in training) and one unseen augmented variant of those slices (in-plane
rescale, rotation, bias field, gamma; fixed seed). Metrics come from the same engine as
``medsegdiff evaluate`` (predictions and truth are written as NIfTI and evaluated).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from napari_medsegdiff.checkpoints import recommended_sampler, resolve_model
from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.evaluate import evaluate_paths
from napari_medsegdiff.nifti import read_labels, read_volume
from napari_medsegdiff.sample import sample_paths
from napari_medsegdiff.segmenter import Segmenter

CLASSES = {1: "GM", 2: "WM"}
#: One result line of the main table (the model card quotes these lines verbatim).
LINE_PATTERN = re.compile(
    r"^(?P<name>.+?)\s+GM Dice (?P<gm>[0-9.]+) HD95 (?P<gm_hd>[-0-9.]+) mm \| "
    r"WM Dice (?P<wm>[0-9.]+) HD95 (?P<wm_hd>[-0-9.]+) mm \| mean Dice (?P<mean>[0-9.]+)$"
)


def load_heldout(model_dir: Path) -> tuple[np.ndarray, np.ndarray, list[int], tuple]:
    meta = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    start, stop = meta.get("holdout_slices", [0, 0])
    t1, tissue = sample_paths()
    vol = read_volume(t1)
    labels = read_labels(tissue).data
    return vol.data, labels, list(range(start, stop)), vol.geometry.spacing


def augmented_variant(
    image: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """An unseen variant: rescale 0.85x, rotate 8 degrees, bias field, gamma 1.25."""
    rng = np.random.default_rng(seed)
    img = torch.as_tensor(image[:, None].astype(np.float32))
    lab = torch.as_tensor(labels[:, None].astype(np.float32))
    angle, scale = np.deg2rad(8.0), 0.85
    theta = torch.tensor(
        [
            [np.cos(angle) / scale, -np.sin(angle) / scale, 0.02],
            [np.sin(angle) / scale, np.cos(angle) / scale, -0.03],
        ],
        dtype=torch.float32,
    ).expand(img.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    img = F.grid_sample(img, grid, mode="bilinear", align_corners=False)[:, 0].numpy()
    lab = F.grid_sample(lab, grid, mode="nearest", align_corners=False)[:, 0].numpy()
    h, w = img.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    a, b = rng.uniform(-0.3, 0.3, 2)
    bias = np.exp(a * (yy - 0.5) + b * (xx - 0.5))
    lo, hi = np.percentile(img, [0.5, 99.5])
    unit = np.clip((img - lo) / (hi - lo), 0, 1) ** 1.25
    return (unit * bias * (hi - lo) + lo).astype(np.float32), np.rint(lab).astype(np.int64)


def otsu_baseline(image: np.ndarray) -> np.ndarray:
    """scikit-image multi-Otsu into 3 classes on each slice (0 dark, 1 GM, 2 WM)."""
    from skimage.filters import threshold_multiotsu

    out = np.zeros(image.shape, np.int64)
    for i, sl in enumerate(image):
        if np.ptp(sl) == 0:
            continue
        thresholds = threshold_multiotsu(sl, classes=3)
        out[i] = np.digitize(sl, thresholds)
    return out


def evaluate_arrays(pred: np.ndarray, truth: np.ndarray, spacing, workdir: Path, name: str) -> dict:
    """Write pred/truth as NIfTI (z as the last axis) and run the evaluate engine."""
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    p, t = workdir / f"{name}_pred.nii.gz", workdir / f"{name}_truth.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(pred, (2, 1, 0)).astype(np.uint8), affine), p)
    nib.save(nib.Nifti1Image(np.transpose(truth, (2, 1, 0)).astype(np.uint8), affine), t)
    return evaluate_paths(p, t)


def class_line(name: str, report: dict) -> str:
    labels = report["labels"] if "labels" in report else report["cases"][0]["labels"]
    parts = []
    dices = []
    for k, cname in CLASSES.items():
        m = labels.get(str(k), {})
        dices.append(m.get("dice") or 0.0)
        hd = m.get("hd95_mm")
        parts.append(
            f"{cname} Dice {m.get('dice', 0):.3f} HD95 {'-' if hd is None else f'{hd:.2f}'} mm"
        )
    return f"{name:<28} {' | '.join(parts)} | mean Dice {np.mean(dices):.3f}"


def segment(
    seg: Segmenter, volume: np.ndarray, indices: list[int], steps: int, ensemble: int
) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((len(indices), *volume.shape[1:3]), np.int64)
    var = np.zeros(mask.shape, np.float32)
    results = seg.segment_volume(
        volume, slices=indices, sampler=SamplerConfig(steps=steps, ensemble=ensemble)
    )
    pos = {s: i for i, s in enumerate(indices)}
    for r in results:
        mask[pos[r.index]], var[pos[r.index]] = r.mask, r.variance
    return mask, var


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for detecting ``positives`` (rank formula)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # average ranks of ties
    _, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    n_pos, n_neg = positives.sum(), (~positives).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def print_per_slice(
    pred: np.ndarray, truth: np.ndarray, otsu: np.ndarray, indices: list[int]
) -> None:
    """Mean GM/WM Dice of each slice (n, h, w), the model's and multi-Otsu's."""
    from napari_medsegdiff.metrics import dice

    print("\nper held-out slice (mean GM/WM Dice): slice model otsu")
    for i, z in enumerate(indices):
        ours = np.mean([dice(pred[i] == k, truth[i] == k) for k in CLASSES])
        base = np.mean([dice(otsu[i] == k, truth[i] == k) for k in CLASSES])
        print(f"{z:5d} {ours:.3f} {base:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--quick", action="store_true", help="main table only")
    parser.add_argument(
        "--per-slice", action="store_true", help="also mean GM/WM Dice of each held-out slice"
    )
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--steps", type=int, default=0, help="default: the model's")
    parser.add_argument("--ensemble", type=int, default=0, help="default: the model's")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = resolve_model(args.model)
    seg = Segmenter.load(model_dir, "cpu")
    defaults = SamplerConfig(**recommended_sampler(seg.info.meta))
    steps, ensemble = args.steps or defaults.steps, args.ensemble or defaults.ensemble
    image, labels, held, spacing = load_heldout(model_dir)
    if not held:
        raise SystemExit(f"{model_dir}: config.json records no holdout_slices")
    work = Path(tempfile.mkdtemp(prefix="quality-"))
    truth = labels[held]
    print(
        f"model {seg.name} ({seg.config.preset} {seg.config.version}), held-out slices "
        f"{held[0]}:{held[-1] + 1} ({len(held)}), DPM-Solver++ {steps} steps, "
        f"ensemble {ensemble}, context {seg.config.context}"
    )
    start = time.perf_counter()
    pred, var = segment(seg, image, held, steps, ensemble)
    seconds = time.perf_counter() - start
    rows = {
        "medsegdiff": evaluate_arrays(pred, truth, spacing, work, "model"),
        "multi-Otsu baseline": evaluate_arrays(
            otsu_baseline(image[held]), truth, spacing, work, "otsu"
        ),
    }
    aug_img, aug_lab = augmented_variant(image[held], truth, seed=20260)
    aug_pred, _ = segment(seg, aug_img, list(range(len(held))), steps, ensemble)
    rows["medsegdiff, unseen variant"] = evaluate_arrays(aug_pred, aug_lab, spacing, work, "aug")
    rows["multi-Otsu, unseen variant"] = evaluate_arrays(
        otsu_baseline(aug_img), aug_lab, spacing, work, "aug_otsu"
    )
    for name, report in rows.items():
        print(class_line(name, report))
    print(f"time: {seconds / len(held):.2f} s per slice (ensemble {ensemble} x {steps} steps)")
    wrong = pred != truth
    in_head = truth > 0
    in_head |= pred > 0
    v, w = var[in_head], wrong[in_head]
    print(
        f"variance on wrong voxels {v[w].mean():.4f} vs correct {v[~w].mean():.4f} "
        f"(ratio {v[w].mean() / max(v[~w].mean(), 1e-12):.1f}x); AUROC of variance for "
        f"errors {auroc(v, w):.3f} (inside the head)"
    )
    if args.per_slice:
        print_per_slice(pred, truth, otsu_baseline(image[held]), held)
    if args.quick:
        return 0
    subset = held[:: max(1, len(held) // 8)][:8]
    print(f"\nsweep on {len(subset)} held-out slices (mean Dice GM/WM):")
    print("steps \\ ensemble " + " ".join(f"{e:>7d}" for e in (1, 5, 10)))
    for steps in (5, 10, 20, 50):
        cells = []
        for ensemble in (1, 5, 10):
            if ensemble != 5 and steps != 20:
                cells.append("      -")
                continue
            p, _ = segment(seg, image, subset, steps, ensemble)
            rep = evaluate_arrays(p, labels[subset], spacing, work, f"s{steps}e{ensemble}")
            dice = np.mean([rep["labels"][str(k)]["dice"] for k in CLASSES])
            cells.append(f"{dice:7.3f}")
        print(f"{steps:>16d} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
