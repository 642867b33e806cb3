"""Autosave and resume: edits reach the scan's work folder within seconds, a killed napari
loses at most the last seconds, a new viewer restores exactly, failures never touch the
layers, and snapshots can be gone back to."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from _nifti_factory import AFFINES, make_nifti

from napari_medsegdiff import workfolder as wf
from napari_medsegdiff.gui import layers as L

WAIT_MS = 90_000


def scan_file(folder: Path, name="t1.nii.gz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, (32, 32, 4)).astype(np.float32)
    data[8:24, 10:22, :] += 80
    return make_nifti(folder / name, data, AFFINES["LPS"])


def open_dock(make_napari_viewer, model, scan):
    from napari_medsegdiff.gui.segment_dock import SegmentDock

    viewer = make_napari_viewer()
    [image] = viewer.open(str(scan), plugin="napari-medsegdiff")
    dock = SegmentDock(viewer)
    viewer.window.add_dock_widget(dock, name="Segment", area="right")
    dock.select_model(model)
    dock.ensemble.setValue(2)
    dock.steps.setValue(2)
    dock.scope.setCurrentText("whole volume")
    dock.autosave._timer.setInterval(300)
    return viewer, dock, image


def segment(qtbot, dock):
    assert dock.run()
    qtbot.waitUntil(lambda: not dock.running, timeout=WAIT_MS)
    mask = dock.mask_layer()
    track = dock.autosave.track_of(mask)
    qtbot.waitUntil(lambda: wf.is_work_folder(track.folder) and dock.autosave._busy is None)
    return mask, track.folder


def brush(mask, z: int, label: int, y: int = 16, x: int = 16) -> None:
    mask.brush_size = 5
    mask.paint((z, y, x), label)


def saved_labels(folder: Path) -> np.ndarray:
    return wf.load(folder).labels


def test_an_edit_is_saved_within_seconds_and_a_new_viewer_restores_it_exactly(
    make_napari_viewer, qtbot, tiny_model, tmp_path, notes
):
    scan = scan_file(tmp_path / "scans")
    viewer, dock, _ = open_dock(make_napari_viewer, tiny_model, scan)
    mask, folder = segment(qtbot, dock)
    assert folder.parent == wf.default_root()
    brush(mask, 2, 3)
    dock.mark_reviewed(1)
    edited = np.array(L.labels_of(mask))
    qtbot.waitUntil(lambda: saved_labels(folder).tobytes() == edited.tobytes(), timeout=5000)
    proposal = np.array(mask.metadata[L.PROPOSAL])
    summary = wf.read_summary(folder)
    assert summary["corrected"] == [2] and summary["model"] == str(tiny_model)
    viewer.close()

    _, dock2, _ = open_dock(make_napari_viewer, tiny_model, scan)
    assert dock2.work.restore_button.isEnabled()
    assert "Saved work found" in dock2.work.status.text()
    assert any("saved work found" in n for n in notes)
    assert dock2.mask_layer() is None  # nothing is restored without being asked
    assert dock2.restore_work(folder / wf.CURRENT)
    mask2 = dock2.mask_layer()
    back = L.labels_of(mask2)
    assert back.dtype == edited.dtype and back.tobytes() == edited.tobytes()
    assert np.asarray(mask2.metadata[L.PROPOSAL]).tobytes() == proposal.tobytes()
    assert L.corrected(mask2) == [2] and L.reviewed(mask2) == [1]
    assert mask2.metadata[L.SEGMENTED] == [0, 1, 2, 3]
    assert Path(str(dock2.model_picker.current_path())) == Path(tiny_model)
    variance = dock2.variance_layer()
    assert variance.data.any()
    # painting after the restore keeps saving into the same folder, and so does an undo
    brush(mask2, 0, 1)
    after = np.array(L.labels_of(mask2))
    qtbot.waitUntil(lambda: saved_labels(folder).tobytes() == after.tobytes(), timeout=5000)
    mask2.undo()
    qtbot.waitUntil(lambda: saved_labels(folder).tobytes() == edited.tobytes(), timeout=5000)


def test_the_same_file_name_in_another_folder_gets_its_own_work(
    make_napari_viewer, qtbot, tiny_model, tmp_path
):
    first = scan_file(tmp_path / "a")
    _, dock, _ = open_dock(make_napari_viewer, tiny_model, first)
    _, folder_a = segment(qtbot, dock)
    second = scan_file(tmp_path / "b")  # same name, same voxels, other folder
    _, dock_b, _ = open_dock(make_napari_viewer, tiny_model, second)
    assert not dock_b.work.restore_button.isEnabled()
    _, folder_b = segment(qtbot, dock_b)
    assert folder_a != folder_b and folder_a.name.startswith("t1-")


@pytest.mark.parametrize("failure", ["disk full", "read-only"])
def test_a_failing_save_notifies_once_and_leaves_the_layers_alone(
    make_napari_viewer, qtbot, tiny_model, tmp_path, notes, monkeypatch, failure
):
    from napari_medsegdiff.gui import autosave

    _, dock, _ = open_dock(make_napari_viewer, tiny_model, scan_file(tmp_path / "s"))
    mask, folder = segment(qtbot, dock)
    real_save = wf.save
    if failure == "disk full":

        def broken(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(autosave.wf, "save", broken)
    else:  # the folder's parent is a file: nothing can be created there, even as root
        blocker = tmp_path / "blocker"
        blocker.write_text("x")
        dock.autosave.track_of(mask).folder = blocker / "work"
    for z in (0, 1):
        brush(mask, z, 3)
        expected = np.array(L.labels_of(mask))
        qtbot.waitUntil(lambda z=z: len(dock.autosave.errors) > z, timeout=5000)
        assert L.labels_of(mask).tobytes() == expected.tobytes()
    failures = [n for n in notes if "autosave failed" in n]
    assert len(failures) == 1, notes  # one notification per failure streak
    assert "untouched" in failures[0]
    monkeypatch.setattr(autosave.wf, "save", real_save)
    dock.autosave.track_of(mask).folder = folder
    brush(mask, 2, 1)
    final = np.array(L.labels_of(mask))
    qtbot.waitUntil(lambda: saved_labels(folder).tobytes() == final.tobytes(), timeout=5000)
    qtbot.waitUntil(lambda: any("works again" in n for n in notes), timeout=5000)


def test_export_and_fine_tune_keep_snapshots_and_going_back_restores_one(
    make_napari_viewer, qtbot, tiny_model, tmp_path
):
    _, dock, _ = open_dock(make_napari_viewer, tiny_model, scan_file(tmp_path / "s"))
    mask, folder = segment(qtbot, dock)
    brush(mask, 1, 2)
    exported = np.array(L.labels_of(mask))
    assert dock.export(tmp_path / "out.nii.gz") is not None
    qtbot.waitUntil(lambda: len(wf.history(folder)) == 1, timeout=5000)
    dock.work_saved(mask, "fine-tune v0002")
    qtbot.waitUntil(lambda: len(wf.history(folder)) == 2, timeout=5000)
    brush(mask, 3, 1)
    qtbot.waitUntil(lambda: dock.autosave._busy is None and not dock.autosave._timer.isActive())
    assert dock.work.history.count() == 2
    assert "export-out-nii-gz" in dock.work.history.itemData(1)
    dock.work.history.setCurrentIndex(1)
    dock.work.back_button.click()
    assert L.labels_of(mask).tobytes() == exported.tobytes()
    qtbot.waitUntil(lambda: saved_labels(folder).tobytes() == exported.tobytes(), timeout=5000)
    reasons = [p.name.split("-", 1)[1] for p in wf.history(folder)]
    assert reasons[0] == "before-going-back"  # the state left behind is kept too


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication
    from napari_medsegdiff.gui import layers as L
    from napari_medsegdiff.gui.segment_dock import SegmentDock

    model, out = sys.argv[1], Path(sys.argv[2])
    viewer = napari.Viewer(show=False)
    data = np.random.default_rng(0).random((6, 64, 64)).astype(np.float32)
    image = viewer.add_image(data, name="scan")
    dock = SegmentDock(viewer)
    mask, variance = L.ensure_result_layers(viewer, image, model)
    proposal = (data > 0.5).astype(np.uint8)
    mask.data = proposal.copy()
    mask.metadata[L.PROPOSAL] = proposal
    dock._track_work(image, mask, variance)
    dock.autosave.save_now(mask, "segmentation")
    print("folder", dock.autosave.track_of(mask).folder, flush=True)
    mask.brush_size = 5
    count = [0]

    def edit():
        k = count[0]
        mask.paint((k % 6, 5 + (7 * k) % 54, 5 + (11 * k) % 54), 1 + k % 3)
        np.save(out / f"{k}.npy", L.labels_of(mask))
        print("edit", k, time.time(), flush=True)
        count[0] += 1

    timer = QTimer()
    timer.timeout.connect(edit)
    timer.start(300)
    QApplication.instance().exec()
    """
)


