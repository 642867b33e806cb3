"""Segment every scan in a folder; under torchrun the scans are sharded across ranks.

Each scan ``NAME.nii.gz`` gives ``OUT/NAME_mask.nii.gz`` (and ``NAME_variance.nii.gz``).
Every rank first lists which scans still need work (all ranks see the same files: a
barrier separates this check from any writing), then takes its round-robin share of
that list, so each output is written by exactly one rank, atomically (temp file +
rename). ``resume`` skips scans whose outputs all exist; a scan with only some of its
outputs (interrupted between files) is redone. Results depend only on the scan, the
model and the sampler seed, not on the number of ranks.
"""

from __future__ import annotations

from pathlib import Path

from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.paths import list_nifti_files, nifti_stem


def cohort_outputs(scan: Path, out_dir: Path) -> tuple[Path, Path]:
    stem = nifti_stem(scan)
    return out_dir / f"{stem}_mask.nii.gz", out_dir / f"{stem}_variance.nii.gz"


def list_scans(folder: Path) -> list[Path]:
    scans = list_nifti_files(folder)
    if not scans:
        raise InputError(f"{folder}: no .nii/.nii.gz scans in this folder")
    return scans


def pending_scans(
    scans: list[Path], out_dir: Path, *, variance: bool, overwrite: bool, resume: bool
) -> tuple[list[tuple[Path, bool]], int]:
    """Scans still to segment as ``(scan, replace_existing)``, and how many are finished.

    Raises InputError when an output exists and neither ``overwrite`` nor ``resume`` is set.
    """
    todo: list[tuple[Path, bool]] = []
    finished = 0
    for scan in scans:
        mask_path, var_path = cohort_outputs(scan, out_dir)
        expected = [mask_path, var_path] if variance else [mask_path]
        present = [p for p in expected if p.exists()]
        if overwrite or not present:
            todo.append((scan, overwrite))
        elif not resume:
            raise InputError(
                f"{present[0]}: already exists; pass --resume to skip finished scans or "
                "--overwrite to replace them"
            )
        elif len(present) == len(expected):
            finished += 1
        else:  # interrupted between its files: redo this scan
            todo.append((scan, True))
    return todo, finished


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
    """Segment ``folder`` (this rank's share under torchrun).

    Returns totals over all ranks: ``written`` and ``skipped`` scans, ``scans`` in the
    folder, and ``mine``, the scan names this rank wrote.
    """
    from napari_medsegdiff.distributed import all_reduce, barrier, distributed_session, shard
    from napari_medsegdiff.jobs import segment_files
    from napari_medsegdiff.segmenter import Segmenter

    scans = list_scans(folder)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"-o {out_dir}: exists and is not a folder")
    with distributed_session(device) as dev:
        out_dir.mkdir(parents=True, exist_ok=True)
        todo, skipped = pending_scans(
            scans, out_dir, variance=variance, overwrite=overwrite, resume=resume
        )
        barrier()  # every rank has the same to-do list before anyone writes
        mine = shard(todo)
        seg = None
        written: list[str] = []
        for scan, replace in mine:
            mask_path, var_path = cohort_outputs(scan, out_dir)
            if seg is None:
                seg = Segmenter.load(model, dev or device)
            segment_files(
                [str(scan)],
                str(mask_path),
                variance=str(var_path) if variance else None,
                sampler=sampler,
                slices=slices,
                window=window,
                overwrite=replace,
                segmenter=seg,
                progress=False,
            )
            written.append(scan.name)
        (total,) = all_reduce([len(written)])  # also waits for every rank's outputs
    return {"written": int(total), "skipped": skipped, "scans": len(scans), "mine": written}
