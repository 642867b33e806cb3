"""Correct tab: fill between slices (known answer, painted slices untouched, one undo) and
propagate (the next slices segmented, the view moved)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytest.importorskip("napari")
if importlib.util.find_spec("itk") is None:  # not imported here: ITK runs in a helper
    pytest.skip("itk-morphologicalcontourinterpolation is not installed", allow_module_level=True)

from _nifti_factory import AFFINES, make_nifti

from napari_medsegdiff.gui import layers as L

WAIT_MS = 90_000


def ellipsoid(depth=17, size=48) -> np.ndarray:
    z, y, x = np.mgrid[:depth, :size, :size]
    inside = ((z - 8) / 7.5) ** 2 + ((y - 24) / 15) ** 2 + ((x - 22) / 10) ** 2 <= 1
    return inside.astype(np.uint8) * 3


def segmented_dock(make_napari_viewer, qtbot, model, tmp_path, depth=17):
    from napari_medsegdiff.gui.segment_dock import SegmentDock

    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, (48, 48, depth)).astype(np.float32)
    path = make_nifti(tmp_path / "scan.nii.gz", data, AFFINES["RAS"])
    viewer = make_napari_viewer()
    [image] = viewer.open(str(path), plugin="napari-medsegdiff")
    dock = SegmentDock(viewer)
    viewer.window.add_dock_widget(dock, name="Segment", area="right")
    dock.select_model(model)
    dock.ensemble.setValue(1)
    dock.steps.setValue(1)
    dock.scope.setCurrentText("whole volume")
    assert dock.run()
    qtbot.waitUntil(lambda: not dock.running, timeout=WAIT_MS)
    return viewer, dock, image


def test_fill_between_slices_interpolates_keeps_painted_slices_and_undoes_in_one_step(
    make_napari_viewer, qtbot, tiny_model, tmp_path
):
    _, dock, _ = segmented_dock(make_napari_viewer, qtbot, tiny_model, tmp_path)
    mask = dock.mask_layer()
    truth = ellipsoid()
    painted = [2, 6, 10, 14]
    ys, xs = np.mgrid[:48, :48]
    for z in painted:  # the user paints these slices exactly (one history entry each)
        mask.data_setitem((np.full(ys.size, z), ys.ravel(), xs.ravel()), truth[z].ravel())
    dock.mark_reviewed(8)
    reviewed_before = np.array(L.labels_of(mask)[8])
    assert L.corrected(mask) == painted
    before = np.array(L.labels_of(mask))
    proposal_before = np.array(mask.metadata[L.PROPOSAL])

    with qtbot.waitSignal(dock.fill_finished, timeout=WAIT_MS) as done:
        assert dock.fill_between_slices()
    filled = done.args[0]
    labels = L.labels_of(mask)
    expected = [z for z in range(3, 14) if z not in painted and z != 8]
    assert filled == expected
    inter, ref = labels[filled] == 3, truth[filled] == 3
    dice = 2 * (inter & ref).sum() / (inter.sum() + ref.sum())
    assert dice > 0.9, dice
    for z in painted:
        assert np.array_equal(labels[z], truth[z])
    assert np.array_equal(labels[8], reviewed_before)  # reviewed: never filled
    assert L.corrected(mask) == painted  # filled slices are proposals, not corrections
    assert np.array_equal(labels[[0, 1, 15, 16]], before[[0, 1, 15, 16]])  # outside the span

    mask.undo()
    assert L.labels_of(mask).tobytes() == before.tobytes()
    assert np.array_equal(mask.metadata[L.PROPOSAL], proposal_before)
    assert L.corrected(mask) == painted
    mask.redo()
    assert np.array_equal(L.labels_of(mask)[filled], labels[filled])
    assert L.corrected(mask) == painted


def test_fill_needs_two_painted_slices(make_napari_viewer, qtbot, tiny_model, tmp_path, notes):
    seen = notes
    _, dock, _ = segmented_dock(make_napari_viewer, qtbot, tiny_model, tmp_path, depth=6)
    mask = dock.mask_layer()
    L.labels_of(mask)[2] = ellipsoid(6)[2] + 1
    assert not dock.fill_between_slices()
    assert any("at least two slices" in m for m in seen), seen


def test_propagate_segments_the_next_slices_and_moves_there(
    make_napari_viewer, qtbot, tiny_model, tmp_path
):
    viewer, dock, image = segmented_dock(make_napari_viewer, qtbot, tiny_model, tmp_path)
    dock.keep_corrections.setChecked(False)
    L.jump_to_slice(viewer, image, 5)
    dock.correct.count.setValue(3)
    assert dock.propagate(+1)
    qtbot.waitUntil(lambda: not dock.running, timeout=WAIT_MS)
    assert sorted(dock.written) == [6, 7, 8]
    assert L.current_index(viewer, image) == 6
    assert dock.propagate(-1)
    qtbot.waitUntil(lambda: not dock.running, timeout=WAIT_MS)
    assert sorted(dock.written) == [3, 4, 5]
