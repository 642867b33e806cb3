"""Refine from strokes and fill between slices, against a simulated user (issue #18).

For each case and slice, the model segments at product defaults; a simulated user then
draws k = 1, 2, 3 strokes on the largest wrong regions (a stroke: the region's skeleton
widened to 3 px, painted with the true labels). Scored per slice (mean Dice of the
case's classes): the strokes alone (the proposal with the stroke pixels fixed) vs
strokes + Refine (the slice re-sampled with the strokes held as known, RePaint-style),
for several sampler settings, with seconds per refine. Fill between slices: the truth
painted on every 4th slice of the structure, interpolated, scored on the slices between.

    python benchmarks/refine.py                   # T2-like template, ICBM 2009c GM/WM
    python benchmarks/refine.py --slices 4 --json runs/refine.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from napari_medsegdiff.checkpoints import recommended_sampler, resolve_model
from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.interpolate import fill_between
from napari_medsegdiff.nifti import read_labels, read_volume
from napari_medsegdiff.segmenter import Segmenter

sys.path.insert(0, str(Path(__file__).parent))
import realdata
import scenarios

VARIANTS = ((3, 2), (3, 5), (3, 10))  # (ensemble, steps) of Refine


def slice_dice(pred: np.ndarray, truth: np.ndarray, classes) -> float:
    scores = []
    for c in classes:
        a, b = pred == c, truth == c
        total = a.sum() + b.sum()
        scores.append(1.0 if total == 0 else 2 * np.logical_and(a, b).sum() / total)
    return float(np.mean(scores))


def strokes_for(pred: np.ndarray, truth: np.ndarray, k: int, width: int = 3) -> np.ndarray:
    """(H, W) -1 / label: k strokes through the largest wrong regions, true labels."""
    wrong = pred != truth
    regions, n = ndi.label(wrong)
    strokes = np.full(pred.shape, -1, np.int64)
    if n == 0:
        return strokes
    sizes = ndi.sum(wrong, regions, range(1, n + 1))
    for r in np.argsort(sizes)[::-1][:k]:
        region = regions == r + 1
        line = skeletonize(region)
        line = ndi.binary_dilation(line, iterations=width // 2) & region
        strokes[line] = truth[line]
    return strokes


def cases(root: Path | None) -> list[tuple[str, np.ndarray, np.ndarray, tuple[int, ...]]]:
    out = []
    t2 = scenarios.t2_like(0)
    out.append(("template, T2-like", t2.image, t2.labels, (1, 2)))
    have = realdata.available_cases(root)
    if "mni2009c_tissue" in have:
        case = have["mni2009c_tissue"]
        image, labels = read_volume(case.image).data, read_labels(case.labels).data
        out.append(("ICBM 2009c GM/WM", image, labels, (1, 2)))
    else:
        print("mni2009c_tissue missing: run scripts/fetch_data.sh", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--slices", type=int, default=6, help="slices per case")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    path = resolve_model(args.model)
    seg = Segmenter.load(path, device="cpu")
    default = SamplerConfig(**recommended_sampler(seg.info.meta))
    rows = []
    fills = []
    for name, image, truth, classes in cases(None):
        brain = [z for z in range(truth.shape[0]) if (truth[z] > 0).sum() > 2000]
        picks = [brain[int(i)] for i in np.linspace(0, len(brain) - 1, args.slices + 2)[1:-1]]
        prepared = seg.prepare(image)
        for z in picks:
            proposal = next(seg.segment_slices(prepared, [z], sampler=default)).mask
            for k in (1, 2, 3):
                strokes = strokes_for(proposal, truth[z], k)
                alone = proposal.copy()
                alone[strokes >= 0] = strokes[strokes >= 0]
                row = {
                    "case": name,
                    "slice": z,
                    "k": k,
                    "proposal": slice_dice(proposal, truth[z], classes),
                    "strokes": slice_dice(alone, truth[z], classes),
                    "stroke_px": int((strokes >= 0).sum()),
                }
                for members, steps in VARIANTS:
                    cfg = SamplerConfig(ensemble=members, steps=steps, seed=default.seed)
                    start = time.perf_counter()
                    refined = seg.refine_slice(prepared, z, strokes, sampler=cfg)
                    row[f"refine {members}x{steps}"] = slice_dice(refined.mask, truth[z], classes)
                    row[f"s {members}x{steps}"] = time.perf_counter() - start
                    assert np.array_equal(refined.mask[strokes >= 0], strokes[strokes >= 0])
                rows.append(row)
                print(json.dumps(row), flush=True)
        for c in classes:  # fill between slices, per class, from every 4th slice
            span = [z for z in range(truth.shape[0]) if (truth[z] == c).sum() > 200]
            painted = span[::4]
            sparse = np.zeros_like(truth)
            sparse[painted] = truth[painted]
            start = time.perf_counter()
            fill = fill_between(np.where(sparse == c, c, 0), painted)
            seconds = time.perf_counter() - start
            between = list(fill.filled)
            a, b = fill.labels[between] == c, truth[between] == c
            fills.append(
                {
                    "case": name,
                    "class": c,
                    "painted": len(painted),
                    "between": len(between),
                    "dice": float(2 * (a & b).sum() / (a.sum() + b.sum())),
                    "seconds": seconds,
                }
            )
            print(json.dumps(fills[-1]), flush=True)
    report(rows, fills)
    if args.json:
        Path(args.json).write_text(json.dumps({"refine": rows, "fill": fills}, indent=1))
    return 0


def report(rows: list[dict], fills: list[dict]) -> None:
    variants = [f"{m}x{s}" for m, s in VARIANTS]
    print(
        "\n| case | k | proposal | strokes alone | "
        + " | ".join(f"+ Refine {v} (gain, s)" for v in variants)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(variants))
    for name in dict.fromkeys(r["case"] for r in rows):
        for k in (1, 2, 3):
            sel = [r for r in rows if r["case"] == name and r["k"] == k]
            alone = np.median([r["strokes"] for r in sel])
            cells = []
            for v in variants:
                gain = np.median([r[f"refine {v}"] - r["strokes"] for r in sel])
                secs = np.median([r[f"s {v}"] for r in sel])
                cells.append(
                    f"{np.median([r[f'refine {v}'] for r in sel]):.3f} ({gain:+.3f}, {secs:.2f} s)"
                )
            prop = np.median([r["proposal"] for r in sel])
            print(f"| {name} | {k} | {prop:.3f} | {alone:.3f} | " + " | ".join(cells) + " |")
    print("\n| fill between slices | class | painted | between | Dice | s |")
    print("|---|---|---|---|---|---|")
    for f in fills:
        print(
            f"| {f['case']} | {f['class']} | {f['painted']} | {f['between']} | "
            f"{f['dice']:.3f} | {f['seconds']:.2f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
