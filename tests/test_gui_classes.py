"""Docks for new classes and slice suggestions: the Fine-tune dock asks once before adding
a class (and for its name), offers a new model, and the Segment dock suggests slices."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")

import test_gui_segment as helpers

from napari_medsegdiff.checkpoints import read_model_info
from napari_medsegdiff.gui import layers as L

make_dock, open_scan, scan_file = helpers.make_dock, helpers.open_scan, helpers.scan_file

WAIT_MS = 120_000


def _segmented_with_new_label(make_napari_viewer, qtbot, tmp_path, tiny_model):
    """Segment a scan with the (2-class) tiny model, paint label 2 on three slices."""
    from napari_medsegdiff.gui.finetune_dock import FinetuneDock

    viewer, seg = make_dock(make_napari_viewer, tiny_model, ensemble=1, steps=1)
    open_scan(viewer, scan_file(tmp_path, depth=6))
    ft = FinetuneDock(viewer)
    viewer.window.add_dock_widget(ft, name="Fine-tune", area="right")
    assert seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=WAIT_MS)
    mask = seg.mask_layer()
    for z in (0, 2, 4):  # a structure the model has no class for
        mask.data[z] = 0
        mask.data[z, 8:24, 10:22] = 1
        mask.data[z, 12:18, 12:18] = 2
    ft.update_counts()
    ft.steps.setValue(3)
    ft.device.setCurrentText("cpu")
    return viewer, seg, ft, mask


@pytest.mark.gui
def test_finetune_dock_asks_once_before_adding_a_class(
    make_napari_viewer, qtbot, tmp_path, tiny_model, notes
):
    _viewer, seg, ft, mask = _segmented_with_new_label(
        make_napari_viewer, qtbot, tmp_path, tiny_model
    )
    asked = []

    def decline(model_name, known, plan):
        asked.append(plan.added)
        return None

    ft.ask_class_names = decline
    assert not ft.start()  # declined: nothing runs
    assert asked == [(2,)] and ft.result is None
    assert any("not confirmed" in n for n in notes)

    def accept(model_name, known, plan):
        asked.append(plan.added)
        assert known == ["background", "class 1"] and model_name
        return {2: "lesion"}

    ft.ask_class_names = accept
    assert ft.start()
    qtbot.waitUntil(lambda: not ft.running, timeout=WAIT_MS)
    assert ft.result is not None, ft.progress.format()
    info = read_model_info(ft.result.path)
    assert info.config.num_classes == 3 and info.meta["classes"]["2"] == "lesion"
    assert ft.result.provenance["added_classes"] == [2]
    assert seg.model_picker.current_path() == ft.result.path
    assert ft.start()  # the same classes again: not asked a second time
    qtbot.waitUntil(lambda: not ft.running, timeout=WAIT_MS)
    assert asked == [(2,), (2,)]
    assert ft.resegment()
    qtbot.waitUntil(lambda: not seg.running, timeout=WAIT_MS)
    assert list(mask.features["class"]) == ["background", "class 1", "lesion"]


@pytest.mark.gui
def test_finetune_dock_new_model_from_these_labels(make_napari_viewer, qtbot, tmp_path, tiny_model):
    _viewer, _seg, ft, _mask = _segmented_with_new_label(
        make_napari_viewer, qtbot, tmp_path, tiny_model
    )
    ft.new_model.setChecked(True)
    ft.ask_class_names = lambda model_name, known, plan: {1: "body", 2: "core"}
    assert ft.start()
    qtbot.waitUntil(lambda: not ft.running, timeout=WAIT_MS)
    assert ft.result is not None, ft.progress.format()
    assert ft.result.provenance["class_change"] == "new"
    info = read_model_info(ft.result.path)
    assert info.config.mask_channels == 3
    assert [info.meta["classes"][k] for k in ("0", "1", "2")] == ["background", "body", "core"]


@pytest.mark.gui
def test_segment_dock_suggests_spread_slices_and_jumps_there(
    make_napari_viewer, qtbot, tmp_path, tiny_model
):
    viewer, seg = make_dock(make_napari_viewer, tiny_model, ensemble=1, steps=1)
    image = open_scan(viewer, scan_file(tmp_path, depth=12))
    seg.suggest.count.setValue(3)
    seg.device.setCurrentText("cpu")
    assert seg.suggest.start()
    qtbot.waitUntil(lambda: not seg.suggest.running, timeout=WAIT_MS)
    picks = seg.suggest.suggestion.slices
    assert len(picks) == 3 == len(set(picks)) == seg.suggest.list.count()
    assert all(0 <= z < 12 for z in picks)
    assert L.current_index(viewer, image) == picks[0]
    seg.suggest.step()
    assert L.current_index(viewer, image) == picks[1]


@pytest.mark.gui
def test_suggest_without_an_image_is_a_notification(make_napari_viewer, tiny_model, notes):
    _viewer, seg = make_dock(make_napari_viewer, tiny_model, ensemble=1, steps=1)
    assert not seg.suggest.start()
    assert any("no image layer" in n for n in notes)
    assert not seg.suggest.running
