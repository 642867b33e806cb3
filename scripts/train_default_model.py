"""Train the shipped default model: `lite` MedSegDiff-V2, 3 tissue classes, on the sample scan.

There is a single real scan (ICBM152 2009a T1 + GM/WM labels), so the model trains on
augmented variants of its axial slices, generated on the fly: elastic and affine
deformation, in-plane rescaling 0.7-1.5x, rotations, flips, bias field, gamma/contrast and
noise. A contiguous block of slices is held out (never seen in training) for evaluation,
together with one unseen augmented variant of the scan (see benchmarks/quality.py).

    python scripts/train_default_model.py --steps 3000 --out runs/default --install

Fully seeded; prints the wall time. ``--install`` copies the result into the package
(``napari_medsegdiff/models/default``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_medsegdiff.augment import AugmentConfig
from napari_medsegdiff.checkpoints import CONFIG, WEIGHTS, default_model_path, load_model
from napari_medsegdiff.config import TrainConfig, preset
from napari_medsegdiff.data import SliceSet, slices_from_volume
from napari_medsegdiff.model import build_model
from napari_medsegdiff.nifti import read_labels, read_volume
from napari_medsegdiff.objective import UNLABELLED
from napari_medsegdiff.preprocessing import normalize_intensity
from napari_medsegdiff.sample import sample_paths
from napari_medsegdiff.training import train
from napari_medsegdiff.warm_start import add_context

#: The held-out block, as fractions of the brain's axial extent (contiguous, 20% of it).
HOLDOUT_FRACTIONS = (0.55, 0.75)
#: Seed of the unseen augmented variant used for evaluation only.
EVAL_VARIANT_SEED = 20260
TRAIN_AUGMENT = AugmentConfig(
    flip=True,
    rotate_deg=15.0,
    scale=(0.7, 1.5),
    translate=0.06,
    gamma=(0.7, 1.4),
    contrast=0.15,
    brightness=0.1,
    noise=0.03,
    elastic=0.015,
    bias=0.3,
)


def holdout_slices(labels: np.ndarray) -> list[int]:
    """The contiguous held-out block of axial slices (indices along display axis 0)."""
    brain = [i for i in range(labels.shape[0]) if labels[i].any()]
    lo, hi = brain[0], brain[-1] + 1
    start = lo + round(HOLDOUT_FRACTIONS[0] * (hi - lo))
    stop = lo + round(HOLDOUT_FRACTIONS[1] * (hi - lo))
    return list(range(start, stop))


#: Real heads with only a brain mask: outside is background; inside is unlabelled, with a
#: provisional GM/WM class from 3-class multi-Otsu inside the mask (CSF -> background).
REAL_HEADS = ("colin27_head", "robex_head", "mni152_6gen_head")
#: Fully labelled skull-stripped brains besides the sample (GM/WM as classes 1/2).
EXTRA_TISSUE = ("mni2009c_tissue",)


def _provisional(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Multi-Otsu classes 0/1/2 (dark / middle / bright) of the T1 inside ``brain``."""
    from skimage.filters import threshold_multiotsu

    cuts = threshold_multiotsu(image[brain], classes=3)
    return np.digitize(image, cuts).astype(np.int64)


