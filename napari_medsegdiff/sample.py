"""The shipped sample scan: the ICBM152 2009a T1 with its GM/WM tissue labels.

The files live inside the package (``napari_medsegdiff/sample_data/``; provenance and the
template's copyright notice in its README.md) and are found through
``importlib.resources``, so this also works from a wheel install. The napari contribution
(``_sample_data.py``), the demo, fine-tune replay and the benchmarks all read them here.
"""

from __future__ import annotations

import atexit
import contextlib
import pathlib
from importlib import resources

__all__ = ["sample_paths"]

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
