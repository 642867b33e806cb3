"""File names: which files are scans, a file's stem, the scans in a folder.

Pure functions of names (no file is opened), shared by the readers, the training layouts,
the cohort runner and the evaluate report.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

PathLike = str | os.PathLike[str]

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
PAIR_SUFFIXES: tuple[str, ...] = (".hdr", ".img", ".hdr.gz", ".img.gz")  # NIfTI-1 pairs

AUTO_NAME = "<auto>"  # an output named after another (e.g. --variance without a file)


def strip_suffix(name: str, suffixes: Sequence[str]) -> str | None:
    """``name`` without the first of ``suffixes`` it ends in (case-insensitive); None when
    it ends in none of them or nothing would be left."""
    for suffix in suffixes:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def is_nifti_path(path: PathLike) -> bool:
    """True when the name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return os.fspath(path).lower().endswith(NIFTI_SUFFIXES)


def is_nifti_input_path(path: PathLike) -> bool:
    """True for names that ``read_volume`` opens: NIfTI and NIfTI-1 pairs (.hdr/.img)."""
    return is_nifti_path(path) or os.fspath(path).lower().endswith(PAIR_SUFFIXES)


def nifti_stem(path: PathLike) -> str:
    """File name without ``.nii`` / ``.nii.gz`` (or a pair's ``.hdr`` / ``.img``)."""
    name = pathlib.Path(path).name
    return strip_suffix(name, (*NIFTI_SUFFIXES, *PAIR_SUFFIXES)) or name


def list_nifti_files(folder: PathLike) -> list[pathlib.Path]:
    """The ``.nii`` / ``.nii.gz`` files directly inside ``folder``, sorted by name."""
    return sorted(
        p
        for p in pathlib.Path(folder).iterdir()
        if strip_suffix(p.name, NIFTI_SUFFIXES) is not None and p.is_file()
    )
