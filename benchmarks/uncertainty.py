"""Does the uncertainty point at the errors? Error detection, calibration, review (issue #19).

Per case the model segments every ``--every``-th slice holding tissue, at product
defaults and with a larger ensemble. For each score (the ensemble's per-voxel variance, the
entropy of the fused probability, and the mutual information between members) it reports
AUROC and average precision for wrong voxels over the tissue region and in a band of
+/-3 px around the predicted boundary; the expected calibration error (15 bins) of the
fused probability over the tissue region; the share of all wrong voxels that the Review
tab's top 10 % / 20 % slices hold; and seconds per slice.

    python benchmarks/uncertainty.py                       # template held-out, T2-like, 2009c
    python benchmarks/uncertainty.py --every 4 --ensembles 3,8 --json runs/unc.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_medsegdiff.checkpoints import recommended_sampler, resolve_model
from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.nifti import read_labels, read_volume
from napari_medsegdiff.review import review_volume
from napari_medsegdiff.segmenter import Segmenter

sys.path.insert(0, str(Path(__file__).parent))
import realdata
import scenarios

BAND_PX = 3
BINS = 15


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    pos = positive.ravel().astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(score.ravel())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, start, counts = np.unique(sorted_x, return_index=True, return_counts=True)
    for s, c in zip(start[counts > 1], counts[counts > 1], strict=True):
        ranks[order[s : s + c]] = ranks[order[s : s + c]].mean()
    return ranks


def average_precision(score: np.ndarray, positive: np.ndarray) -> float:
    """AP = sum over thresholds of precision x recall step (ties broken by order)."""
    pos = positive.ravel().astype(bool)
    if not pos.any():
        return float("nan")
    order = np.argsort(-score.ravel(), kind="mergesort")
    hits = pos[order]
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / hits.sum())


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error of the top-class confidence."""
    conf = confidence.ravel()
    ok = correct.ravel().astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(conf[sel].mean() - ok[sel].mean())
    return float(total)


def entropy(p: np.ndarray, axis: int) -> np.ndarray:
    p = np.clip(p, 1e-8, 1.0)
    return -(p * np.log(p)).sum(axis=axis)


def scores_of(members: np.ndarray) -> dict[str, np.ndarray]:
    """(M, K, H, W) member probabilities -> per-voxel variance, entropy, mutual information."""
    if members.shape[1] == 1:  # binary: two-class form
        members = np.concatenate([1 - members, members], axis=1)
    mean = members.mean(axis=0)
    ent = entropy(mean, 0)
    return {
        "variance": members.var(axis=0).sum(axis=0),
        "entropy": ent,
        "mutual information": ent - entropy(members, 1).mean(axis=0),
        "mean": mean,
    }


def cases() -> list[tuple[str, np.ndarray, np.ndarray, list[int] | None]]:
    from napari_medsegdiff.sample import sample_paths

    t1, tissue = sample_paths()
    sample_labels = read_labels(tissue).data
    lo, hi = [int(f * sample_labels.shape[0]) for f in (0.55, 0.75)]
    out = [("template held-out", read_volume(t1).data, sample_labels, list(range(lo, hi)))]
    t2 = scenarios.t2_like(0)
    out.append(("template T2-like", t2.image, t2.labels, None))
    have = realdata.available_cases()
    if "mni2009c_tissue" in have:
        case = have["mni2009c_tissue"]
        out.append(
            ("ICBM 2009c", read_volume(case.image).data, read_labels(case.labels).data, None)
        )
    return out


