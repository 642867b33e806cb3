"""The real-data set of issue #16 (scripts/fetch_data.sh): every case's geometry, its
provenance record, and the held-out cases never unpacked. Skips with the reason when the
data were not fetched (no network at install time)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medsegdiff.nifti import read_labels, read_volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import realdata

EXPECTED = sorted(realdata.CASES)
REASON = realdata.missing_reason(EXPECTED)
needs_data = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def test_missing_data_gives_a_reason_not_a_failure(tmp_path):
    reason = realdata.missing_reason(["colin27_head"], tmp_path)
    assert reason is not None and "fetch_data.sh" in reason and "colin27_head" in reason
    assert realdata.available_cases(tmp_path) == {}


def test_held_out_cases_are_not_listed_for_extraction():
    members = " ".join(m for s in realdata.SOURCES.values() for m in s.members)
    for name in realdata.HELD_OUT:
        assert name not in members
    assert not any(name in case for case in realdata.CASES for name in realdata.HELD_OUT)


@needs_data
@pytest.mark.parametrize("name", EXPECTED)
def test_case_geometry_and_provenance(name):
    case = realdata.available_cases()[name]
    image, labels = nib.load(case.image), nib.load(case.labels)
    assert image.shape == labels.shape
    np.testing.assert_allclose(image.affine, labels.affine, atol=1e-5)
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    lab = np.asanyarray(labels.dataobj)
    assert np.issubdtype(lab.dtype, np.integer)
    present = sorted(int(v) for v in np.unique(lab))
    assert present == case.meta["labels_present"] and len(present) >= 2
    assert set(map(str, present)) <= set(case.meta["label_names"])
    for key in ("provenance", "licence", "packages", "voxel_mm", "kind"):
        assert case.meta[key], key
    for rel in case.meta["licence_files"]:
        assert (realdata.data_root() / rel).is_file(), rel
    # The project's own reader sees the same grid for image and labels.
    vol, lab_vol = read_volume(case.image), read_labels(case.labels)
    assert vol.data.shape == lab_vol.data.shape
    np.testing.assert_allclose(vol.geometry.affine, lab_vol.geometry.affine, atol=1e-5)


@needs_data
def test_brain_masks_lie_inside_the_head():
    """A brain mask on a full head covers bright tissue, not air (image and mask aligned)."""
    for name in ("colin27_head", "robex_head", "mni152_6gen_head", "itk_lowres_head"):
        case = realdata.available_cases()[name]
        img = np.asanyarray(nib.load(case.image).dataobj).astype(np.float32)
        brain = np.asanyarray(nib.load(case.labels).dataobj) == 1
        air = img < np.percentile(img, 20)
        assert 0.02 < brain.mean() < 0.5, name
        assert (air & brain).sum() < 0.02 * brain.sum(), name
        assert img[brain].mean() > 2 * img[~brain].mean(), name


@needs_data
def test_fetch_again_changes_nothing():
    before = {
        n: (c.folder / "case.json").stat().st_mtime_ns
        for n, c in realdata.available_cases().items()
    }
    assert realdata.fetch(names=["colin27_head"]) == []
    after = (realdata.available_cases()["colin27_head"].folder / "case.json").stat().st_mtime_ns
    assert after == before["colin27_head"]
