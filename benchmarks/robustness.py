"""Zero-shot robustness to other contrasts: models side by side, before any fine-tuning.

    python benchmarks/robustness.py [--model DIR ...] [--threads N]

Each model segments the held-out slices recorded in the (first) model's config.json, in
the T1 sample and in contrasts built from it: T2-like (intensities inverted inside the
head, bias field, noise), gamma 2.5 + strong bias field, a narrow CT-like display window
(the T1 clipped to its 40th-90th head percentiles) and the brain inside a synthetic head
(CSF, skull and scalp around it: a scan that was not skull-stripped); and the T1 in a
larger (256 mm, padded) or smaller (100 mm, cropped) field of view. Printed: mean GM/WM
Dice per contrast, every model at the first model's recommended sampler. A model that
starts closer on a new contrast needs fewer corrected slices to adapt
(benchmarks/finetune.py).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from quality import CLASSES
from scenarios import gamma_shift, sample, synthetic_head, t2_like

from napari_medsegdiff.checkpoints import recommended_sampler, resolve_model
from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.metrics import dice
from napari_medsegdiff.segmenter import Segmenter


def narrow_window() -> np.ndarray:
    """The T1 clipped to its 40th-90th percentiles inside the head (saturated both ends)."""
    image, _ = sample()
    head = image > 0.05 * image.max()
    lo, hi = np.percentile(image[head], [40, 90])
    return np.clip(image, lo, hi).astype(np.float32)


def field_of_view(image: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """The sample's axial slices as a ``size`` x ``size`` px (1 mm) field of view, centred:
    padded with background when larger than the sample's, cropped when smaller. The canvas
    resizes by pixel count, so this changes the anatomy's size on the model's input."""
    out = []
    for volume in image, labels:
        for axis in 1, 2:
            extra = size - volume.shape[axis]
            if extra > 0:
                width = [(0, 0)] * 3
                width[axis] = (extra // 2, extra - extra // 2)
                volume = np.pad(volume, width)
            elif extra < 0:
                start = -extra // 2
                volume = np.take(volume, range(start, start + size), axis=axis)
        out.append(volume)
    return tuple(out)


def contrasts() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Named (image, labels) volumes (z, y, x); all keep the sample's axial slices."""
    image, labels = sample()
    head = synthetic_head(0)
    return {
        "T1 (as trained)": (image, labels),
        "T2-like": (t2_like(0).image, labels),
        "gamma 2.5 + bias": (gamma_shift(0).image, labels),
        "narrow window": (narrow_window(), labels),
        "not skull-stripped": (head.image, head.labels),
        "FOV 256 mm": field_of_view(image, labels, 256),
        "crop 100 mm": field_of_view(image, labels, 100),
    }


def mean_dice(
    seg: Segmenter,
    image: np.ndarray,
    labels: np.ndarray,
    slices: list[int],
    sampler: SamplerConfig,
) -> float:
    """Mean GM/WM Dice pooled over ``slices``."""
    pred = np.stack([r.mask for r in seg.segment_volume(image, slices=slices, sampler=sampler)])
    truth = labels[slices]
    return float(np.mean([dice(pred == k, truth == k) for k in CLASSES]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=None, help="repeatable")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folders = [resolve_model(m) for m in (args.model or [None])]
    meta = json.loads((folders[0] / "config.json").read_text(encoding="utf-8"))
    sampler = SamplerConfig(**recommended_sampler(meta))
    start, stop = meta["holdout_slices"]
    held = list(range(start, stop))
    volumes = contrasts()
    print(
        f"held-out slices {start}:{stop}; mean GM/WM Dice, no fine-tuning; every model at "
        f"the first one's sampler ({sampler.steps} steps x ensemble {sampler.ensemble})"
    )
    print(f"{'model':<40} " + " ".join(f"{name:>18}" for name in volumes))
    for folder in folders:
        seg = Segmenter.load(folder, "cpu")
        cells = [mean_dice(seg, vol, labels, held, sampler) for vol, labels in volumes.values()]
        print(f"{str(folder)[-40:]:<40} " + " ".join(f"{c:18.3f}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
