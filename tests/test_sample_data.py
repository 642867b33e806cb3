"""The bundled ICBM152 sample: present, small, real, and in true geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_medsegdiff._sample_data import (
    SAMPLE_LABELS_NAME,
    SAMPLE_T1_NAME,
    make_sample_data,
)
from napari_medsegdiff.nifti import write_labels
from napari_medsegdiff.sample import sample_paths
from napari_medsegdiff.volume import VolumeGeometry

DISPLAY_SHAPE = (157, 185, 149)


@pytest.fixture(scope="module")
def layers():
    return make_sample_data()


def test_files_present_small_and_documented():
    t1, labels = sample_paths()
    assert t1.name == "icbm152_t1.nii.gz" and labels.name == "icbm152_tissue.nii.gz"
    assert t1.stat().st_size + labels.stat().st_size < 5 * 2**20
    readme = " ".join((t1.parent / "README.md").read_text(encoding="utf-8").split())
    for needle in (
        "Louis Collins",
        "without fee is hereby granted",
        "Fonov",
        "Collins",
        "scripts/make_sample_data.py",
        "nilearn",
    ):
        assert needle in readme


def test_sample_layers(layers):
    (t1, t1_kw, t1_kind), (lab, lab_kw, lab_kind) = layers
    assert (t1_kind, lab_kind) == ("image", "labels")
    assert (t1_kw["name"], lab_kw["name"]) == (SAMPLE_T1_NAME, SAMPLE_LABELS_NAME)
    assert t1.shape == lab.shape == DISPLAY_SHAPE
    assert t1_kw["scale"] == lab_kw["scale"] == (1.0, 1.0, 1.0)
    assert t1_kw["translate"] == lab_kw["translate"] == (-72.0, -75.0, -74.0)
    assert set(np.unique(lab).tolist()) == {0, 1, 2}
    g1 = VolumeGeometry.from_metadata(t1_kw["metadata"])
    assert g1.same_space(VolumeGeometry.from_metadata(lab_kw["metadata"]))


def test_sample_is_a_real_brain(layers):
    (t1, _, _), (lab, _, _) = layers
    gm, wm = t1[lab == 1].mean(), t1[lab == 2].mean()
    assert wm > gm > t1[lab == 0].mean()  # T1 contrast: WM brighter than GM
    assert 0.9e6 < np.count_nonzero(lab == 1) < 1.3e6  # ~1 L grey matter at 1 mm
    # superior end of the head is at high z: the top slices hold less tissue than the middle
    per_slice = (lab > 0).sum(axis=(1, 2))
    assert per_slice[-5:].sum() < per_slice[70:75].sum()


def test_sample_labels_export_matches_file(tmp_path, layers):
    (_, t1_kw, _), (lab, _, _) = layers
    geometry = VolumeGeometry.from_metadata(t1_kw["metadata"])
    out = write_labels(lab, geometry, tmp_path / "tissue.nii.gz")
    ref = nib.load(sample_paths()[1])
    back = nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), np.asanyarray(ref.dataobj))
    np.testing.assert_array_equal(back.affine, ref.affine)