def test_a_killed_napari_loses_at_most_the_last_seconds(tiny_model, tmp_path):
    """SIGKILL napari while the user paints: a new process restores labels and proposal
    byte for byte as they were at most 5 s before the kill."""
    out = tmp_path / "expected"
    out.mkdir()
    env = {**os.environ, "MEDSEGDIFF_WORK": str(tmp_path / "work")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tiny_model), str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("folder"), line
        folder = Path(line.split(" ", 1)[1].strip())
        times = {}
        while len(times) < 20:  # ~6 s of painting
            _, k, when = proc.stdout.readline().split()
            times[int(k)] = float(when)
    finally:
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = wf.load(folder)  # what a new process finds
    matches = [k for k in times if np.load(out / f"{k}.npy").tobytes() == state.labels.tobytes()]
    assert matches, "the saved labels match no state the user saw"
    assert killed_at - times[max(matches)] <= 5.0
    data = np.random.default_rng(0).random((6, 64, 64)).astype(np.float32)
    assert state.proposal.tobytes() == (data > 0.5).astype(np.uint8).tobytes()


def test_a_new_session_that_does_not_restore_keeps_the_old_work_as_a_snapshot(
    make_napari_viewer, qtbot, tiny_model, tmp_path
):
    scan = scan_file(tmp_path / "s")
    viewer, dock, _ = open_dock(make_napari_viewer, tiny_model, scan)
    mask, folder = segment(qtbot, dock)
    brush(mask, 1, 3)
    first = np.array(L.labels_of(mask))
    qtbot.waitUntil(lambda: saved_labels(folder).tobytes() == first.tobytes(), timeout=5000)
    viewer.close()
    _, dock2, _ = open_dock(make_napari_viewer, tiny_model, scan)
    _, folder2 = segment(qtbot, dock2)  # segments afresh instead of restoring
    assert folder2 == folder
    [kept] = [p for p in wf.history(folder) if p.name.endswith("earlier-session")]
    assert wf.load(kept).labels.tobytes() == first.tobytes()


def test_a_damaged_save_is_reported_not_offered(make_napari_viewer, qtbot, tiny_model, tmp_path):
    from napari_medsegdiff.gui.autosave import work_folder_of

    _, dock, image = open_dock(make_napari_viewer, tiny_model, scan_file(tmp_path / "s"))
    folder = work_folder_of(image)
    (folder / wf.CURRENT).mkdir(parents=True)
    (folder / wf.CURRENT / wf.STATE).write_text("{ not json")
    dock._show_work()
    assert "cannot be read" in dock.work.status.text()
    assert not dock.work.restore_button.isEnabled()
    segment(qtbot, dock)  # segmenting still works and starts saving again
    qtbot.waitUntil(lambda: wf.read_summary(folder)["segmented"] == [0, 1, 2, 3], timeout=5000)
