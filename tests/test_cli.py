"""CLI end to end on small generated NIfTIs: train (tiny), segment, evaluate; error lines."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from synthetic import ellipse_task

from napari_medsegdiff.cli import main


def _write_case(folder, name, seed, affine=None):
    images, labels = ellipse_task(6, size=(32, 40), seed=seed)
    affine = np.diag([0.8, 0.9, 2.5, 1]) if affine is None else affine
    # Store as (x, y, z) on disk: axis 2 is the slice axis for an axial RAS volume.
    img = np.transpose(images * 100, (2, 1, 0)).astype(np.float32)
    lab = np.transpose(labels, (2, 1, 0)).astype(np.uint8)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img, affine), folder / "images" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(lab, affine), folder / "labels" / f"{name}.nii.gz")
    return folder / "images" / f"{name}.nii.gz", folder / "labels" / f"{name}.nii.gz"


def tiny_train_argv(tmp_path, cases: int, steps: int, batch: int) -> list[str]:
    """``train`` argv (no --out) on ``cases`` generated NIfTI cases: tiny preset, CPU."""
    data = tmp_path / "data"
    for i in range(cases):
        _write_case(data, f"case{i}", seed=i)
    argv = ["train", "--data", str(data), "--preset", "tiny", "--device", "cpu"]
    return [*argv, "--steps", str(steps), "--batch-size", str(batch), "--val-every", str(steps)]


@pytest.mark.slow
def test_train_segment_evaluate(tmp_path, capsys):
    data = tmp_path / "data"
    for i in range(3):
        _write_case(data, f"case{i}", seed=i)
    out = tmp_path / "model"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--steps",
                "6",
                "--batch-size",
                "4",
                "--val-every",
                "3",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (out / "best" / "model.safetensors").is_file()
    assert (out / "last" / "training_state.safetensors").is_file()
    # Resume continues from the saved step.
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--steps",
                "8",
                "--batch-size",
                "4",
                "--val-every",
                "4",
                "--device",
                "cpu",
                "--resume",
            ]
        )
        == 0
    )
    assert json.loads((out / "last" / "config.json").read_text(encoding="utf-8"))["step"] == 8

    scan, truth = data / "images" / "case0.nii.gz", data / "labels" / "case0.nii.gz"
    pred, var = tmp_path / "pred.nii.gz", tmp_path / "var.nii.gz"
    assert (
        main(
            [
                "segment",
                str(scan),
                "-o",
                str(pred),
                "--variance",
                str(var),
                "--model",
                str(out / "best"),
                "--ensemble",
                "2",
                "--steps",
                "3",
                "--slices",
                "1:4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    src, got, v = nib.load(scan), nib.load(pred), nib.load(var)
    assert got.shape == src.shape and np.allclose(got.affine, src.affine)
    assert v.shape == src.shape and v.get_fdata().min() >= 0
    data_out = np.asarray(got.dataobj)
    assert data_out[:, :, [0, 4, 5]].max() == 0  # untouched slices stay empty

    # Refuses to clobber without --overwrite, with one line and exit 2.
    assert main(["segment", str(scan), "-o", str(pred), "--model", str(out / "best")]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "-o: " in err and "pass --overwrite" in err

    report = tmp_path / "report.json"
    assert (
        main(["evaluate", "--pred", str(truth), "--truth", str(truth), "--json", str(report)]) == 0
    )
    assert json.loads(report.read_text(encoding="utf-8"))["mean"]["dice"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["segment", "missing.nii.gz", "-o", "x.nii.gz"], "missing.nii.gz"),
        (["segment", "a.nii.gz", "-o", "x.nii.gz", "--ensemble", "0"], "--ensemble"),
        (["segment", "a.nii.gz", "-o", "x.nii.gz", "--sampler", "euler"], "euler"),
        (["train", "--data", "nowhere", "--out", "m"], "--data: nowhere"),
        (["train", "--data", ".", "--out", "m", "--context", "9"], "context must be 0..4"),
        (["train", "--data", ".", "--out", "m", "--invert", "2"], "--invert"),
        (["evaluate", "--pred", "p.nii.gz", "--truth", "t.nii.gz"], "p.nii.gz"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, argv, needle):
    proc = subprocess.run(
        [sys.executable, "-m", "napari_medsegdiff", *argv],
        cwd=tmp_path,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
    )
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert needle in err


def test_train_with_context_records_it_and_segments(tmp_path):
    out = tmp_path / "model"
    argv = [*tiny_train_argv(tmp_path, cases=2, steps=2, batch=2), "--out", str(out)]
    assert main([*argv, "--context", "1"]) == 0
    config = json.loads((out / "best" / "config.json").read_text(encoding="utf-8"))
    assert config["model"]["context"] == 1 and config["model"]["in_channels"] == 1
    pred = tmp_path / "pred.nii.gz"
    scan = tmp_path / "data" / "images" / "case0.nii.gz"
    argv = ["segment", str(scan), "-o", str(pred), "--model", str(out), "--steps", "1"]
    assert main([*argv, "--ensemble", "1", "--device", "cpu"]) == 0
    assert nib.load(pred).shape == nib.load(scan).shape


def test_train_with_robustness_augmentations_and_decay(tmp_path, capsys):
    argv = [*tiny_train_argv(tmp_path, cases=2, steps=3, batch=2), "--lr", "1e-3"]
    assert main([*argv, "--out", str(tmp_path / "bad"), "--lr-final", "0.1"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--lr-final: final learning rate must be between 0 and" in err.splitlines()[-1]
    out = tmp_path / "model"
    extra = ["--lr-final", "1e-5", "--invert", "0.5", "--window", "0.5"]
    assert main([*argv, "--out", str(out), *extra]) == 0
    state = json.loads((out / "last" / "training_state.json").read_text(encoding="utf-8"))
    assert state["train_config"]["lr_final"] == 1e-5
    (group,) = state["optimizer"]["param_groups"]
    assert group["lr"] == pytest.approx(1e-5)  # the cosine reached its floor at the last step
