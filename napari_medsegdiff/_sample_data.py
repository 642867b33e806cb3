"""napari sample-data contribution: the ICBM152 2009a T1 with its GM/WM tissue labels.

The paths come from :mod:`napari_medsegdiff.sample` (the engine's copy); this module only
turns them into layer tuples.
"""

from __future__ import annotations

from napari_medsegdiff._reader import LayerData, layer_data_from_volume
from napari_medsegdiff.nifti import read_volume
from napari_medsegdiff.sample import sample_paths

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
