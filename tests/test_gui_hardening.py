"""GUI hardening: errors become notifications, the dock stays usable, corrections survive.

"Keep my corrections" must hold across re-runs, cancel, failed runs and a model switch;
exports are byte-identical and a failed export leaves no partial file.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("napari")

from napari_medsegdiff.gui import layers as L

pytestmark = pytest.mark.gui
WAIT_MS = 90_000


# ------------------------------------------------------------------------ fixtures
def _tiny(folder: Path, seed: int) -> Path:
    import torch

    from napari_medsegdiff.checkpoints import save_model
    from napari_medsegdiff.config import preset
    from napari_medsegdiff.model import build_model

    torch.manual_seed(seed)
    cfg = preset("tiny")
    return save_model(folder, build_model(cfg).state_dict(), cfg)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Two untrained tiny models (different weights) and two broken folders."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("models")
    out = {"a": _tiny(root / "tiny", 0), "b": _tiny(root / "tiny-b", 1)}
    bad = _tiny(root / "bad-shapes", 2)  # config fine, weights wrong: fails in the worker
    state = load_file(str(bad / "model.safetensors"))
    key = sorted(k for k in state if state[k].ndim == 4)[0]
    state[key] = state[key][..., :-1].contiguous()
    save_file(state, str(bad / "model.safetensors"))
    out["bad_shapes"] = bad
    corrupt = _tiny(root / "corrupt-config", 3)  # fails before the run starts
    (corrupt / "config.json").write_text("{ not json")
    out["corrupt_config"] = corrupt
    return out


def scan_file(folder: Path, depth=6, size=32, name="scan.nii.gz") -> Path:
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, (size, size, depth)).astype(np.float32)
    data[8:24, 10:22, :] += 80
    path = folder / name
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), path)
    return path


def open_scan(viewer, path):
    from napari_medsegdiff._reader import napari_get_reader

    data, kwargs, _ = napari_get_reader(str(path))(str(path))[0]
    return viewer.add_image(data, **kwargs)


def make_dock(make_napari_viewer, model, chunk=8, steps=2):
    from napari_medsegdiff.gui.segment_dock import SegmentDock

    viewer = make_napari_viewer()
    dock = SegmentDock(viewer)
    viewer.window.add_dock_widget(dock, name="Segment", area="right")
    dock.select_model(model)
    dock.ensemble.setValue(2)
    dock.steps.setValue(steps)
    dock.chunk_size = chunk
    dock.scope.setCurrentText("whole volume")
    return viewer, dock


def run_and_wait(qtbot, dock, **kwargs):
    assert dock.run(**kwargs)
    qtbot.waitUntil(lambda: not dock.running, timeout=WAIT_MS)


def usable(dock) -> bool:
    return dock.run_button.isEnabled() and not dock.cancel_button.isEnabled() and not dock.running


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name]


# --------------------------------------------------------------------------- tests
def test_corrections_survive_rerun_cancel_errors_and_model_switch(
    make_napari_viewer, qtbot, tmp_path, models, notes
):
    viewer, dock = make_dock(make_napari_viewer, models["a"])
    open_scan(viewer, scan_file(tmp_path, depth=6))
    run_and_wait(qtbot, dock)
    mask = dock.mask_layer()
    mask.data[1] = 2  # a correction (a label the binary model never outputs)
    mask.data[4, :5, :5] = 3  # a small touch-up
    mask.refresh()
    dock.mark_reviewed(3)
    kept = {z: mask.data[z].copy() for z in (1, 3, 4)}

    def corrections_intact(where: str) -> None:
        for z, before in kept.items():
            np.testing.assert_array_equal(mask.data[z], before, err_msg=f"slice {z} {where}")
        assert dock.update_counts() == (2, 1), where

    # 1. re-run: corrected and reviewed slices are not even scheduled
    dock.seed.setValue(5)
    run_and_wait(qtbot, dock)
    assert sorted(dock._job.slices) == [0, 2, 5]
    corrections_intact("after a re-run")

    # 2. cancel mid-run
    dock.steps.setValue(3)
    dock.chunk_size = 1
    assert dock.run()
    qtbot.waitUntil(lambda: len(dock._pending) + len(dock.written) > 0, timeout=WAIT_MS)
    dock.cancel()
    qtbot.waitUntil(lambda: not dock.running, timeout=WAIT_MS)
    assert usable(dock) and any("cancelled" in n for n in notes)
    corrections_intact("after cancel")

    # 3. a run that fails in the worker (weights do not fit config.json)
    before = mask.data.copy()
    dock.select_model(models["bad_shapes"])
    run_and_wait(qtbot, dock)
    assert any("has shape" in n and "bad-shapes" in n for n in notes), notes
    assert usable(dock) and dock.progress.format() == "failed"
    np.testing.assert_array_equal(mask.data, before)  # nothing written, nothing lost

    # 4. a model that fails before the run starts (corrupt config.json)
    dock.select_model(models["corrupt_config"])
    assert not dock.run()
    assert any("corrupt JSON" in n for n in notes), notes
    assert usable(dock)
    np.testing.assert_array_equal(mask.data, before)

    # 5. switch to another model: still kept, and the dock works again
    dock.select_model(models["b"])
    run_and_wait(qtbot, dock)
    assert dock.progress.format().startswith("done")
    assert mask.metadata[L.MODEL] == str(models["b"])
    corrections_intact("after a model switch")
    assert dock.mask_layer() is mask


def test_edits_made_during_a_run_are_kept(make_napari_viewer, qtbot, tmp_path, models):
    viewer, dock = make_dock(make_napari_viewer, models["a"], chunk=2, steps=3)
    open_scan(viewer, scan_file(tmp_path, depth=12))
    assert dock.run()
    mask = dock.mask_layer()
    mask.data[11, 2:6, 2:6] = 7  # the user paints the last slice before the model gets there
    mask.refresh()
    qtbot.waitUntil(lambda: not dock.running, timeout=WAIT_MS)
    assert (mask.data[11, 2:6, 2:6] == 7).all()
    assert 11 in dock._writer.skipped and "edited during the run kept" in dock.progress.format()


def test_export_twice_gives_identical_bytes(make_napari_viewer, qtbot, tmp_path, models):
    viewer, dock = make_dock(make_napari_viewer, models["a"])
    open_scan(viewer, scan_file(tmp_path))
    run_and_wait(qtbot, dock)
    dock.mask_layer().data[2, 3:7, 5:9] = 3
    first = dock.export(tmp_path / "a.nii.gz", variance_path=tmp_path / "va.nii.gz")
    time.sleep(1.1)  # a gzip header time stamp would now differ
    second = dock.export(tmp_path / "b.nii.gz", variance_path=tmp_path / "vb.nii.gz")
    assert first.read_bytes() == second.read_bytes()
    assert (tmp_path / "va.nii.gz").read_bytes() == (tmp_path / "vb.nii.gz").read_bytes()


def test_failed_exports_notify_and_leave_nothing(
    make_napari_viewer, qtbot, tmp_path, models, notes, monkeypatch
):
    import nibabel.arraywriters as aw

    viewer, dock = make_dock(make_napari_viewer, models["a"])
    assert dock.export(tmp_path / "x.nii.gz") is None  # nothing to export yet
    assert any("nothing to export" in n for n in notes)
    open_scan(viewer, scan_file(tmp_path))
    run_and_wait(qtbot, dock)
    out = tmp_path / "out"
    out.mkdir()
    assert dock.export(out) is None
    assert any("is a folder" in n for n in notes)
    assert dock.export(out / "missing" / "m.nii.gz") is None
    assert any("does not exist" in n for n in notes)

    def disk_full(arr, fileobj, *args, **kwargs):
        fileobj.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(aw, "array_to_file", disk_full)
        assert dock.export(out / "m.nii.gz") is None
    assert any("No space left on device" in n and "m.nii.gz" in n for n in notes)
    assert list(out.iterdir()) == [] and no_temp_files(tmp_path)
    target = dock.export(out / "m.nii.gz")  # and then it works
    assert target is not None and nib.load(target).shape == (32, 32, 6)
    previous = target.read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(aw, "array_to_file", disk_full)
        assert dock.export(target, overwrite=True) is None
    assert target.read_bytes() == previous and no_temp_files(tmp_path)
    assert usable(dock)


def test_odd_images_in_the_dock(make_napari_viewer, qtbot, tmp_path, models, notes):
    viewer, dock = make_dock(make_napari_viewer, models["a"])
    dock.ensemble.setValue(0)  # the widgets cannot hold an invalid count
    dock.steps.setValue(0)
    assert dock.ensemble.value() == 1 and dock.steps.value() == 1
    dock.steps.setValue(2)
    # a 3x2 image: resized to the model size and back
    viewer.add_image(np.arange(6, dtype=np.float32).reshape(3, 2), name="speck")
    dock.scope.setCurrentText("whole volume")  # a volume scope on a 2-D image: runs as 2-D
    run_and_wait(qtbot, dock)
    assert dock.mask_layer().data.shape == (3, 2)
    assert dock.progress.format().startswith("done")
    # a constant volume and an all-NaN volume segment without errors
    for name, value in (("flat", 7.0), ("nan", np.nan)):
        viewer.add_image(np.full((2, 16, 16), value, np.float32), name=name)
        dock.image_combo.setCurrentText(name)
        run_and_wait(qtbot, dock)
        assert dock.progress.format().startswith("done"), (name, notes)
    # a 4-D layer (e.g. a time series dropped in) is refused with a message
    viewer.add_image(np.zeros((2, 3, 16, 16), np.float32), name="movie")
    dock.image_combo.setCurrentText("movie")
    assert not dock.run()
    assert any("movie" in n and "expected a 2-D image or a 3-D volume" in n for n in notes), notes
    assert usable(dock)


def test_existing_layer_with_the_mask_name_but_another_shape(
    make_napari_viewer, qtbot, tmp_path, models, notes
):
    viewer, dock = make_dock(make_napari_viewer, models["a"])
    open_scan(viewer, scan_file(tmp_path))
    other = viewer.add_labels(np.ones((2, 8, 8), np.uint8), name="scan mask")
    run_and_wait(qtbot, dock)  # results go to a new layer, linked to the scan by identity
    mask = dock.mask_layer()
    assert mask is not other and mask.data.shape == (6, 32, 32)
    assert other.data.all() and other.data.shape == (2, 8, 8)
    assert usable(dock)


def test_unreadable_file_through_napari_is_a_clear_error(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\0" * 600)
    with pytest.raises(Exception, match=r"broken\.nii\.gz: not a NIfTI file") as info:
        viewer.open(str(bad), plugin="napari-medsegdiff")
    assert "Traceback" not in str(info.value)
    assert len(viewer.layers) == 0


def test_model_folder_files_never_unpickled(tmp_path, models):
    """The model picker's Browse path checks config.json only; a .pt never runs."""
    import pickle

    from napari_medsegdiff.checkpoints import read_model_info

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "PWNED"), "w"))

    folder = tmp_path / "evil-model"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(json.loads((models["a"] / "config.json").read_text(encoding="utf-8")))
    )
    with open(folder / "model.pt", "wb") as fh:
        pickle.dump(Evil(), fh)
    read_model_info(folder)
    from napari_medsegdiff.errors import ModelError
    from napari_medsegdiff.gui.workers import SegmenterCache

    with pytest.raises(ModelError, match="refusing to load"):
        SegmenterCache().get(folder, "cpu")
    assert not (tmp_path / "PWNED").exists()
