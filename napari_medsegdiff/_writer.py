"""napari writer contribution: a Labels layer -> NIfTI aligned with its source scan.

The layer's ``metadata["medsegdiff_geometry"]`` (set by this plugin's reader, sample data
and Segment dock) says which scan the labels belong to; the file gets that scan's shape,
affine, orientation and header codes, so it overlays the scan in any viewer.

Overwriting: napari's save dialog already asks before replacing a file, so (npe2 writer
contract) this writer passes ``overwrite=True``; the engine's
:func:`~napari_medsegdiff.nifti.write_labels` refuses by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_medsegdiff.errors import InputError
from napari_medsegdiff.nifti import write_labels
from napari_medsegdiff.paths import is_nifti_path
from napari_medsegdiff.volume import VolumeGeometry

__all__ = ["write_labels_layer"]


def write_labels_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: save (z, y, x) labels next to their source geometry.

    Args:
        path: target file; ``.nii.gz`` is appended when it has no NIfTI extension.
        data: the Labels layer data, (z, y, x) integers.
        meta: the layer attributes napari passes (``name``, ``metadata``, ...).

    Returns:
        ``[path]`` of the written file.

    Raises:
        InputError: the layer has no source geometry, or the labels do not fit it.
    """
    name = meta.get("name", "labels") if isinstance(meta, dict) else "labels"
    metadata = meta.get("metadata") if isinstance(meta, dict) else None
    if not isinstance(metadata, dict) or "medsegdiff_geometry" not in metadata:
        raise InputError(
            f"labels layer '{name}': no source geometry in its metadata; which image does it "
            "belong to? Draw or segment on a scan opened with napari-medsegdiff, or copy "
            "that image layer's metadata['medsegdiff_geometry'] to this layer"
        )
    geometry = VolumeGeometry.from_metadata(metadata["medsegdiff_geometry"])
    if not is_nifti_path(path):
        path = f"{path}.nii.gz"
    if isinstance(data, list):  # multiscale labels: the first level is full resolution
        data = data[0]
    out = write_labels(np.asarray(data), geometry, path, overwrite=True)
    return [str(out)]