def evaluate(seg: Segmenter, image, truth, slices, cfg: SamplerConfig) -> dict:
    prepared = seg.prepare(image)
    start = time.perf_counter()
    results = list(seg.segment_slices(prepared, slices, sampler=cfg))
    seconds = (time.perf_counter() - start) / len(slices)
    z = np.asarray(slices)
    pred = np.stack([r.mask for r in results])
    ref = truth[z]
    wrong = pred != ref
    s = [scores_of(r.members) for r in results]
    maps = {k: np.stack([d[k] for d in s]) for k in ("variance", "entropy", "mutual information")}
    mean = np.stack([d["mean"] for d in s])  # (n, K, H, W)
    tissue = (ref > 0) | (pred > 0)
    tissue = ndi.binary_dilation(tissue, np.ones((1, 3, 3)), iterations=2)
    edges = pred != ndi.grey_erosion(pred, size=(1, 3, 3))
    edges |= pred != ndi.grey_dilation(pred, size=(1, 3, 3))
    band = ndi.binary_dilation(edges, np.ones((1, 3, 3)), iterations=BAND_PX)
    row: dict = {"seconds_per_slice": seconds, "wrong_share": float(wrong[tissue].mean())}
    for name, m in maps.items():
        for region, where in (("tissue", tissue), ("band", band)):
            row[f"{name} AUROC {region}"] = auroc(m[where], wrong[where])
            row[f"{name} AP {region}"] = average_precision(m[where], wrong[where])
    confidence = mean.max(axis=1)
    row["ECE tissue"] = ece(confidence[tissue], ~wrong[tissue])
    variance = np.zeros(truth.shape, np.float32)
    full_pred = np.zeros(truth.shape, np.uint8)
    variance[z], full_pred[z] = maps["variance"], pred
    ranking, _, _ = review_volume(variance, full_pred, slices)
    per_slice = {int(zz): int(w.sum()) for zz, w in zip(z, wrong, strict=True)}
    total = max(1, sum(per_slice.values()))
    rankings = {"": [zz for zz, _ in ranking]}  # the Review tab's (mean boundary variance)
    for name in ("variance", "entropy"):  # alternatives: the score summed over the slice
        sums = maps[name].reshape(len(z), -1).sum(axis=1)
        rankings[f" ({name} sum)"] = [int(z[i]) for i in np.argsort(-sums)]
    for tag, order in rankings.items():
        for top in (0.1, 0.2):
            picked = order[: max(1, round(top * len(order)))]
            row[f"review top {int(top * 100)}%{tag}"] = sum(per_slice[p] for p in picked) / total
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--every", type=int, default=3, help="every n-th slice with tissue")
    parser.add_argument("--ensembles", default="3,8", help="ensemble sizes (product's first)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    seg = Segmenter.load(resolve_model(args.model), device="cpu")
    default = SamplerConfig(**recommended_sampler(seg.info.meta))
    rows = []
    for name, image, truth, block in cases():
        slices = block or [z for z in range(truth.shape[0]) if (truth[z] > 0).sum() > 2000]
        slices = slices[:: args.every]
        for members in (int(v) for v in args.ensembles.split(",")):
            cfg = SamplerConfig(
                ensemble=members, steps=default.steps, seed=default.seed, sampler=default.sampler
            )
            row = {"case": name, "ensemble": members, "steps": cfg.steps, "slices": len(slices)}
            row.update(evaluate(seg, image, truth, slices, cfg))
            rows.append(row)
            print(json.dumps(row), flush=True)
    report(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def report(rows: list[dict]) -> None:
    print(
        "\n| case | members x steps | s/slice | wrong | band AUROC var / ent / MI | "
        "tissue AUROC var | band AP var | ECE | review top 10% / 20% | "
        "top 10% by variance sum / entropy sum |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        band = " / ".join(
            f"{r[f'{k} AUROC band']:.3f}" for k in ("variance", "entropy", "mutual information")
        )
        print(
            f"| {r['case']} | {r['ensemble']} x {r['steps']} | {r['seconds_per_slice']:.2f} | "
            f"{r['wrong_share']:.3f} | {band} | {r['variance AUROC tissue']:.3f} | "
            f"{r['variance AP band']:.3f} | {r['ECE tissue']:.3f} | "
            f"{r['review top 10%']:.2f} / {r['review top 20%']:.2f} | "
            f"{r['review top 10% (variance sum)']:.2f} / {r['review top 10% (entropy sum)']:.2f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
