"""The docks as a radiology researcher meets them (issue 15, items 1-9 and 13)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("napari")

import test_gui_segment as helpers

from napari_medsegdiff.gui import layers as L

make_dock, open_scan, scan_file = helpers.make_dock, helpers.open_scan, helpers.scan_file
pytestmark = pytest.mark.gui
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def named_model(tmp_path_factory):
    """A tiny 3-class model whose config.json names its classes."""
    from napari_medsegdiff.checkpoints import save_model
    from napari_medsegdiff.config import preset
    from napari_medsegdiff.model import build_model

    cfg = preset("tiny", mask_channels=3)
    meta = {"class_names": ["background", "tumour core", "oedema"]}
    folder = tmp_path_factory.mktemp("named") / "named"
    return save_model(folder, build_model(cfg).state_dict(), cfg, meta=meta)


def run_and_wait(qtbot, dock, **kwargs):
    assert dock.run(**kwargs)
    qtbot.waitUntil(lambda: not dock.running, timeout=WAIT_MS)


def both_docks(make_napari_viewer, model, depth=6):
    from napari_medsegdiff.gui.finetune_dock import FinetuneDock

    viewer, seg = make_dock(make_napari_viewer, model, ensemble=2, steps=2)
    ft = FinetuneDock(viewer)
    ft.segment_dock = seg
    viewer.window.add_dock_widget(ft, name="Fine-tune", area="right")
    return viewer, seg, ft


# 1 ------------------------------------------------------------------------------------
def test_renamed_mask_keeps_its_link(make_napari_viewer, qtbot, tmp_path, tiny_model, notes):
    viewer, seg, ft = both_docks(make_napari_viewer, tiny_model)
    open_scan(viewer, scan_file(tmp_path))
    run_and_wait(qtbot, seg, slices=[0, 1, 2])
    mask, variance = seg.mask_layer(), seg.variance_layer()
    mask.data[1] = 1  # a correction
    mask.name, variance.name = "my brain mask", "my uncertainty"
    viewer.layers["scan"].name = "patient 7 T1"
    assert seg.mask_layer() is mask and seg.variance_layer() is variance
    assert seg.export(tmp_path / "out.nii.gz") is not None
    assert not any("nothing to export" in n for n in notes)
    count = len(viewer.layers)
    run_and_wait(qtbot, seg, slices=[3, 4])
    assert len(viewer.layers) == count  # no second mask layer
    assert seg.mask_layer() is mask and mask.metadata[L.SEGMENTED] == [0, 1, 2, 3, 4]
    assert ft.labels_combo.layer() is mask  # the corrections stay selected
    assert ft.image_combo.layer().name == "patient 7 T1"


# 2 ------------------------------------------------------------------------------------
def test_finetune_never_defaults_to_the_reference(make_napari_viewer, qtbot, tiny_model, notes):
    from napari_medsegdiff._sample_data import SAMPLE_LABELS_NAME
    from napari_medsegdiff.gui.launch import build_demo_viewer

    viewer = make_napari_viewer()
    seg, ft = build_demo_viewer(viewer, tiny_model)
    assert ft.labels_combo.layer() is None
    assert "Choose the corrected labels" in ft.count_label.text()
    assert not ft.start()
    assert not ft.running
    seg.ensemble.setValue(1)
    seg.steps.setValue(1)
    run_and_wait(qtbot, seg)  # the default scope: the current slice
    assert ft.labels_combo.layer() is seg.mask_layer()
    ft.labels_combo.setCurrentText(SAMPLE_LABELS_NAME)  # the user may choose it explicitly
    ft.update_counts()
    assert "hand-drawn labels" in ft.count_label.text()


# 3 ------------------------------------------------------------------------------------
def test_finetune_says_what_trains_and_what_is_held_out(
    make_napari_viewer, qtbot, tmp_path, tiny_model, notes
):
    viewer, seg, ft = both_docks(make_napari_viewer, tiny_model)
    open_scan(viewer, scan_file(tmp_path))
    run_and_wait(qtbot, seg)
    mask = seg.mask_layer()
    ft.holdout.setCurrentText("hold out 1 in 5 to measure Dice")
    for z in (0, 1, 2):
        mask.data[z] = 0
        mask.data[z, 8:24, 10:22] = 1
    ft.update_counts()
    text = ft.count_label.text()
    assert "3 corrected (0-2)" in text and "fewer than 4" in text and "no held-out Dice" in text
    assert "Model's proposal vs your corrections: Dice" in text
    for z in (3, 4):
        mask.data[z] = 0
        mask.data[z, 8:24, 10:22] = 1
    ft.update_counts()
    plan = ft.plan()
    assert len(plan.held_out) == 1 and len(plan.train) == 4
    assert f"holds out {plan.held_out[0]} (not trained on)" in ft.count_label.text()
    ft.holdout.setCurrentText("train on all slices")
    assert ft.plan().held_out == [] and "as chosen" in ft.count_label.text()
    ft.steps.setValue(2)
    ft.device.setCurrentText("cpu")
    assert ft.start()
    qtbot.waitUntil(lambda: not ft.running, timeout=WAIT_MS)
    assert ft.result is not None
    assert ft.result.provenance["held_out_slices"] == []
    assert ft.result.provenance["train_slices"] == [0, 1, 2, 3, 4]
    assert any("none held out" in n and "proposal vs corrections Dice" in n for n in notes)


# 4 ------------------------------------------------------------------------------------
def test_reference_hidden_mask_distinct_and_classes_named(
    make_napari_viewer, qtbot, tmp_path, named_model
):
    from napari_medsegdiff._sample_data import SAMPLE_LABELS_NAME, make_sample_data
    from napari_medsegdiff.gui.launch import build_demo_viewer

    (_, kwargs, _) = next(t for t in make_sample_data() if t[2] == "labels")
    assert kwargs["visible"] is False  # File > Open Sample opens the reference hidden too
    viewer = make_napari_viewer()
    seg, _ = build_demo_viewer(viewer, named_model)
    seg.ensemble.setValue(1)
    seg.steps.setValue(1)
    reference = viewer.layers[SAMPLE_LABELS_NAME]
    run_and_wait(qtbot, seg)  # the current slice
    mask = seg.mask_layer()
    z = L.current_index(viewer, mask)
    assert mask.metadata[L.SEGMENTED] == [z]
    assert not reference.visible and reference.contour > 0
    assert mask.contour == 0 and mask.opacity != reference.opacity
    assert not np.allclose(mask.colormap.map(1), reference.colormap.map(1))
    y, x = (s // 2 for s in mask.data.shape[1:])
    mask.data[z, y, x] = 1
    world = mask.data_to_world([z, y, x])
    assert "class: tumour core" in mask._get_properties(world, world=True)
    assert "tumour core" in seg.legend.text() and "oedema" in seg.legend.text()
    value = int(reference.data[z, y, x])
    names = {0: "background", 1: "grey matter", 2: "white matter"}
    reference.visible = True  # hidden layers are not sliced: show it to hover it
    assert f"class: {names[value]}" in reference._get_properties(world, world=True)


def test_class_names_from_config():
    from napari_medsegdiff.checkpoints import class_names, default_model_path, read_model_info

    assert class_names({"class_names": ["bg", "liver"]}, 3) == ["bg", "liver", "class 2"]
    assert class_names({}, 2) == ["background", "class 1"]
    default = read_model_info(default_model_path())
    assert class_names(default.meta, 3) == ["background", "grey matter", "white matter"]


# 5 ------------------------------------------------------------------------------------
def test_docks_fit_a_laptop_screen(make_napari_viewer, qtbot, tmp_path, tiny_model):
    from napari_medsegdiff.gui.finetune_dock import FinetuneDock
    from napari_medsegdiff.gui.segment_dock import SegmentDock

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1366, 768)
    seg, ft = SegmentDock(viewer), FinetuneDock(viewer)
    viewer.window.add_dock_widget(seg, name="Segment", area="right")
    viewer.window.add_dock_widget(ft, name="Fine-tune", area="right")  # stacked, not tabbed
    open_scan(viewer, scan_file(tmp_path))
    qtbot.wait(300)
    for dock in (seg, ft):
        assert dock.minimumSizeHint().height() <= 330, type(dock).__name__
    frame = window.geometry()
    assert frame.height() <= 768
    for button in (seg.run_button, seg.cancel_button, ft.start_button, ft.resegment_button):
        assert button.isVisible()
        bottom = button.mapTo(window, button.rect().bottomLeft()).y()
        assert 0 < bottom <= window.height(), button.text()
    viewer.screenshot(str(tmp_path / "docks.png"), canvas_only=False)


# 6 ------------------------------------------------------------------------------------
def test_every_control_says_what_it_does(make_napari_viewer, tiny_model):
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QLineEdit, QListWidget, QSpinBox

    _viewer, seg, ft = both_docks(make_napari_viewer, tiny_model)
    kinds = (QComboBox, QSpinBox, QLineEdit, QAbstractButton, QListWidget)
    for dock in (seg, ft):
        for kind in kinds:
            for widget in dock.findChildren(kind):
                if widget.parent() is not None and isinstance(widget.parent(), QSpinBox):
                    continue
                if type(widget).__name__ == "QToolButton":  # tab-bar scroll arrows
                    continue
                tip = widget.toolTip() or (widget.parent() and widget.parent().toolTip())
                assert tip, f"{type(dock).__name__}: {type(widget).__name__} {widget.objectName()}"
    assert "STAPLE" in seg.fusion.toolTip() and "vote" in seg.fusion.toolTip()
    assert "exclusive" in seg.range_stop.toolTip()
    assert "ensemble x steps" in seg.steps.toolTip()
    seg.ensemble.setValue(4)
    seg.steps.setValue(10)
    assert seg.cost_label.text().startswith("4 x 10 = 40 network passes per slice")


# 7 ------------------------------------------------------------------------------------
def test_progress_reads_as_one_run(make_napari_viewer, qtbot, tmp_path, tiny_model):
    from napari_medsegdiff.gui.workers import RunProgress
    from napari_medsegdiff.progress import Progress

    viewer, seg = make_dock(make_napari_viewer, tiny_model)
    assert seg.progress.text()  # the idle bar is not blank
    run = RunProgress(1, 20)  # one slice: the bar moves with the steps
    fractions = [run.update(Progress(0, 1, step=k, steps=20))[0] for k in (1, 10, 20)]
    assert 0 < fractions[0] < fractions[1] <= fractions[2] <= 1
    run = RunProgress(4, 10)  # chunks of 2 slices: steps restart, the bar never goes back
    seen, texts = [], []
    for done in (0, 2):
        for k in range(1, 11):
            fraction, text = run.update(Progress(done, 4, step=k, steps=10))
            seen.append(fraction)
            texts.append(text)
        run.update(Progress(done + 2, 4))
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    assert "step 10/40 of the run" in texts[4] or "of the run" in texts[4]
    open_scan(viewer, scan_file(tmp_path, depth=2))
    run_and_wait(qtbot, seg)
    assert seg.progress.value() == 1000 and seg.progress.text().startswith("done: 2/2")


# 8 ------------------------------------------------------------------------------------
def test_uncertainty_reads_at_a_glance(make_napari_viewer, qtbot, tmp_path, tiny_model):
    from napari_medsegdiff.review import display_limits

    viewer, seg = make_dock(make_napari_viewer, tiny_model, ensemble=3)
    open_scan(viewer, scan_file(tmp_path, depth=4))
    run_and_wait(qtbot, seg)
    mask, variance = seg.mask_layer(), seg.variance_layer()
    assert variance.blending == "translucent"
    assert variance.colormap.map([0.0])[0][3] == 0 and variance.colormap.map([1.0])[0][3] == 1
    mask.data[:] = 0
    mask.data[:, 8:24, 8:24] = 1
    variance.data[:] = np.linspace(0, 0.2, variance.data.size).reshape(variance.data.shape)
    variance.data[0, 0, 0] = 50.0  # one outlier far from the boundary
    seg.refresh_review()
    lo, hi = variance.contrast_limits
    assert hi < 1.0 and (lo, hi) == pytest.approx(display_limits(variance.data, mask.data))
    seg.top_only.setChecked(True)
    assert variance.contrast_limits[0] > lo
    seg.top_only.setChecked(False)
    items = [seg.review.list.item(i).text() for i in range(seg.review.list.count())]
    assert items and all("% of the boundary uncertain" in t for t in items)
    seg.three_d.setChecked(True)
    assert viewer.dims.ndisplay == 3 and variance.rendering == "mip"
    assert [lay.name for lay in viewer.layers if lay.visible] == [variance.name]
    assert seg.top_only.isChecked()  # a projection of everything would saturate
    seg.three_d.setChecked(False)
    assert viewer.dims.ndisplay == 2 and mask.visible and viewer.layers["scan"].visible
    assert not seg.top_only.isChecked()


# 9 ------------------------------------------------------------------------------------
def test_small_things(make_napari_viewer, qtbot, tmp_path, tiny_model, notes):
    from napari_medsegdiff.checkpoints import ModelStore, save_model
    from napari_medsegdiff.config import preset
    from napari_medsegdiff.gui.segment_dock import SegmentDock
    from napari_medsegdiff.gui.widgets import model_label, short_path
    from napari_medsegdiff.model import build_model

    viewer, seg = make_dock(make_napari_viewer, tiny_model)
    assert SegmentDock(viewer).scope.currentText() == "current slice"  # a quick first run
    open_scan(viewer, scan_file(tmp_path, depth=4))
    run_and_wait(qtbot, seg)
    seg.mask_layer().data[2] = 1
    run_and_wait(qtbot, seg)
    assert any("skipping 1 slice(s)" in n and ": 2 (" in n for n in notes), notes
    assert "skipped corrected/reviewed 2" in seg.progress.text()
    cfg = preset("tiny")
    store = ModelStore()
    version = save_model(
        store.new_version_path("default"),
        build_model(cfg).state_dict(),
        cfg,
        meta={"base": "default"},
        provenance={"slices": [1, 2, 3, 4], "image_files": ["/data/sub-01_T1w.nii.gz"]},
    )
    entry = next(e for e in store.versions() if e.path == version)
    label = model_label(entry)
    assert label.startswith("default + 4 slices of sub-01_T1w · ") and len(label) <= 48
    seg.model_picker.refresh()
    texts = [seg.model_picker.combo.itemText(i) for i in range(seg.model_picker.combo.count())]
    assert label in texts
    deep = tmp_path / ("very-long-folder-name-" * 4) / "sub" / "mask.nii.gz"
    assert len(short_path(deep)) <= 60 and short_path(deep).endswith("mask.nii.gz")
    from napari_medsegdiff.gui.widgets import notify_error

    notify_error(f"{deep}: cannot read as NIfTI")
    assert any(n == f"{short_path(deep)}: cannot read as NIfTI" for n in notes), notes


# 13 -----------------------------------------------------------------------------------
def test_browse_accepts_a_training_run(make_napari_viewer, tmp_path, tiny_model, notes):
    _viewer, seg = make_dock(make_napari_viewer, tiny_model)
    run = tmp_path / "runs" / "m"
    shutil.copytree(tiny_model, run / "best")
    shutil.copytree(tiny_model, run / "last")
    assert seg.model_picker.open_folder(run)
    assert seg.model_picker.current_path() == run / "best"
    assert any("training run: using its best/ model" in n for n in notes)


# 12 (the docks too) ---------------------------------------------------------------------
def test_model_recommended_sampler_is_taken(make_napari_viewer, tmp_path):
    from napari_medsegdiff.checkpoints import save_model
    from napari_medsegdiff.cli import build_parser
    from napari_medsegdiff.commands import _sampler_from_args
    from napari_medsegdiff.config import preset
    from napari_medsegdiff.gui.segment_dock import SegmentDock
    from napari_medsegdiff.model import build_model

    cfg = preset("tiny")
    meta = {"sampler": {"ensemble": 3, "steps": 12, "seed": 4}}
    model = save_model(tmp_path / "rec", build_model(cfg).state_dict(), cfg, meta=meta)
    viewer = make_napari_viewer()
    dock = SegmentDock(viewer)
    dock.select_model(model)
    assert (dock.ensemble.value(), dock.steps.value(), dock.seed.value()) == (3, 12, 4)
    args = build_parser().parse_args(
        ["segment", "a.nii.gz", "-o", "m.nii.gz", "--model", str(model)]
    )
    sampler = _sampler_from_args(args)
    assert (sampler.ensemble, sampler.steps, sampler.seed) == (3, 12, 4)
    args = build_parser().parse_args(
        ["segment", "a.nii.gz", "-o", "m.nii.gz", "--model", str(model), "--steps", "7"]
    )
    assert _sampler_from_args(args).steps == 7


def test_review_volume_is_one_pass_of_the_single_functions():
    from napari_medsegdiff.review import (
        boundary_uncertain_fraction,
        display_limits,
        limits_from_values,
        rank_slices_by_uncertainty,
        review_volume,
    )

    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, (5, 24, 20)).astype(np.uint8)
    mask[:, :8] = 0
    variance = (rng.random((5, 24, 20)) * 0.3).astype(np.float32)
    ranking, shares, values = review_volume(variance, mask, [4, 0, 2])
    assert ranking == rank_slices_by_uncertainty(variance, mask, [0, 2, 4])
    assert shares == {z: boundary_uncertain_fraction(variance[z], mask[z]) for z in (0, 2, 4)}
    assert 0 < shares[0] < 1
    assert limits_from_values(values) == display_limits(variance, mask, [0, 2, 4])
