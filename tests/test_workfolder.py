"""Work folders: exact round trip, atomic saves (kill or disk full mid-write), snapshots,
one folder per scan, and the CLI reading a work folder as labels."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_medsegdiff import workfolder as wf


def state(seed: int, shape=(4, 16, 16), dtype=np.uint8) -> wf.WorkState:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, shape).astype(dtype)
    proposal = labels.copy()
    proposal[1] = 0
    return wf.WorkState(
        labels=labels,
        proposal=proposal,
        variance=rng.random(shape, dtype=np.float32),
        segmented=[0, 1, 2, 3],
        reviewed=[2],
        corrected=[1],
        class_names=["background", "a", "b", "c"],
        model="/models/x",
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.uint16])
def test_a_save_loads_back_byte_for_byte(tmp_path, dtype):
    s = state(0, dtype=dtype)
    wf.save(tmp_path / "w", s)
    back = wf.load(tmp_path / "w")
    for name in wf.ARRAYS:
        a, b = getattr(s, name), getattr(back, name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    assert (back.segmented, back.reviewed, back.corrected) == ([0, 1, 2, 3], [2], [1])
    assert back.class_names == s.class_names and back.model == "/models/x"
    assert "1 corrected, 1 reviewed, 4 segmented" in wf.describe(wf.read_summary(tmp_path / "w"))


def test_unchanged_arrays_are_linked_not_rewritten(tmp_path):
    folder = tmp_path / "w"
    first = state(0)
    wf.save(folder, first)
    inode = os.stat(folder / "current" / "variance.npy").st_ino
    second = state(1)
    second.variance = second.proposal = None
    wf.save(folder, second, keep={"proposal", "variance"})
    back = wf.load(folder)
    assert os.stat(folder / "current" / "variance.npy").st_ino == inode
    assert back.labels.tobytes() == state(1).labels.tobytes()
    assert back.proposal.tobytes() == first.proposal.tobytes()
    assert back.variance.tobytes() == first.variance.tobytes()


def test_a_failed_write_leaves_the_previous_save_whole(tmp_path, monkeypatch):
    folder = tmp_path / "w"
    wf.save(folder, state(0))
    calls = []
    real_save = np.save

    def disk_full(fh, arr, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(fh, arr, **kw)

    monkeypatch.setattr(wf.np, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        wf.save(folder, state(1))
    back = wf.load(folder)
    assert back.labels.tobytes() == state(0).labels.tobytes()
    assert [p.name for p in folder.iterdir()] == ["current"]  # no half-written folder left


_WRITER = """
import sys, numpy as np
from napari_medsegdiff import workfolder as wf
folder = sys.argv[1]
for k in range(10_000):
    labels = np.full((48, 256, 256), k % 250, np.uint8)
    s = wf.WorkState(labels=labels, proposal=labels, variance=None, reviewed=[k])
    print(k, flush=True)
    wf.save(folder, s)
"""


def test_a_kill_during_a_save_leaves_the_old_or_the_new_never_a_mix(tmp_path):
    """SIGKILL a process that saves in a loop, at several moments: each time the folder
    holds one whole save (labels and state.json from the same save)."""
    folder = tmp_path / "w"
    rng = np.random.default_rng(0)
    for round_ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(folder)], stdout=subprocess.PIPE, text=True
        )
        first = int(proc.stdout.readline())
        assert first == 0
        time.sleep(0.3 + rng.random() * 1.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        back = wf.load(folder)
        k = back.reviewed[0]
        assert np.all(back.labels == k % 250), f"round {round_}: labels torn"
        assert back.proposal.tobytes() == back.labels.tobytes()


def test_two_scans_with_one_name_never_share_a_folder(tmp_path):
    data = np.zeros((4, 8, 8), np.float32)
    a = wf.folder_for(wf.default_root(), "scan", wf.scan_key(tmp_path / "a" / "t1.nii.gz", data))
    b = wf.folder_for(wf.default_root(), "scan", wf.scan_key(tmp_path / "b" / "t1.nii.gz", data))
    same = wf.folder_for(wf.default_root(), "scan", wf.scan_key(tmp_path / "a" / "t1.nii.gz", data))
    other = data.copy()
    other[2, 3, 3] = 1
    changed = wf.scan_key(tmp_path / "a" / "t1.nii.gz", other)
    assert a != b and a == same
    assert changed != wf.scan_key(tmp_path / "a" / "t1.nii.gz", data)
    assert str(wf.default_root()) == os.environ["MEDSEGDIFF_WORK"]  # tests never touch $HOME


def test_snapshots_are_listed_newest_first_and_restore_exactly(tmp_path):
    folder = tmp_path / "w"
    wf.save(folder, state(0))
    wf.snapshot(folder, "export mask.nii.gz")
    wf.save(folder, state(1))
    wf.snapshot(folder, "fine-tune v2")
    wf.save(folder, state(2))
    snaps = wf.history(folder)
    assert [p.name.split("-", 1)[1] for p in snaps] == ["fine-tune-v2", "export-mask-nii-gz"]
    assert wf.load(snaps[1]).labels.tobytes() == state(0).labels.tobytes()
    assert wf.load(folder).labels.tobytes() == state(2).labels.tobytes()


def test_the_cli_reads_a_work_folder_as_labels_and_proposal(tmp_path):
    from _nifti_factory import AFFINES, make_nifti

    from napari_medsegdiff.nifti import read_volume

    scan = read_volume(make_nifti(tmp_path / "scan.nii.gz", np.zeros((8, 8, 4)), AFFINES["LPS"]))
    s = state(0, shape=scan.shape)
    s.geometry = scan.geometry.to_metadata()
    wf.save(tmp_path / "w", s)
    labels = wf.read_labels_input(tmp_path / "w")
    proposal = wf.read_labels_input(tmp_path / "w", "proposal")
    assert labels.geometry.same_space(scan.geometry)
    assert np.array_equal(labels.data, s.labels) and np.array_equal(proposal.data, s.proposal)
    with pytest.raises(Exception, match="nothing: file not found"):
        wf.read_labels_input(tmp_path / "nothing")
