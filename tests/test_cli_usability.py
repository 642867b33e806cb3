"""The CLI as a fresh-clone user meets it (issue 15, items 10-13)."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from synthetic import ellipse_task

from napari_medsegdiff.cli import build_parser, main

FAST = ["--ensemble", "1", "--steps", "1", "--device", "cpu"]


def _scan(path, seed=0):
    images, labels = ellipse_task(4, size=(32, 32), seed=seed)
    affine = np.diag([0.8, 0.9, 2.5, 1])
    nib.save(
        nib.Nifti1Image(np.transpose(images * 100, (2, 1, 0)).astype(np.float32), affine), path
    )
    lab = np.transpose(labels, (2, 1, 0)).astype(np.uint8)
    return path, nib.Nifti1Image(lab, affine)


def test_cohort_variance_flag_alone_as_in_readme(tmp_path, tiny_model, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    _scan(scans / "a.nii.gz")
    _scan(scans / "b.nii.gz", seed=1)
    out = tmp_path / "masks"
    argv = ["segment", str(scans), "-o", str(out), "--variance", "--resume"]
    assert main([*argv, "--model", str(tiny_model), *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "a_mask.nii.gz",
        "a_variance.nii.gz",
        "b_mask.nii.gz",
        "b_variance.nii.gz",
    ]
    assert main([*argv, "--model", str(tiny_model), *FAST]) == 0  # resume: all finished
    assert "skipped 2" in capsys.readouterr().out
    assert main(["segment", str(scans), "-o", str(out), "--variance", "v.nii.gz"]) == 2
    assert "--variance alone" in capsys.readouterr().err


def test_single_file_variance_alone_or_named(tmp_path, tiny_model):
    scan, _ = _scan(tmp_path / "scan.nii.gz")
    assert main(["segment", str(scan), "-o", str(tmp_path / "m.nii.gz"), "--variance",
                 "--model", str(tiny_model), *FAST]) == 0  # fmt: skip
    assert (tmp_path / "m_variance.nii.gz").is_file()
    named = tmp_path / "v.nii.gz"
    assert main(["segment", str(scan), "-o", str(tmp_path / "n.nii.gz"), "--variance",
                 str(named), "--model", str(tiny_model), *FAST]) == 0  # fmt: skip
    assert nib.load(named).shape == nib.load(scan).shape


def test_training_run_folder_is_a_model(tmp_path, tiny_model, capsys):
    run = tmp_path / "runs" / "m"
    shutil.copytree(tiny_model, run / "last")
    scan, _ = _scan(tmp_path / "scan.nii.gz")
    argv = ["segment", str(scan), "--model", str(run), *FAST]
    assert main([*argv, "-o", str(tmp_path / "a.nii.gz")]) == 0
    assert "using its last/ model" in capsys.readouterr().err
    shutil.copytree(tiny_model, run / "best")
    assert main([*argv, "-o", str(tmp_path / "b.nii.gz")]) == 0
    assert "using its best/ model" in capsys.readouterr().err


def test_segment_help_shows_defaults():
    text = build_parser()._subparsers._group_actions[0].choices["segment"].format_help()
    flat = " ".join(text.split("options:")[1].split())
    for flag, default in (("--ensemble", "5"), ("--steps", "20"), ("--seed", "0")):
        start = flat.index(f"{flag} {flag[2:].upper()} ")
        assert f"else {default})" in flat[start : start + 260], flag
    assert "ensemble x steps" in flat


def test_evaluate_scores_only_the_given_slices(tmp_path, capsys):
    truth = np.zeros((20, 20, 6), np.uint8)
    truth[5:15, 5:15, :] = 1
    pred = np.zeros_like(truth)
    pred[:, :, 2:4] = truth[:, :, 2:4]  # a partial segmentation: slices 2 and 3 only
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(truth, affine), tmp_path / "t.nii.gz")
    nib.save(nib.Nifti1Image(pred, affine), tmp_path / "p.nii.gz")
    base = ["evaluate", "--pred", str(tmp_path / "p.nii.gz"), "--truth", str(tmp_path / "t.nii.gz")]
    assert main(base) == 0
    assert "0.5000" in capsys.readouterr().out  # 2 of 6 slices: Dice 0.5 over the volume
    assert main([*base, "--slices", "2:4"]) == 0
    out = capsys.readouterr().out
    assert "1.0000" in out and "on 2 slice(s) 2:4" in out
    assert main([*base, "--slices", "2:40"]) == 2
    assert "--slices" in capsys.readouterr().err


def test_headless_demo_twice_replaces_its_own_files(tmp_path, tiny_model, monkeypatch):
    from napari_medsegdiff.demo import run_headless_demo

    monkeypatch.chdir(tmp_path)
    first = run_headless_demo(
        tmp_path / "demo_output", slices="90:91", ensemble=1, steps=1, device="cpu",
        model=str(tiny_model), overwrite=False,
    )  # fmt: skip
    second = run_headless_demo(
        tmp_path / "demo_output", slices="90:91", ensemble=1, steps=1, device="cpu",
        model=str(tiny_model), overwrite=False,
    )  # fmt: skip
    for summary in (first, second):
        assert f"into {tmp_path / 'demo_output'}" in summary
        assert "--slices 90:91" in summary


def test_train_progress_counts_steps(tmp_path, capsys):
    images, labels = ellipse_task(4, size=(32, 32), seed=0)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    img = np.transpose(images * 100, (2, 1, 0)).astype(np.float32)
    nib.save(nib.Nifti1Image(img, affine), data / "images" / "c.nii.gz")
    lab = np.transpose(labels, (2, 1, 0)).astype(np.uint8)
    nib.save(nib.Nifti1Image(lab, affine), data / "labels" / "c.nii.gz")
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny"]
    assert main([*argv, "--steps", "2", "--batch-size", "2", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "step" in err and "slice/s" not in err


def test_a_channel_mismatch_names_the_files(tmp_path, tiny_model, capsys):
    # a 4-D file (e.g. a time series) is read as channels; a 1-channel model refuses it
    # with one line that names the file, before any slice is sampled
    scan, _ = _scan(tmp_path / "scan.nii.gz")
    data = np.asarray(nib.load(scan).dataobj)
    four_d = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), np.eye(4)), four_d)
    argv = ["segment", str(four_d), "-o", str(tmp_path / "m.nii.gz"), "--model", str(tiny_model)]
    assert main([*argv, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "series.nii.gz: 2 channel(s), but model" in err[0], err
    assert not (tmp_path / "m.nii.gz").exists()


def test_a_warning_is_one_line_without_source_code(tmp_path, tiny_model, capsys):
    scan, _ = _scan(tmp_path / "holes.nii.gz")
    img = nib.load(scan)
    data = np.asarray(img.dataobj).astype(np.float32)
    data[0, 0, :3] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), scan)
    argv = ["segment", str(scan), "-o", str(tmp_path / "m.nii.gz"), "--model", str(tiny_model)]
    assert main([*argv, *FAST]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1, err
    assert err[0].startswith("medsegdiff segment: warning: holes.nii.gz: 3 NaN/Inf voxel(s)")


def test_finetuning_on_a_blank_labels_slice_warns(tmp_path, tiny_model, capsys):
    # e.g. the corrections were never saved into the labels file: say so, still run
    scan, labels = _scan(tmp_path / "scan.nii.gz")
    blank = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(labels.shape, np.uint8), labels.affine), blank)
    argv = ["finetune", "--model", str(tiny_model), "--image", str(scan), "--labels", str(blank)]
    argv += ["--slices", "1,2", "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "m")]
    assert main(argv) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert err == [
        "medsegdiff finetune: warning: labels.nii.gz: slice(s) 1, 2 hold no label; "
        "fine-tuning teaches them as all background"
    ], err


def test_a_probability_map_given_as_labels_is_refused(tmp_path, tiny_model, capsys):
    # np.rint would have turned P(foreground) into a mask without a word
    scan, labels = _scan(tmp_path / "scan.nii.gz")
    soft = tmp_path / "probability.nii.gz"
    values = np.asarray(labels.dataobj).astype(np.float32) * 0.7
    nib.save(nib.Nifti1Image(values, labels.affine), soft)
    finetune = ["finetune", "--model", str(tiny_model), "--image", str(scan), "--labels", str(soft)]
    finetune += ["--slices", "1", "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "m")]
    evaluate = ["evaluate", "--pred", str(soft), "--truth", str(soft)]
    for argv in finetune, evaluate:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "probability.nii.gz: label values must be whole numbers" in err[0]
        assert "found 0.7" in err[0], err
    assert not (tmp_path / "m").exists()


def test_a_step_progress_bar_counts_steps_from_its_first_draw(capsys):
    from napari_medsegdiff.commands import _tqdm_progress
    from napari_medsegdiff.progress import Progress

    report = _tqdm_progress("fine-tune", "step")
    report(Progress(0, 4, "starting", None))
    report(Progress(4, 4, "done", None))
    err = capsys.readouterr().err
    assert "step/s" in err or "s/step" in err or "?step" in err, err
    assert "slice" not in err, err


def test_the_headless_demo_samples_at_the_model_s_own_settings(monkeypatch, tmp_path):
    from napari_medsegdiff import demo, jobs

    seen = {}

    def fake_segment_files(*args, sampler=None, **kwargs):
        seen["sampler"] = sampler
        raise SystemExit(0)

    monkeypatch.setattr(jobs, "segment_files", fake_segment_files)
    with pytest.raises(SystemExit):
        demo.run_headless_demo(tmp_path / "out", slices="80:81")
    assert (seen["sampler"].ensemble, seen["sampler"].steps) == (3, 2)
