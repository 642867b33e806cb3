"""Segment every scan in a folder; under torchrun the scans are sharded across ranks.

Each scan ``NAME.nii.gz`` gives ``OUT/NAME_mask.nii.gz`` (and ``NAME_variance.nii.gz``).
Each output is written by exactly one rank, atomically; ``resume`` skips finished ones.
"""

from __future__ import annotations

from pathlib import Path

from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.errors import InputError


def cohort_outputs(scan: Path, out_dir: Path) -> tuple[Path, Path]:
    from napari_medsegdiff.nifti import nifti_stem

    stem = nifti_stem(scan)
    return out_dir / f"{stem}_mask.nii.gz", out_dir / f"{stem}_variance.nii.gz"


def list_scans(folder: Path) -> list[Path]:
    scans = sorted(p for p in folder.iterdir() if p.is_file()
                   and p.name.endswith((".nii", ".nii.gz")))
    if not scans:
        raise InputError(f"{folder}: no .nii/.nii.gz scans in this folder")
    return scans


def segment_cohort(
    folder: Path,
    out_dir: Path,
    *,
    sampler: SamplerConfig,
    model: str | None = None,
    device: str = "auto",
    window: tuple[float, float] | None = None,
    slices: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    variance: bool = False,
) -> dict:
    """Segment this rank's share of ``folder``; returns counts of written/skipped scans."""
    from napari_medsegdiff.commands import segment_files
    from napari_medsegdiff.distributed import distributed_session, shard
    from napari_medsegdiff.segmenter import Segmenter

    scans = list_scans(folder)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"-o {out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    with distributed_session(device) as dev:
        mine = shard(scans)
        seg = None
        for scan in mine:
            mask_path, var_path = cohort_outputs(scan, out_dir)
            if mask_path.exists() and not overwrite:
                if resume:
                    skipped += 1
                    continue
                raise InputError(f"{mask_path}: already exists; pass --resume to skip finished "
                                 "scans or --overwrite to replace them")
            if seg is None:
                seg = Segmenter.load(model, dev or device)
            segment_files([str(scan)], str(mask_path),
                          variance=str(var_path) if variance else None, sampler=sampler,
                          slices=slices, window=window, overwrite=overwrite, segmenter=seg,
                          progress=False)
            written += 1
    return {"written": written, "skipped": skipped, "scans": len(scans)}
