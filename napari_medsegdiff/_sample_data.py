"""napari sample-data contribution: the ICBM152 2009a T1 with its GM/WM tissue labels.

The files live inside the package (``napari_medsegdiff/sample_data/``; provenance and the
template's copyright notice in its README.md) and are found through
``importlib.resources``, so this also works from a wheel install.
"""

from __future__ import annotations

import atexit
import contextlib
import pathlib
from importlib import resources

from napari_medsegdiff._reader import LayerData, layer_data_from_volume
from napari_medsegdiff.nifti import read_volume

__all__ = [
    "SAMPLE_CLASS_NAMES",
    "SAMPLE_LABELS_NAME",
    "SAMPLE_T1_NAME",
    "make_sample_data",
    "sample_paths",
]

SAMPLE_T1_NAME = "ICBM152 T1"
SAMPLE_LABELS_NAME = "ICBM152 tissue (reference)"
SAMPLE_CLASS_NAMES = ("background", "grey matter", "white matter")
_T1_FILE = "icbm152_t1.nii.gz"
_LABELS_FILE = "icbm152_tissue.nii.gz"
_files = contextlib.ExitStack()
atexit.register(_files.close)


def _resource_path(name: str) -> pathlib.Path:
    ref = resources.files("napari_medsegdiff") / "sample_data" / name
    if isinstance(ref, pathlib.Path):
        return ref
    return pathlib.Path(_files.enter_context(resources.as_file(ref)))  # zipped install


def sample_paths() -> tuple[pathlib.Path, pathlib.Path]:
    """(T1 scan, tissue labels) paths: 0 background, 1 grey matter, 2 white matter."""
    return _resource_path(_T1_FILE), _resource_path(_LABELS_FILE)


def make_sample_data() -> list[LayerData]:
    """The T1 (Image) and its tissue labels (Labels) as layer tuples in true geometry."""
    t1_path, labels_path = sample_paths()
    t1 = layer_data_from_volume(read_volume(t1_path), name=SAMPLE_T1_NAME, as_labels=False)
    labels = layer_data_from_volume(
        read_volume(labels_path), name=SAMPLE_LABELS_NAME, as_labels=True
    )
    for _, kwargs, _ in labels:  # hidden: what one sees is the model's output, not this
        kwargs.update(
            visible=False,
            opacity=0.8,
            features={"index": list(range(3)), "class": list(SAMPLE_CLASS_NAMES)},
        )
    return [*t1, *labels]
