"""napari sample-data contribution: the ICBM152 2009a T1 with its GM/WM tissue labels.

The paths come from :mod:`napari_medsegdiff.sample` (the engine's copy); this module only
turns them into layer tuples.
"""

from __future__ import annotations

from napari_medsegdiff._reader import LayerData, layer_data_from_volume
from napari_medsegdiff.nifti import read_volume
from napari_medsegdiff.sample import sample_paths

__all__ = ["SAMPLE_LABELS_NAME", "SAMPLE_T1_NAME", "make_sample_data", "sample_paths"]

SAMPLE_T1_NAME = "ICBM152 T1"
SAMPLE_LABELS_NAME = "ICBM152 tissue (reference)"


def make_sample_data() -> list[LayerData]:
    """The T1 (Image) and its tissue labels (Labels) as layer tuples in true geometry."""
    t1_path, labels_path = sample_paths()
    t1 = layer_data_from_volume(read_volume(t1_path), name=SAMPLE_T1_NAME, as_labels=False)
    labels = layer_data_from_volume(
        read_volume(labels_path), name=SAMPLE_LABELS_NAME, as_labels=True
    )
    return [*t1, *labels]
