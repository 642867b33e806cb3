"""The README's main job without a window: segment the sample scan to NIfTI files.

Writes ``<out>/icbm152_t1_mask.nii.gz`` and ``..._variance.nii.gz`` aligned with the sample
scan and returns a one-paragraph summary with Dice per class against the reference labels,
scored on the segmented slices. The demo owns ``<out>``: a second run replaces its own two
files there (nothing else in the folder is touched).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.errors import InputError

CLASS_NAMES = {1: "GM", 2: "WM"}


def default_demo_slices(depth: int, count: int = 12) -> str:
    """A central block of axial slices (through the ventricles in the sample)."""
    start = max(0, depth // 2 - count // 2)
    return f"{start}:{min(depth, start + count)}"


def run_headless_demo(
    out: Path,
    *,
    slices: str | None = None,
    ensemble: int | None = None,
    steps: int | None = None,
    device: str = "auto",
    overwrite: bool = True,
    model: str | None = None,
) -> str:
    """Segment the sample scan with the default model; return a printable summary.

    ``ensemble`` / ``steps`` default to the model's own measured values (config.json), as
    everywhere else.

    ``overwrite`` is kept for callers; the demo always replaces its own output files.
    """
    from napari_medsegdiff.checkpoints import read_model_info, recommended_sampler, resolve_model
    from napari_medsegdiff.jobs import segment_files
    from napari_medsegdiff.metrics import dice
    from napari_medsegdiff.nifti import read_labels
    from napari_medsegdiff.sample import sample_paths
    from napari_medsegdiff.segmenter import parse_slices

    t1, tissue = sample_paths()
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder", argument="out")
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    mask_path, var_path = out / "icbm152_t1_mask.nii.gz", out / "icbm152_t1_variance.nii.gz"
    reference = read_labels(tissue).data
    chosen = recommended_sampler(read_model_info(resolve_model(model)).meta)
    chosen.update({k: v for k, v in (("ensemble", ensemble), ("steps", steps)) if v})
    spec = slices or default_demo_slices(reference.shape[0])
    info = segment_files(
        [str(t1)],
        str(mask_path),
        variance=str(var_path),
        model=model,
        sampler=SamplerConfig(**chosen),
        slices=spec,
        device=device,
        overwrite=True,  # the demo's own files in its own folder: replaced on every run
    )
    pred = read_labels(mask_path).data
    idx = parse_slices(spec, reference.shape[0])
    scores = {name: dice(pred[idx] == k, reference[idx] == k) for k, name in CLASS_NAMES.items()}
    mean = float(np.mean(list(scores.values())))
    parts = ", ".join(f"{name} {value:.3f}" for name, value in scores.items())
    return (
        f"wrote {mask_path.name} and {var_path.name} into {out} (replaced on each demo run; "
        f"{info['slices']} slices {spec}, {info['seconds']:.1f} s, model {info['model']}); "
        f"Dice vs reference on those slices: {parts}, mean {mean:.3f} "
        f"(medsegdiff evaluate --pred {mask_path} --truth {tissue} --slices {spec})"
    )
