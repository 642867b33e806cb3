"""A 4-D series (fMRI, DWI) opens as one layer with a volume slider; the Segment dock
takes the volume shown, or the volumes typed, as the model's channels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("napari")

import test_gui_segment as helpers
from _nifti_factory import AFFINES, make_nifti

from napari_medsegdiff.gui import layers as L

make_dock, open_scan, run_and_wait = helpers.make_dock, helpers.open_scan, helpers.run_and_wait


def _series(tmp_path):
    data = np.random.default_rng(0).normal(100, 20, (32, 32, 6, 8)).astype(np.float32)
    data[8:24, 10:22, :, 5] += 300
    return make_nifti(tmp_path / "bold.nii.gz", data, AFFINES["LPS"]), data


@pytest.mark.gui
def test_series_volume_slider_and_channel_pick(
    make_napari_viewer, qtbot, tmp_path, tiny_model, notes
):
    viewer, dock = make_dock(make_napari_viewer, tiny_model)
    path, data = _series(tmp_path)
    image = open_scan(viewer, path)
    assert image.data.shape == (8, 6, 32, 32) and L.is_volume_series(image)
    assert L.spatial_shape(image) == (6, 32, 32)
    assert not dock.volumes.isHidden()
    viewer.dims.set_current_step(0, 5)  # the volume slider
    assert L.shown_volume(viewer, image) == 5
    run_and_wait(qtbot, dock)
    mask, variance = dock.mask_layer(), dock.variance_layer()
    assert mask.data.shape == variance.data.shape == (6, 32, 32)
    assert mask.metadata[L.VOLUME_PICKS] == [5] and "volumes" not in mask.metadata
    np.testing.assert_allclose(mask.scale, image.scale[1:])
    out = dock.export(tmp_path / "mask.nii.gz")
    got = nib.load(out)
    assert got.shape == data.shape[:3]
    np.testing.assert_allclose(got.affine, AFFINES["LPS"], atol=1e-6)
    # the Fine-tune dock trains on the volume the proposal was made from
    from napari_medsegdiff.gui.finetune_dock import FinetuneDock

    ft = FinetuneDock(viewer)
    viewer.dims.set_current_step(0, 0)
    mask.data[1, 8:24, 10:22] = 1
    job = ft._prepare()
    np.testing.assert_array_equal(job.image, image.data[5])
    # two volumes typed as channels: a 1-channel model says so in one notification
    dock.volumes.setText("0,3")
    assert L.stack_channels([image], [0, 3]).shape == (6, 32, 32, 2)
    assert not dock.run()
    assert any("2 channel(s)" in n for n in notes)
    dock.volumes.setText("9")
    assert not dock.run()
    assert any("volumes: need indices in 0..7" in n for n in notes)
