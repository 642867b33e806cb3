"""The whole day in one napari window: open sample -> segment -> review -> correct ->
fine-tune -> re-segment -> export, driven through the docks as a user would."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("napari")


from napari_medsegdiff.gui import layers as L
from napari_medsegdiff.volume import VolumeGeometry

WAIT_MS = 180_000


@pytest.mark.gui
def test_walkthrough(make_napari_viewer, qtbot, tmp_path, tiny_model, notes):
    from napari_medsegdiff._sample_data import SAMPLE_LABELS_NAME, sample_paths
    from napari_medsegdiff.gui.launch import build_demo_viewer

    viewer = make_napari_viewer()
    seg, ft = build_demo_viewer(viewer, tiny_model)  # open the sample
    reference = viewer.layers[SAMPLE_LABELS_NAME]
    assert not reference.visible and ft.labels_combo.layer() is None
    seg.ensemble.setValue(2)
    seg.steps.setValue(2)
    seg.chunk_size = 8

    # segment: a first look at the current slice, then a small range
    assert seg.scope.currentText() == "current slice"
    assert seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=WAIT_MS)
    centre = L.current_index(viewer, seg.image_combo.layer())
    seg.scope.setCurrentText("slice range")
    seg.range_start.setValue(centre - 2)
    seg.range_stop.setValue(centre + 3)
    assert seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=WAIT_MS)
    mask = seg.mask_layer()
    assert mask.metadata[L.SEGMENTED] == list(range(centre - 2, centre + 3))
    assert not any("skipping" in n for n in notes)  # nothing corrected yet

    # review: jump to the most uncertain slice and mark it reviewed
    seg.tabs.show_page("Review")
    assert seg.review.slices()
    seg.review.next_button.click()
    first = seg.review.slices()[0]
    assert L.current_index(viewer, mask) == first
    seg.mark_reviewed()

    # correct: paint two other slices as the reference says (binary: brain tissue)
    truth = (np.asarray(reference.data) > 0).astype(np.uint8)
    fixed = [z for z in range(centre - 2, centre + 3) if z != first][:2]
    for z in fixed:
        mask.data[z] = truth[z]
    mask.refresh()
    assert seg.update_counts() == (2, 1)

    # fine-tune on those three slices (by default every corrected slice trains: the dock says so)
    assert ft.labels_combo.layer() is mask
    ft.update_counts()
    assert "Trains on" in ft.count_label.text() and "as chosen" in ft.count_label.text()
    ft.steps.setValue(2)
    ft.device.setCurrentText("cpu")
    assert ft.start()
    qtbot.waitUntil(lambda: not ft.running, timeout=WAIT_MS)
    assert ft.result is not None, ft.progress.format()
    assert seg.model_picker.current_path() == ft.result.path

    # re-segment what the user neither corrected nor reviewed
    before = mask.data.copy()
    assert ft.resegment()
    qtbot.waitUntil(lambda: not seg.running, timeout=WAIT_MS)
    redone = sorted(seg._job.slices)
    assert redone == sorted(set(range(centre - 2, centre + 3)) - {first, *fixed})
    for z in (first, *fixed):
        np.testing.assert_array_equal(mask.data[z], before[z])
    assert mask.metadata[L.MODEL] == str(ft.result.path)

    # export: lines up with the source scan voxel for voxel
    out = seg.export(tmp_path / "mask.nii.gz", variance_path=tmp_path / "var.nii.gz")
    assert out is not None
    src, got = nib.load(sample_paths()[0]), nib.load(out)
    assert got.shape == src.shape
    np.testing.assert_allclose(got.affine, src.affine)
    geometry = VolumeGeometry.from_metadata(mask.metadata)
    np.testing.assert_array_equal(geometry.to_display(np.asarray(got.dataobj)), mask.data)
    assert any("saved" in n and "mask.nii.gz" in n for n in notes)