def real_head_slices(size: int, context: int) -> tuple[list[SliceSet], list[SliceSet], list[str]]:
    """Training slices of the real-data set (issue #16), fetched by scripts/fetch_data.sh.

    Brain-mask heads carry ``UNLABELLED + provisional class`` inside the brain (see
    objective.split_labels); tissue cases carry GM/WM. Returns the training sets, validation
    sets (4 mid-brain slices of each head, provisional classes as labels: model selection
    then also asks for background outside the brain) and the sets' names.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import realdata

    missing = realdata.missing_reason([*REAL_HEADS, *EXTRA_TISSUE])
    if missing:
        raise SystemExit(f"--real-heads: {missing}")
    cases = realdata.available_cases()
    sets, vals, names = [], [], []
    for name in (*REAL_HEADS, *EXTRA_TISSUE):
        image = normalize_intensity(read_volume(cases[name].image).data)
        labels = read_labels(cases[name].labels).data.astype(np.int64)
        if name in REAL_HEADS:
            brain = labels > 0
            # Compact codes 3 + c for the resize, remapped to UNLABELLED + c below.
            labels = np.where(brain, 3 + _provisional(image, brain), 0)
        data = slices_from_volume(image, labels, size, normalized=True, name=name, context=context)
        coded = data.labels >= 3
        data.labels[coded] = UNLABELLED + data.labels[coded] - 3
        sets.append(data)
        names.append(f"{name} ({len(data)} slices)")
        if name in REAL_HEADS:
            rows = [i for i in range(labels.shape[0]) if labels[i].any()]
            picks = [rows[round(f * (len(rows) - 1))] for f in (0.45, 0.55, 0.65, 0.75)]
            plain = np.where(labels >= 3, labels - 3, labels)
            vals.append(
                slices_from_volume(
                    image,
                    plain,
                    size,
                    picks,
                    normalized=True,
                    name=f"{name}-val",
                    context=context,
                )
            )
    return sets, vals, names


def load_sample() -> tuple[np.ndarray, np.ndarray]:
    """Normalised T1 (z, y, x) and tissue labels (z, y, x) in display order."""
    t1, tissue = sample_paths()
    image = normalize_intensity(read_volume(t1).data)
    labels = read_labels(tissue).data
    return image, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/default")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--lr-final", type=float, default=None, help="cosine decay to this")
    parser.add_argument("--invert", type=float, default=0.0, help="P(T2-like inversion)")
    parser.add_argument("--window", type=float, default=0.0, help="P(CT-like window)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--version", default="v2")
    parser.add_argument("--base-channels", type=int, default=None, help="mask branch width")
    parser.add_argument("--cond-channels", type=int, default=None, help="condition width")
    parser.add_argument("--prediction", default="v_prediction", help="epsilon | v_prediction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--context", type=int, default=0, help="2.5-D neighbours per side")
    parser.add_argument("--init", default=None, help="start from this model folder's weights")
    parser.add_argument("--resume", action="store_true", help="continue OUT/last")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--val-steps", type=int, default=2, help="sampler steps in validation")
    parser.add_argument("--curve", type=float, default=0.0, help="P(random intensity curve)")
    parser.add_argument("--lowres", type=float, default=0.0, help="P(thick-slice blur)")
    parser.add_argument(
        "--real-heads",
        action="store_true",
        help="add the real-data set's heads (brain masks) and tissue cases (fetch_data.sh)",
    )
    parser.add_argument(
        "--unlabelled-weight",
        type=float,
        default=0.0,
        help="loss weight of unlabelled voxels' provisional classes (0: ignored)",
    )
    parser.add_argument("--install", action="store_true", help="copy into the package")
    args = parser.parse_args(argv)
    if args.init and (args.base_channels or args.cond_channels):
        parser.error("--base-channels/--cond-channels: the widths of --init's model are kept")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    image, labels = load_sample()
    held = holdout_slices(labels)
    train_idx = [i for i in range(labels.shape[0]) if i not in set(held) and labels[i].any()]
    data = slices_from_volume(
        image,
        labels,
        args.image_size,
        train_idx,
        normalized=True,
        name="icbm152",
        context=args.context,
    )
    training_data = "ICBM152 2009a sym T1 + GM/WM tissue labels (sample_data/)"
    if args.real_heads:
        extra, extra_val, names = real_head_slices(args.image_size, args.context)
        data = SliceSet.concat([data, *extra])
        training_data += "; real-data set (scripts/fetch_data.sh): " + ", ".join(names)
    # Validation (model selection) on a fixed augmented draw of training slices: the held-out
    # block stays untouched for the final evaluation.
    val_idx = train_idx[:: max(1, len(train_idx) // 6)][:6]
    val = slices_from_volume(
        image,
        labels,
        args.image_size,
        val_idx,
        normalized=True,
        name="icbm152-val",
        context=args.context,
    )
    if args.real_heads:
        val = SliceSet.concat([val, *extra_val])
    init_state = None
    if args.init:
        net, info = load_model(args.init, "cpu")
        init_state, cfg = net.state_dict(), info.config
        if args.context != cfg.context:
            init_state, cfg = add_context(init_state, cfg, args.context)
    else:
        cfg = preset(
            "lite",
            version=args.version,
            mask_channels=3,
            image_size=args.image_size,
            prediction=args.prediction,
            context=args.context,
            **{
                name: value
                for name, value in (
                    ("base_channels", args.base_channels),
                    ("cond_channels", args.cond_channels),
                )
                if value is not None
            },
        )
    tcfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_final=args.lr_final,
        ema_decay=0.999,
        val_every=max(1, args.steps // 6),
        save_every=max(1, args.steps // 6),
        seed=args.seed,
        val_ensemble=1,
        val_steps=args.val_steps,
        unlabelled_weight=args.unlabelled_weight,
    )
    meta = {
        "name": "default",
        "training_data": training_data,
        "holdout_slices": [held[0], held[-1] + 1],
        "eval_variant_seed": EVAL_VARIANT_SEED,
        "recipe": "python scripts/train_default_model.py " + " ".join(argv or sys.argv[1:]),
        "classes": {"0": "background", "1": "grey matter", "2": "white matter"},
    }
    print(
        f"training on {len(data)} slices ({len(train_idx)} of the sample), "
        f"holding out {held[0]}:{held[-1] + 1}; "
        f"model {cfg.preset} {cfg.version} at {cfg.image_size} px, context {cfg.context}"
        + (f", from {args.init}" if args.init else ""),
        flush=True,
    )
    last_print = [0.0]

    def on_progress(p) -> None:
        now = time.perf_counter()
        if now - last_print[0] > 30 or p.metric is not None or p.done == p.total:
            last_print[0] = now
            metric = f" val Dice {p.metric:.3f}" if p.metric is not None else ""
            print(f"[{now - start:7.0f} s] {p.message}{metric}", flush=True)

    result = train(
        cfg,
        tcfg,
        data,
        args.out,
        val=val,
        device="cpu",
        resume=args.resume,
        init_state=init_state,
        meta=meta,
        augment=dataclasses.replace(
            TRAIN_AUGMENT,
            invert=args.invert,
            window=args.window,
            curve=args.curve,
            lowres=args.lowres,
        ),
        on_progress=on_progress,
    )
    wall = time.perf_counter() - start
    summary = {
        "steps": result.steps_done,
        "wall_seconds": round(wall, 1),
        "best_val_dice": result.best_dice,
        "final_loss": float(np.mean(result.losses[-50:])),
        "params": sum(p.numel() for p in build_model(cfg).parameters()),
    }
    config = json.loads((result.best / CONFIG).read_text(encoding="utf-8"))
    config["training_summary"] = summary
    (result.best / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    print(json.dumps(summary), flush=True)
    if args.install:
        target = default_model_path()
        target.mkdir(parents=True, exist_ok=True)
        for name in (WEIGHTS, CONFIG):
            shutil.copyfile(result.best / name, target / name)
        print(f"installed into {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
