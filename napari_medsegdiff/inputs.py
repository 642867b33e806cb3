"""One entry for every scan the CLI opens: NIfTI file(s) or one DICOM series.

A folder holding DICOM files (or a DICOMDIR, or one ``.dcm`` file) is one series; a
folder holding NIfTI files is a cohort (handled by :mod:`napari_medsegdiff.cohort`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from napari_medsegdiff.errors import InputError
from napari_medsegdiff.volume import Volume

__all__ = ["read_scan"]


def read_scan(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    series: str | None = None,
) -> Volume:
    """Read NIfTI file(s) (several = channels) or one DICOM series into a :class:`Volume`.

    Args:
        paths: one path or several NIfTI paths.
        series: SeriesInstanceUID when a DICOM folder holds several image series.

    Raises:
        InputError: as :func:`~napari_medsegdiff.nifti.read_volume` /
            :func:`~napari_medsegdiff.dicom.read_dicom`; ``series`` given for NIfTI input.
    """
    from napari_medsegdiff.dicom import is_dicom_input, read_dicom
    from napari_medsegdiff.nifti import read_volume

    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if len(items) == 1 and is_dicom_input(items[0]):
        return read_dicom(items[0], series=series)
    if any(is_dicom_input(p) for p in items):
        raise InputError(
            f"{', '.join(map(str, items))}: a DICOM series cannot be combined with other "
            "files as channels; give the series alone"
        )
    if series is not None:
        raise InputError(
            f"series {series}: only for a DICOM input, not {items[0]}", argument="series"
        )
    return read_volume(items if len(items) > 1 else items[0])
