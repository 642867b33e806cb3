"""Segment dock: layers, runs, cancel, corrections, review, export, errors, responsiveness."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("napari")

from _nifti_factory import AFFINES, make_nifti

from napari_medsegdiff.gui import layers as L
from napari_medsegdiff.review import rank_slices_by_uncertainty
from napari_medsegdiff.volume import VolumeGeometry

WAIT_MS = 90_000


def scan_file(tmp_path, depth=6, size=32, name="scan.nii.gz"):
    """A small LPS scan (display shape (depth, size, size), spacing 2.5 x 0.8 x 0.8)."""
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, (size, size, depth)).astype(np.float32)
    data[8:24, 10:22, :] += 80
    return make_nifti(tmp_path / name, data, AFFINES["LPS"])


def open_scan(viewer, path):
    from napari_medsegdiff._reader import napari_get_reader

    data, kwargs, _ = napari_get_reader(str(path))(str(path))[0]
    return viewer.add_image(data, **kwargs)


def make_dock(make_napari_viewer, model, **fields):
    from napari_medsegdiff.gui.segment_dock import SegmentDock

    viewer = make_napari_viewer()
    dock = SegmentDock(viewer)
    viewer.window.add_dock_widget(dock, name="Segment", area="right")
    dock.select_model(model)
    dock.ensemble.setValue(fields.get("ensemble", 2))
    dock.steps.setValue(fields.get("steps", 2))
    dock.chunk_size = fields.get("chunk", 8)
    dock.scope.setCurrentText(fields.get("scope", "whole volume"))
    return viewer, dock


def run_and_wait(qtbot, dock, **kwargs):
    assert dock.run(**kwargs)
    qtbot.waitUntil(lambda: not dock.running, timeout=WAIT_MS)


@pytest.mark.gui
def test_dock_follows_layers(make_napari_viewer, tiny_model):
    viewer, dock = make_dock(make_napari_viewer, tiny_model)
    assert dock.image_combo.count() == 0
    first = viewer.add_image(np.zeros((4, 8, 8)), name="a")
    assert dock.image_combo.layer() is first
    viewer.add_image(np.zeros((4, 8, 8)), name="b")
    viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="not an image")
    assert [dock.image_combo.itemText(i) for i in range(dock.image_combo.count())] == ["a", "b"]
    assert dock.channel_list.count() == 1  # "b" may be stacked as a channel of "a"
    viewer.layers.remove("a")
    assert dock.image_combo.layer().name == "b"
    assert dock.model_picker.current_path() == tiny_model


@pytest.mark.gui
def test_run_makes_aligned_layers(make_napari_viewer, qtbot, tmp_path, tiny_model):
    viewer, dock = make_dock(make_napari_viewer, tiny_model)
    image = open_scan(viewer, scan_file(tmp_path))
    run_and_wait(qtbot, dock)
    mask, variance = dock.mask_layer(), dock.variance_layer()
    assert mask.name == "scan mask" and variance.name == "scan variance"
    for layer in (mask, variance):
        assert layer.data.shape == image.data.shape == (6, 32, 32)
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
        assert layer.metadata["medsegdiff_geometry"] == image.metadata["medsegdiff_geometry"]
    assert variance.blending == "translucent" and variance.colormap.map([0.0])[0][3] == 0
    assert mask.metadata[L.SEGMENTED] == list(range(6))
    np.testing.assert_array_equal(mask.metadata[L.PROPOSAL], mask.data)
    assert mask.metadata[L.MODEL] == str(tiny_model)
    assert float(variance.data.max()) > 0
    assert dock.run_button.isEnabled() and dock.progress.format().startswith("done: 6/6")
    assert dock.update_counts() == (0, 0)
    assert len(dock.review.slices()) == 6


@pytest.mark.gui
def test_cancel_keeps_finished_slices(make_napari_viewer, qtbot, tmp_path, tiny_model, notes):
    viewer, dock = make_dock(make_napari_viewer, tiny_model, chunk=2, steps=3)
    open_scan(viewer, scan_file(tmp_path, depth=30))
    assert dock.run()
    # cancel as soon as the worker has yielded a slice (before it is even flushed)
    qtbot.waitUntil(lambda: len(dock._pending) + len(dock.written) > 0, timeout=WAIT_MS)
    dock.cancel()
    qtbot.waitUntil(lambda: not dock.running, timeout=WAIT_MS)
    mask, variance = dock.mask_layer(), dock.variance_layer()
    done = mask.metadata[L.SEGMENTED]
    assert 1 <= len(done) < 30
    others = [z for z in range(30) if z not in done]
    assert not variance.data[others].any() and not mask.data[others].any()
    assert variance.data[done].any()
    assert dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()
    assert any("cancelled" in n for n in notes)


@pytest.mark.gui
def test_corrections_kept_or_overwritten(make_napari_viewer, qtbot, tmp_path, tiny_model):
    viewer, dock = make_dock(make_napari_viewer, tiny_model)
    open_scan(viewer, scan_file(tmp_path, depth=4))
    run_and_wait(qtbot, dock)
    mask = dock.mask_layer()
    mask.data[1] = 2  # the user's edit: a label the binary model never outputs
    mask.refresh()
    dock.mark_reviewed(3)
    assert dock.update_counts() == (1, 1)
    assert "1 slices corrected, 1 reviewed" in dock.count_label.text()
    dock.seed.setValue(7)
    run_and_wait(qtbot, dock)
    assert len(dock._job.slices) == 2  # slices 1 (corrected) and 3 (reviewed) skipped
    assert (mask.data[1] == 2).all()
    dock.keep_corrections.setChecked(False)
    run_and_wait(qtbot, dock)
    assert not (mask.data[1] == 2).any()
    np.testing.assert_array_equal(mask.data, mask.metadata[L.PROPOSAL])
    assert dock.update_counts() == (0, 0)


@pytest.mark.gui
def test_two_d_image(make_napari_viewer, qtbot, tiny_model):
    viewer, dock = make_dock(make_napari_viewer, tiny_model)
    viewer.add_image(np.random.default_rng(0).random((32, 48)).astype(np.float32), name="photo")
    assert dock.scope.currentText() == "2-D image"
    run_and_wait(qtbot, dock)
    assert dock.mask_layer().data.shape == (32, 48)
    assert dock.variance_layer().data.shape == (32, 48)


@pytest.mark.gui
def test_rank_slices_by_uncertainty():
    variance = np.zeros((4, 16, 16), np.float32)
    mask = np.zeros((4, 16, 16), np.uint8)
    mask[:, 4:12, 4:12] = 1
    for z, level in enumerate([0.1, 0.4, 0.2, 0.3]):
        variance[z, 3:13, 3:13] = level  # boundary band
        variance[z, 6:10, 6:10] = 5.0  # interior: ignored
    ranking = rank_slices_by_uncertainty(variance, mask, [0, 1, 2, 3])
    assert [z for z, _ in ranking] == [1, 3, 2, 0]
    assert ranking[0][1] == pytest.approx(0.4)
    empty = np.zeros_like(mask)  # no boundary: whole-slice mean
    ranking = rank_slices_by_uncertainty(variance, empty, [0, 1])
    assert [z for z, _ in ranking] == [1, 0]
    with pytest.raises(ValueError):
        rank_slices_by_uncertainty(variance, mask[:2], None)


@pytest.mark.gui
def test_review_list_moves_viewer(make_napari_viewer, qtbot, tmp_path, tiny_model):
    from qtpy.QtCore import Qt

    viewer, dock = make_dock(make_napari_viewer, tiny_model)
    image = open_scan(viewer, scan_file(tmp_path))
    mask = viewer.add_labels(
        np.zeros((6, 32, 32), np.uint8),
        name="scan mask",
        scale=image.scale,
        translate=image.translate,
        metadata={L.ROLE: "mask", L.SEGMENTED: list(range(6))},
    )
    mask.data[:, 8:20, 8:20] = 1
    variance = viewer.add_image(
        np.zeros((6, 32, 32), np.float32),
        name="scan variance",
        scale=image.scale,
        translate=image.translate,
        metadata={L.ROLE: "variance"},
    )
    variance.data[4] = 0.5
    variance.data[2] = 0.2
    dock.refresh_review()
    assert dock.review.slices()[:2] == [4, 2]
    item = dock.review.list.item(1)
    rect = dock.review.list.visualItemRect(item)
    qtbot.mouseClick(dock.review.list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    world_z = image.data_to_world([2, 0, 0])[0]
    assert viewer.dims.point[0] == pytest.approx(world_z)
    assert L.current_index(viewer, mask) == 2
    dock.review.prev_button.click()
    assert L.current_index(viewer, mask) == 4


@pytest.mark.gui
def test_export_round_trip(make_napari_viewer, qtbot, tmp_path, tiny_model, notes):
    viewer, dock = make_dock(make_napari_viewer, tiny_model)
    src = scan_file(tmp_path)
    open_scan(viewer, src)
    run_and_wait(qtbot, dock)
    dock.mask_layer().data[2, 3:7, 5:9] = 3
    out = dock.export(tmp_path / "mask.nii.gz", variance_path=tmp_path / "var.nii.gz")
    ref, got, var = (nib.load(p) for p in (src, out, tmp_path / "var.nii.gz"))
    assert got.shape == ref.shape == var.shape
    np.testing.assert_allclose(got.affine, ref.affine)
    assert int(got.header["sform_code"]) == int(ref.header["sform_code"])
    geometry = VolumeGeometry.from_metadata(dock.mask_layer().metadata)
    np.testing.assert_array_equal(
        geometry.to_display(np.asarray(got.dataobj)), dock.mask_layer().data
    )
    assert dock.export(out) is None  # exists, no overwrite: a notification, no exception
    assert any("exists" in n for n in notes)
    assert dock.export(out, overwrite=True) == out


@pytest.mark.gui
def test_errors_are_notifications(make_napari_viewer, qtbot, tmp_path, tiny_model, notes):
    viewer, dock = make_dock(make_napari_viewer, tiny_model)
    assert not dock.run()
    assert any("no image layer" in n for n in notes)
    open_scan(viewer, scan_file(tmp_path))
    viewer.add_image(
        np.zeros((6, 32, 32), np.float32),
        name="second",
        scale=viewer.layers["scan"].scale,
        translate=viewer.layers["scan"].translate,
    )
    from qtpy.QtCore import Qt

    dock.image_combo.setCurrentText("scan")
    dock.channel_list.item(0).setCheckState(Qt.CheckState.Checked)
    assert not dock.run()  # 2 channels, the model expects 1
    assert any("2 channel(s)" in n and "expects 1" in n for n in notes)
    assert dock.run_button.isEnabled() and dock.mask_layer() is None
    dock.channel_list.item(0).setCheckState(Qt.CheckState.Unchecked)
    dock.scope.setCurrentText("2-D image")
    assert not dock.run()
    assert any("2-D image" in n for n in notes)


@pytest.mark.gui
def test_viewer_stays_responsive(make_napari_viewer, qtbot, tmp_path, tiny_model):
    from qtpy.QtCore import QTimer

    viewer, dock = make_dock(make_napari_viewer, tiny_model, chunk=4, steps=3)
    open_scan(viewer, scan_file(tmp_path, depth=30))
    dock.warmup.join(120)  # engine imports done in the background when the dock opened
    assert dock.run()  # creates the (empty) result layers, then starts the worker
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    qtbot.waitUntil(lambda: len(dock.written) >= 3, timeout=WAIT_MS)
    qtbot.wait(1500)
    dock.cancel()
    qtbot.waitUntil(lambda: not dock.running, timeout=WAIT_MS)
    timer.stop()
    gaps = np.diff(ticks)
    assert len(gaps) > 20
    print(f"max gap {gaps.max():.3f} s over {len(gaps)} ticks")
    assert gaps.max() < 0.2, f"main thread blocked for {gaps.max():.3f} s"


@pytest.mark.gui
def test_slices_without_tissue_are_background_and_said(make_napari_viewer, qtbot, tiny_model):
    viewer, dock = make_dock(make_napari_viewer, tiny_model)
    rng = np.random.default_rng(0)
    volume = np.abs(rng.normal(100, 20, (5, 32, 32))).astype(np.float32)
    volume[[0, 4]] = 0.0  # air above and below the body
    viewer.add_image(volume, name="scan")
    run_and_wait(qtbot, dock)
    mask, variance = dock.mask_layer(), dock.variance_layer()
    assert not mask.data[[0, 4]].any() and not variance.data[[0, 4]].any()
    assert variance.data[1:4].max() > 0
    assert dock.progress.format() == (
        "done: 5/5 slices (2 without tissue: background, not sampled)"
    )
