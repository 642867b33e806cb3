"""Fine-tune dock: corrected slices -> a new model version selected in the Segment dock."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

import test_gui_segment as helpers

from napari_medsegdiff.checkpoints import ModelStore
from napari_medsegdiff.gui import layers as L

make_dock, open_scan, scan_file = helpers.make_dock, helpers.open_scan, helpers.scan_file

WAIT_MS = 120_000


@pytest.mark.gui
def test_finetune_makes_and_selects_new_version(make_napari_viewer, qtbot, tmp_path, tiny_model):
    from napari_medsegdiff.gui.finetune_dock import FinetuneDock

    viewer, seg = make_dock(make_napari_viewer, tiny_model, ensemble=1, steps=1)
    open_scan(viewer, scan_file(tmp_path, depth=6))
    ft = FinetuneDock(viewer)
    viewer.window.add_dock_widget(ft, name="Fine-tune", area="right")
    assert seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=WAIT_MS)
    mask = seg.mask_layer()
    assert ft.labels_combo.layer() is mask and ft.image_combo.layer().name == "scan"
    assert ft.model_picker.current_path() == tiny_model
    for z in (0, 1, 2, 3):  # the user's corrections: a box the model did not draw
        mask.data[z] = 0
        mask.data[z, 8:24, 10:22] = 1
    seg.mark_reviewed(4)
    ft.holdout.setCurrentText("hold out 1 in 5 to measure Dice")
    ft.update_counts()
    assert ft.training_counts() == (4, 1)
    text = ft.count_label.text()
    assert "4 corrected (0-3) + 1 reviewed (4)" in text and "holds out" in text
    ft.steps.setValue(4)
    ft.device.setCurrentText("cpu")
    assert ft.start()
    assert ft.start_button.text() == "Stop"
    qtbot.waitUntil(lambda: not ft.running, timeout=WAIT_MS)
    assert ft.result is not None, ft.progress.format()
    assert len(ft.plot.losses) == 4 and ft.plot.dice  # the curve got loss and Dice points
    versions = ModelStore().versions()
    assert [v.path for v in versions] == [ft.result.path]
    assert seg.model_picker.current_path() == ft.result.path
    assert ft.start_button.text() == "Start" and ft.resegment_button.isEnabled()
    assert ft.result.provenance["slices"] == [0, 1, 2, 3, 4]

    before = mask.data.copy()
    assert ft.resegment()
    qtbot.waitUntil(lambda: not seg.running, timeout=WAIT_MS)
    assert sorted(seg._job.slices) == [5]  # not corrected (0-3) nor reviewed (4)
    np.testing.assert_array_equal(mask.data[:5], before[:5])
    assert mask.metadata[L.MODEL] == str(ft.result.path)


@pytest.mark.gui
def test_finetune_without_corrections_is_a_notification(
    make_napari_viewer, qtbot, tmp_path, tiny_model, notes
):
    from napari_medsegdiff.gui.finetune_dock import FinetuneDock

    viewer = make_napari_viewer()
    ft = FinetuneDock(viewer)
    viewer.window.add_dock_widget(ft, name="Fine-tune", area="right")
    assert not ft.start()
    assert any("no labels layer" in n for n in notes)
    image = open_scan(viewer, scan_file(tmp_path, depth=4))
    viewer.add_labels(
        np.zeros((4, 32, 32), np.uint8),
        name="scan mask",
        scale=image.scale,
        translate=image.translate,
    )
    ft.model_picker.select_model(tiny_model)
    ft.steps.setValue(2)
    assert ft.labels_combo.layer() is None  # hand-made labels are never picked by default
    ft.labels_combo.setCurrentText("scan mask")
    assert not ft.start()  # nothing labelled: said before anything runs
    assert ft.result is None and ft.start_button.text() == "Start"
    assert any("no corrected or reviewed slices" in n or "no training slices" in n for n in notes)


@pytest.mark.gui
def test_demo_viewer(make_napari_viewer, tiny_model):
    from napari_medsegdiff._sample_data import SAMPLE_LABELS_NAME, SAMPLE_T1_NAME
    from napari_medsegdiff.gui.launch import build_demo_viewer

    viewer = make_napari_viewer()
    seg, ft = build_demo_viewer(viewer, tiny_model)
    assert seg.image_combo.currentText() == SAMPLE_T1_NAME
    assert seg.model_picker.current_path() == tiny_model
    assert ft.segment_dock is seg
    assert not viewer.layers[SAMPLE_LABELS_NAME].visible
    image = viewer.layers[SAMPLE_T1_NAME]
    assert L.current_index(viewer, image) == image.data.shape[0] // 2


@pytest.mark.gui
def test_manifest_docks_find_each_other(make_napari_viewer):
    from napari_medsegdiff.gui.finetune_dock import FinetuneDock
    from napari_medsegdiff.gui.segment_dock import SegmentDock

    viewer = make_napari_viewer()
    _, seg = viewer.window.add_plugin_dock_widget("napari-medsegdiff", "Segment")
    _, ft = viewer.window.add_plugin_dock_widget("napari-medsegdiff", "Fine-tune")
    assert isinstance(seg, SegmentDock) and isinstance(ft, FinetuneDock)
    assert ft.segment_dock is seg


@pytest.mark.gui
def test_stop_before_the_first_step_says_nothing_was_saved(
    make_napari_viewer, qtbot, tmp_path, tiny_model, notes, monkeypatch
):
    from napari_medsegdiff import finetune as engine
    from napari_medsegdiff.errors import Cancelled
    from napari_medsegdiff.gui.finetune_dock import FinetuneDock

    def stopped(*args, **kwargs):  # the engine's answer to a stop before step 1
        raise Cancelled("fine-tuning cancelled before the first step; no version saved")

    monkeypatch.setattr(engine, "finetune", stopped)
    viewer, seg = make_dock(make_napari_viewer, tiny_model, ensemble=1, steps=1)
    open_scan(viewer, scan_file(tmp_path, depth=6))
    ft = FinetuneDock(viewer)
    viewer.window.add_dock_widget(ft, name="Fine-tune", area="right")
    assert seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=WAIT_MS)
    seg.mark_reviewed(2)
    ft.update_counts()
    assert ft.start()
    qtbot.waitUntil(lambda: not ft.running, timeout=WAIT_MS)
    assert ft.result is None and ft.start_button.text() == "Start"
    assert ft.progress.format() == "stopped before the first step: no version saved"
    assert any("no version saved" in n for n in notes), notes
