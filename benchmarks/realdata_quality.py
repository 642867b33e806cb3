"""Zero-shot quality on the real-data set (issue #16), one row per case, models side by side.

    bash scripts/fetch_data.sh                      # once: the cases
    python benchmarks/realdata_quality.py [--model DIR ...] [--json OUT]

Every model runs at its product defaults (the sampler recorded in its config.json) on whole
volumes, as a user would run it. Rows:

- template held-out: the sample's held-out block of the shipped default (mean GM/WM Dice);
- brain vs background on full heads (Colin27, ROBEX, the low-resolution ITK head, MNI152
  6th gen): the predicted tissue (GM or WM) with holes filled per slice, against the brain
  mask over the whole volume, neck and air included; a brain mask also holds the CSF in the
  sulci, which a GM/WM model leaves out, so a perfect GM/WM mask stays below 1;
- Colin27 GM where AAL gives cortex: predicted GM against AAL's cerebral regions (cerebellum
  left out) on the top 45 % of the brain, skull-stripped and full head; AAL has no WM;
- ICBM 2009c GM/WM with CAT12's tissue classes.

"seen" marks a case the current default recipe trains on (scripts/train_default_model.py
--real-heads): its row is not zero-shot for that model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_fill_holes

from napari_medsegdiff.checkpoints import recommended_sampler, resolve_model
from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.metrics import dice
from napari_medsegdiff.nifti import read_labels, read_volume
from napari_medsegdiff.sample import sample_paths
from napari_medsegdiff.segmenter import Segmenter

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata

#: Cases the --real-heads recipe trains on (brain masks, or tissue classes).
SEEN = {"colin27_head", "robex_head", "mni152_6gen_head", "mni2009c_tissue"}
AAL_CEREBELLUM = range(91, 117)


def segment_all(seg: Segmenter, image: np.ndarray, slices=None) -> np.ndarray:
    """Class map (z, y, x) at the model's recommended sampler, slice by slice along axis 0."""
    out = np.zeros(image.shape[:3], np.int64)
    sampler = SamplerConfig(**recommended_sampler(seg.info.meta))
    for r in seg.segment_volume(image, slices=slices, sampler=sampler):
        out[r.index] = r.mask
    return out


def brain_dice(pred: np.ndarray, brain: np.ndarray) -> float:
    filled = np.stack([binary_fill_holes(s > 0) for s in pred])
    return dice(filled, brain)


def tissue_dice(pred: np.ndarray, truth: np.ndarray, rows) -> dict[str, float]:
    gm = dice(pred[rows] == 1, truth[rows] == 1)
    wm = dice(pred[rows] == 2, truth[rows] == 2)
    return {"GM": gm, "WM": wm, "mean": (gm + wm) / 2}


def template_heldout(seg: Segmenter, default_dir: Path) -> dict[str, float]:
    meta = json.loads((default_dir / "config.json").read_text(encoding="utf-8"))
    start, stop = meta["holdout_slices"]
    t1, tissue = sample_paths()
    image, labels = read_volume(t1).data, read_labels(tissue).data
    pred = segment_all(seg, image, list(range(start, stop)))
    return tissue_dice(pred, labels, slice(start, stop))


def top_rows(mask: np.ndarray, fraction: float = 0.45) -> slice:
    rows = np.flatnonzero(mask.any(axis=(1, 2)))
    lo, hi = rows[0], rows[-1] + 1
    return slice(int(hi - round(fraction * (hi - lo))), int(hi))


def evaluate_model(model: Path, default_dir: Path) -> dict[str, dict]:
    cases = realdata.available_cases()
    seg = Segmenter.load(model, "cpu")
    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    rows["template held-out (GM/WM)"] = template_heldout(seg, default_dir)
    for name in ("colin27_head", "robex_head", "itk_lowres_head", "mni152_6gen_head"):
        image = read_volume(cases[name].image).data
        brain = read_labels(cases[name].labels).data > 0
        rows[f"{name} brain vs background"] = {"brain": brain_dice(segment_all(seg, image), brain)}
    aal = read_labels(cases["colin27_aal"].labels).data
    cortex = (aal > 0) & ~np.isin(aal, AAL_CEREBELLUM)
    top = top_rows(aal > 0)
    for name, label in (("colin27_aal", "skull-stripped"), ("colin27_head", "full head")):
        image = read_volume(cases[name].image).data
        pred = segment_all(seg, image, list(range(top.start, top.stop)))
        rows[f"colin27 GM vs AAL cortex, {label}"] = {"GM": dice(pred[top] == 1, cortex[top])}
    image = read_volume(cases["mni2009c_tissue"].image).data
    truth = read_labels(cases["mni2009c_tissue"].labels).data
    rows["mni2009c_tissue GM/WM (CAT12)"] = tissue_dice(segment_all(seg, image), truth, slice(None))
    rows["_seconds"] = {"wall": time.perf_counter() - t0}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=None, help="model folder(s)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    need = ["colin27_head", "colin27_aal", "robex_head", "itk_lowres_head", "mni152_6gen_head"]
    reason = realdata.missing_reason([*need, "mni2009c_tissue"])
    if reason:
        print(f"realdata_quality: {reason}", file=sys.stderr)
        return 2
    default_dir = resolve_model(None)
    models = [Path(m) for m in (args.model or [str(default_dir)])]
    results = {str(m): evaluate_model(m, default_dir) for m in models}
    names = [k for k in next(iter(results.values())) if not k.startswith("_")]
    print(
        f"{'case':44s}"
        + "".join(f" {Path(m).parent.name + '/' + Path(m).name:>30s}" for m in results)
    )
    for row in names:
        case = row.split()[0]
        mark = " (seen)" if case in SEEN or row.startswith("colin27 GM") else ""
        cells = []
        for res in results.values():
            r = res[row]
            cells.append(" ".join(f"{k} {v:.3f}" for k, v in r.items()))
        print(f"{row + mark:44s}" + "".join(f" {c:>30s}" for c in cells))
    for m, res in results.items():
        print(f"wall {Path(m).name}: {res['_seconds']['wall']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
