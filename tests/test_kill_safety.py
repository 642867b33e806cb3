"""Kill safety: SIGKILL in the middle of writing labels or saving a model loses nothing.

A child process loops over writes; the test kills it (SIGKILL, no clean-up possible) at
random moments. Afterwards the output is intact (equal to one of the versions written)
or absent, never truncated, and the model store lists only versions that load.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medsegdiff.nifti import read_volume

SHAPE = (48, 256, 256)  # (z, y, x): 3.1 M voxels, ~0.1 s per write
KILL_RNG = np.random.default_rng(int(os.environ.get("KILL_SEED", "7")))
TRIALS = int(os.environ.get("KILL_TRIALS", "4"))  # kills per test; RELIABILITY.md: 30

LABEL_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from napari_medsegdiff.nifti import write_labels
    from napari_medsegdiff.volume import VolumeGeometry
    sys.path.insert(0, sys.argv[2])
    from test_kill_safety import SHAPE, label_version

    out = sys.argv[1]
    geometry = VolumeGeometry.from_affine(np.diag([0.8, 0.8, 2.0, 1.0]), SHAPE[::-1])
    versions = [label_version(k) for k in range(3)]
    k = 0
    while True:
        write_labels(versions[k % 3], geometry, out, overwrite=True)
        print("wrote", k % 3, flush=True)
        k += 1
    """
)

MODEL_SAVER = textwrap.dedent(
    """
    import sys
    import torch
    torch.set_num_threads(1)
    from napari_medsegdiff.checkpoints import ModelStore, save_model
    from napari_medsegdiff.config import preset
    from napari_medsegdiff.model import build_model

    root, mode = sys.argv[1], sys.argv[2]
    cfg = preset("tiny")
    base = build_model(cfg).state_dict()
    store = ModelStore(root)
    k = 0
    while True:
        state = {key: value + k if value.is_floating_point() else value
                 for key, value in base.items()}
        if mode == "store":
            target = store.new_version_path("tiny")
        else:
            target = store.root / "fixed"
        save_model(target, state, cfg, meta={"k": k}, overwrite=(mode != "store"))
        print("saved", k, flush=True)
        k += 1
    """
)


def label_version(k: int) -> np.ndarray:
    """Version ``k`` of the labels (z, y, x): distinct, not trivially compressible."""
    rng = np.random.default_rng(k)
    labels = np.zeros(SHAPE, np.uint8)
    labels[:, 64:192, 64:192] = k + 1
    labels[rng.random(SHAPE) < 0.05] = k + 4
    return labels


def _start(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",
        env=env,
    )


def _kill_after(proc: subprocess.Popen, wait_for: str | None, delay: float) -> list[str]:
    """Wait for a line starting with ``wait_for`` (if given), sleep, SIGKILL; return stdout."""
    lines: list[str] = []
    if wait_for is not None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"child exited early: {proc.stderr.read()[-2000:]}")
            lines.append(line)
            if line.startswith(wait_for):
                break
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return lines + out.splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_kill_while_writing_labels(tmp_path, suffix):
    out = tmp_path / f"labels{suffix}"
    versions = [label_version(k) for k in range(3)]
    tests = Path(__file__).parent
    seen = 0
    for trial in range(TRIALS):
        proc = _start(LABEL_WRITER, str(out), str(tests))
        # trial 0: kill before the first write may have finished (absent is fine then)
        wait_for = None if trial == 0 and not out.exists() else "wrote"
        delay = float(KILL_RNG.uniform(0.0, 0.6)) if wait_for else 1.0
        _kill_after(proc, wait_for, delay)
        if not out.exists():
            assert trial == 0, "an existing output disappeared"
            continue
        img = nib.load(out)  # a truncated file would fail here or below
        assert img.shape == SHAPE[::-1]
        np.asarray(img.dataobj)  # nibabel reads every voxel
        data = read_volume(out).data  # back in (z, y, x)
        matches = [k for k, v in enumerate(versions) if np.array_equal(data, v)]
        assert matches, f"trial {trial}: labels are none of the written versions"
        seen += 1
    assert seen >= TRIALS - 1
    mid_write = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    print(f"{TRIALS} kills, {len(mid_write)} in the middle of a write (temp file left)")
    for path in tmp_path.iterdir():  # only the output and hidden temp files of killed writes
        assert path == out or (path.name.startswith(".") and ".tmp" in path.name), path


@pytest.mark.slow
def test_kill_while_saving_models(tmp_path):
    from napari_medsegdiff.checkpoints import ModelStore, load_model

    root = tmp_path / "store"
    saved = 0
    for _trial in range(max(3, TRIALS - 1)):
        proc = _start(MODEL_SAVER, str(root), "store")
        lines = _kill_after(proc, "saved", float(KILL_RNG.uniform(0.0, 0.8)))
        saved += sum(line.startswith("saved") for line in lines)
    versions = ModelStore(root).versions()
    assert len(versions) >= saved >= 3
    for entry in versions:
        _, info = load_model(entry.path)  # every listed version is complete
        assert isinstance(info.meta["k"], int)
    hidden = [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert all(".tmp-" in name for name in hidden), hidden
    print(f"{saved} versions saved, {len(versions)} listed, {len(hidden)} killed mid-save")


@pytest.mark.slow
def test_kill_while_overwriting_a_model_folder(tmp_path):
    from napari_medsegdiff.checkpoints import load_model

    root = tmp_path / "store"
    absent = 0
    for _trial in range(max(2, TRIALS // 2)):
        proc = _start(MODEL_SAVER, str(root), "fixed")
        _kill_after(proc, "saved", float(KILL_RNG.uniform(0.0, 0.8)))
        folder = root / "fixed"
        if folder.exists():
            load_model(folder)
        else:
            absent += 1
    assert absent == 0, f"the model folder was missing after {absent} kills while overwriting"
