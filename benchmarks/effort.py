"""The effort benchmark (issue #17): how many painted slices does a structure need?

A simulated user paints a structure on k slices of a real-data case (evenly spaced over the
slices that hold it, or the product's suggestions), fine-tunes at product defaults, and the
unpainted slices that hold the structure are scored. Also reported: Dice on the painted
slices themselves (does the model reproduce what it was shown?) against the resolution
ceiling of the model's canvas (labels taken to the model size and back), the wall time, and
the baselines a user has instead on the same painted slices: shape-based interpolation
between the painted slices (the product's own "Fill between slices", ITK's morphological
contour interpolation)
and the base model zero-shot (for a class it does not know: 0).

    bash scripts/fetch_data.sh
    python benchmarks/effort.py [--family all] [--k 1,3,5] [--rule even] [--steps N]

Families (real-data set, benchmarks/realdata.py): ``aal`` (hippocampus, thalamus, caudate,
putamen on Colin27, added as class 3 to the default model), ``neuro`` (lateral ventricles
and hippocampus of Neuromorphometrics on the ICBM 2009c brain), ``lesion`` (pyradiomics
brain1 / lung1 / breast1 as a new model), ``head`` (Colin27 full head: GM/WM corrected on k
slices, the tissue rule of the proposal).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_medsegdiff.checkpoints import read_model_info, recommended_sampler, resolve_model
from napari_medsegdiff.config import FinetuneSettings, SamplerConfig
from napari_medsegdiff.finetune import finetune
from napari_medsegdiff.interpolate import fill_between
from napari_medsegdiff.metrics import dice
from napari_medsegdiff.nifti import read_labels, read_volume
from napari_medsegdiff.preprocessing import resize_slices, square_canvas
from napari_medsegdiff.segmenter import Segmenter

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata

NEW_CLASS = 3
OLD_AUGMENT: bool | None = None  # --old-defaults: augmented fine-tune as before issue #17


@dataclass
class Task:
    """A scan, the structure a user paints (z, y, x bool) and how it enters the model."""

    name: str
    case: str
    image: np.ndarray
    structure: np.ndarray
    new_model: bool  # True: a model for the structure alone; False: class 3 of the default


def _case_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    case = realdata.available_cases()[name]
    return read_volume(case.image).data, read_labels(case.labels).data


def aal_tasks() -> list[Task]:
    image, aal = _case_arrays("colin27_aal")
    picks = {
        "hippocampus": (37, 38),
        "thalamus": (77, 78),
        "caudate": (71, 72),
        "putamen": (73, 74),
    }
    return [
        Task(f"AAL {n} (Colin27)", "colin27_aal", image, np.isin(aal, ids), False)
        for n, ids in picks.items()
    ]


def neuro_tasks() -> list[Task]:
    image, atlas = _case_arrays("mni2009c_neuromorphometrics")
    return [
        Task("lateral ventricles (Neuromorphometrics)", "mni2009c", image,
             np.isin(atlas, (51, 52)), False),
        Task("hippocampus (Neuromorphometrics)", "mni2009c", image, np.isin(atlas, (47, 48)),
             False),
    ]  # fmt: skip


def lesion_tasks() -> list[Task]:
    out = []
    for case in ("radiomics_brain1", "radiomics_lung1", "radiomics_breast1"):
        image, labels = _case_arrays(case)
        out.append(Task(f"lesion {case.split('_')[1]}", case, image, labels > 0, True))
    return out


FAMILIES = {"aal": aal_tasks, "neuro": neuro_tasks, "lesion": lesion_tasks}


def structure_slices(structure: np.ndarray) -> list[int]:
    return [int(z) for z in np.flatnonzero(structure.any(axis=(1, 2)))]


def evenly_spaced(rows: list[int], k: int) -> list[int]:
    """k slices spread over ``rows``, away from the two ends (the structure's tips)."""
    if k >= len(rows):
        return rows
    positions = (np.arange(k) + 0.5) / k * (len(rows) - 1)
    return sorted({rows[int(np.rint(p))] for p in positions})


def canvas_ceiling(structure: np.ndarray, rows: list[int], size: int) -> float:
    """Dice of the structure taken to the model's canvas and back (what a perfect model
    could draw at that resolution), over ``rows``."""
    h, w = structure.shape[1:]
    canvas = square_canvas(h, w, size)
    small = resize_slices(structure[rows, None].astype(np.float32), (canvas.height, canvas.width))
    back = resize_slices(small, (h, w))[:, 0] > 0.5
    return dice(back, structure[rows])


def shape_interpolation(structure: np.ndarray, painted: list[int], rows: list[int]) -> np.ndarray:
    """What the product's *Fill between slices* gives from the painted slices (z, y, x bool):
    ITK's morphological contour interpolation between them; nothing outside their span
    (and nothing from one slice)."""
    if len(painted) < 2:
        return np.zeros_like(structure)
    sparse = np.zeros(structure.shape, np.uint8)
    sparse[painted] = structure[painted]
    return fill_between(sparse, painted).labels.astype(bool)


def mean_dice(pred: np.ndarray, truth: np.ndarray, rows: list[int]) -> float:
    return float(np.mean([dice(pred[z], truth[z]) for z in rows])) if rows else float("nan")


def run_task(
    task: Task, k: int, base: Path, steps: int | None, lr: float | None, work: Path
) -> dict:
    """Paint k slices, fine-tune at product defaults, score painted and unpainted slices."""
    rows = structure_slices(task.structure)
    painted = evenly_spaced(rows, k)
    others = [z for z in rows if z not in painted]
    info = read_model_info(base)
    sampler = SamplerConfig(**recommended_sampler(info.meta))
    base_seg = Segmenter.load(base, "cpu")
    if task.new_model:
        labels = task.structure.astype(np.int64)
    else:
        # The user keeps the proposal and paints the structure on top as class 3.
        labels = np.zeros(task.image.shape, np.int64)
        for r in base_seg.segment_volume(task.image, slices=painted, sampler=sampler):
            labels[r.index] = r.mask
        labels[task.structure] = NEW_CLASS
    target = NEW_CLASS if not task.new_model else 1
    options = (("steps", steps), ("lr", lr), ("augment", OLD_AUGMENT))
    settings = FinetuneSettings(**{k_: v for k_, v in options if v is not None})
    t0 = time.perf_counter()
    result = finetune(
        base, task.image, labels, slices=painted, new_model=task.new_model,
        out=work / f"{task.case}-{k}-{time.monotonic_ns()}", device="cpu", settings=settings,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    seg = Segmenter.load(result.path, "cpu")
    pred = np.zeros(task.structure.shape, bool)
    for r in seg.segment_volume(task.image, slices=rows, sampler=sampler):
        pred[r.index] = r.mask == target
    interp = shape_interpolation(task.structure, painted, rows)
    size = info.config.image_size
    return {
        "task": task.name,
        "k": k,
        "painted": painted,
        "dice_painted": mean_dice(pred, task.structure, painted),
        "ceiling_painted": canvas_ceiling(task.structure, painted, size),
        "dice_others": mean_dice(pred, task.structure, others),
        "interpolation_others": mean_dice(interp, task.structure, others),
        "finetune_seconds": seconds,
        "steps_done": result.provenance.get("steps_done"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="all", help=f"all or one of {', '.join(FAMILIES)}")
    parser.add_argument("--task", default=None, help="only tasks whose name contains this")
    parser.add_argument("--k", default="1,3,5", help="painted slices, comma separated")
    parser.add_argument("--model", default=None, help="base model (default: shipped)")
    parser.add_argument("--steps", type=int, default=None, help="override product default")
    parser.add_argument("--lr", type=float, default=None, help="override product default")
    parser.add_argument(
        "--old-defaults",
        action="store_true",
        help="the fine-tune defaults before issue #17 (lr 5e-4, augmented, 400 steps, no fit stop)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.old_defaults:
        from napari_medsegdiff import config

        config.FINETUNE_STOP_DICE = float("inf")
        args.lr = args.lr or 5e-4
        global OLD_AUGMENT
        OLD_AUGMENT = True
    needed = ["colin27_aal", "mni2009c_neuromorphometrics", "radiomics_brain1"]
    reason = realdata.missing_reason(needed)
    if reason:
        print(f"effort: {reason}", file=sys.stderr)
        return 2
    families = list(FAMILIES) if args.family == "all" else [args.family]
    base = resolve_model(args.model)
    ks = [int(k) for k in args.k.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam in families:
            for task in FAMILIES[fam]():
                if args.task and args.task not in task.name:
                    continue
                for k in ks:
                    r = run_task(task, k, base, args.steps, args.lr, Path(tmp))
                    results.append({"family": fam, **r})
                    print(
                        f"{r['task']:42s} k={k}  painted {r['dice_painted']:.3f} "
                        f"(ceiling {r['ceiling_painted']:.3f})  others {r['dice_others']:.3f}  "
                        f"interp {r['interpolation_others']:.3f}  {r['finetune_seconds']:.0f} s",
                        flush=True,
                    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
