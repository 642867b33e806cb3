"""New classes from corrections, new models for new tasks, and which slices to correct."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from synthetic import dice, ellipse_task

from napari_medsegdiff.checkpoints import class_names, load_model, read_model_info
from napari_medsegdiff.config import SamplerConfig, preset
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.finetune import finetune, plan_classes
from napari_medsegdiff.heads import _k_axes, grow_classes, new_task_head
from napari_medsegdiff.model import build_model
from napari_medsegdiff.segmenter import Segmenter
from napari_medsegdiff.suggest import spread_picks, suggest_slices


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("old_k", [1, 3])
def test_growth_keeps_old_weights_bit_for_bit(version, old_k):
    torch.manual_seed(0)
    cfg = preset("tiny", version=version, mask_channels=old_k)
    state = build_model(cfg).state_dict()
    old_classes = cfg.num_classes
    grown, new_cfg = grow_classes(state, cfg, old_classes + 2, parents={old_classes: 1})
    assert new_cfg.mask_channels == old_classes + 2
    build_model(new_cfg).load_state_dict(grown)  # shapes match the new config exactly
    axes = _k_axes(cfg)
    assert "diffusion.stem.weight" in axes and "diffusion.out.2.weight" in axes
    for name, tensor in state.items():
        if name not in axes:
            assert torch.equal(grown[name], tensor), name
            continue
        axis = axes[name]
        new = grown[name].movedim(axis, 0)
        old = tensor.movedim(axis, 0)
        stem = name == "diffusion.stem.weight"
        if old_k == 1:  # binary: foreground channel kept, background derived from it
            assert torch.equal(new[1], old[0])
            assert torch.equal(new[0], torch.zeros_like(old[0]) if stem else -old[0])
        else:
            assert torch.equal(new[:old_k], old)
        if stem:  # the network ignores the new classes' inputs until trained
            assert not new[old_classes:].any()
        else:  # a new class starts as its parent (class 1), the other as background
            assert torch.equal(new[old_classes], new[1])
            assert torch.equal(new[old_classes + 1], new[0])


def test_new_task_head_keeps_the_image_weights():
    cfg = preset("tiny", version="v2", mask_channels=3)
    state = build_model(cfg).state_dict()
    fresh, new_cfg = new_task_head(state, cfg, 2)
    assert new_cfg.mask_channels == 2
    build_model(new_cfg).load_state_dict(fresh)
    axes = _k_axes(cfg)
    kept = [n for n in state if n not in axes]
    assert any(n.startswith("condition.") for n in kept)
    assert all(torch.equal(fresh[n], state[n]) for n in kept)


def test_class_plan_and_names():
    labels = np.array([[[0, 1], [2, 3]]])
    assert plan_classes(3, labels, new_model=False).added == (3,)
    assert plan_classes(4, labels, new_model=False).mode == "keep"
    new = plan_classes(3, labels, new_model=True)
    assert (new.mode, new.classes, new.added) == ("new", 4, (1, 2, 3))
    with pytest.raises(InputError, match="at least one structure"):
        plan_classes(3, np.zeros((1, 2, 2), int), new_model=True)
    names = class_names({"classes": {"0": "background", "1": "grey matter"}}, 3)
    assert names == ["background", "grey matter", "class 2"]


def _three_class_volume(n: int, seed: int):
    """Ellipses with a bright core: the core is label 2, a class the binary base lacks."""
    return ellipse_task(n, seed=seed, classes=3)


@pytest.mark.slow
def test_tiny_model_learns_a_new_class(trained_tiny, tmp_path):
    base = trained_tiny["path"]
    assert read_model_info(base).config.num_classes == 2
    images, labels = _three_class_volume(12, seed=3)
    out = tmp_path / "with-core"
    result = finetune(
        base,
        images,
        labels,
        slices=list(range(12)),
        steps=400,
        lr=2e-3,
        batch_size=8,
        device="cpu",
        out=out,
        holdout=0.0,
        class_names={2: "core"},
    )
    assert result.path == out and result.provenance["added_classes"] == [2]
    assert "added 1 class(es)" in result.classes_line() and "2 = core" in result.classes_line()
    info = read_model_info(out)
    assert info.config.num_classes == 3 and info.meta["classes"]["2"] == "core"
    test_images, test_labels = _three_class_volume(6, seed=77)
    seg = Segmenter.load(out, "cpu")
    results = list(seg.segment_volume(test_images, sampler=SamplerConfig(steps=10, ensemble=3)))
    core = [dice(r.mask == 2, test_labels[r.index] == 2) for r in results]
    whole = [dice(r.mask > 0, test_labels[r.index] > 0) for r in results]
    assert np.mean(core) >= 0.65, core  # the new class was learned (0.80 when written)
    assert np.mean(whole) >= 0.85, whole  # the old class did not collapse (0.94)


@pytest.mark.slow
def test_new_model_for_a_new_task(trained_tiny, tmp_path):
    """From the ellipse model to a different task: only the bright core of each ellipse."""
    images, labels = _three_class_volume(12, seed=4)
    task = (labels == 2).astype(np.int64)
    result = finetune(
        trained_tiny["path"],
        images,
        task,
        slices=list(range(12)),
        new_model=True,
        steps=400,
        lr=2e-3,
        batch_size=8,
        device="cpu",
        out=tmp_path / "core-only",
        holdout=0.0,
    )
    assert result.provenance["class_change"] == "new"
    _, info = load_model(result.path)
    assert info.config.mask_channels == 2 and info.meta["classes"] == {
        "0": "background",
        "1": "class 1",
    }
    test_images, test_labels = _three_class_volume(6, seed=78)
    seg = Segmenter.load(result.path, "cpu")
    results = list(seg.segment_volume(test_images, sampler=SamplerConfig(steps=10, ensemble=3)))
    scores = [dice(r.mask == 1, test_labels[r.index] == 2) for r in results]
    assert np.mean(scores) >= 0.7, scores


def test_out_refuses_a_non_empty_folder(trained_tiny, tmp_path):
    images, labels = ellipse_task(2, seed=5)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        finetune(trained_tiny["path"], images, labels, slices=[0], out=tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_spread_picks_keeps_a_gap_and_relaxes_it_when_needed():
    scores = {z: float(z) for z in range(20)}  # the top slices are neighbours
    picks = spread_picks(scores, 4, min_gap=5)
    assert picks == [19, 14, 9, 4]
    assert len(set(spread_picks(scores, 10, min_gap=8))) == 10


@pytest.mark.slow
def test_suggest_picks_the_slices_the_model_is_unsure_of(trained_tiny):
    images, _ = ellipse_task(24, seed=6)
    hard = [3, 12, 20]
    rng = np.random.default_rng(0)
    for z in hard:  # a contrast the model never saw: noisy, low contrast
        images[z] = 0.5 + 0.25 * (images[z] - 0.5) + 0.35 * rng.standard_normal(images[z].shape)
    suggestion = suggest_slices(trained_tiny["path"], images, count=3, device="cpu")
    picks = suggestion.slices
    assert len(picks) == 3 == len(set(picks))
    assert min(abs(a - b) for a in picks for b in picks if a != b) >= 2
    assert [suggestion.scores[z] for z in picks] == sorted(
        (suggestion.scores[z] for z in picks), reverse=True
    )
    assert len(set(picks) & set(hard)) >= 2, (picks, suggestion.scores)


def test_provenance_names_added_classes(tmp_path, trained_tiny):
    images, labels = _three_class_volume(3, seed=8)
    result = finetune(
        trained_tiny["path"],
        images,
        labels,
        slices=[0, 1, 2],
        steps=2,
        batch_size=2,
        device="cpu",
        store=tmp_path / "store",
    )
    saved = json.loads((result.path / "provenance.json").read_text(encoding="utf-8"))
    assert saved["added_classes"] == [2] and saved["classes"]["2"] == "class 2"
    assert saved["class_parents"]["2"] in (0, 1)


@pytest.mark.slow
def test_cli_finetune_out_is_a_model_folder_then_segment_and_suggest(
    trained_tiny, tmp_path, capsys
):
    import nibabel as nib

    from napari_medsegdiff.cli import main

    images, labels = _three_class_volume(6, seed=9)
    affine = np.diag([0.8, 0.9, 2.5, 1])
    scan, corrected = tmp_path / "scan.nii.gz", tmp_path / "corrected.nii.gz"
    # (x, y, z) on disk: axis 2 is the displayed axis 0 for an axial RAS volume.
    nib.save(nib.Nifti1Image(np.transpose(images * 100, (2, 1, 0)), affine), scan)
    nib.save(nib.Nifti1Image(np.transpose(labels, (2, 1, 0)).astype(np.uint8), affine), corrected)
    model = tmp_path / "my-model"
    common = ["--model", str(trained_tiny["path"]), "--image", str(scan)]
    argv = ["finetune", *common, "--labels", str(corrected), "--slices", "0,2,4"]
    argv += ["--steps", "3", "--device", "cpu", "--out", str(model)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "added 1 class(es) the base model did not have: 2 = class 2" in out
    assert (model / "model.safetensors").is_file() and (model / "config.json").is_file()
    assert json.loads((model / "provenance.json").read_text(encoding="utf-8"))["slices"] == [
        0,
        2,
        4,
    ]
    assert main(argv) == 2  # the folder is now taken: refused, nothing overwritten
    assert "not empty" in capsys.readouterr().err
    mask = tmp_path / "mask.nii.gz"
    seg = ["segment", str(scan), "-o", str(mask), "--model", str(model), "--slices", "1:3"]
    assert main([*seg, "--ensemble", "2", "--steps", "2", "--device", "cpu"]) == 0
    assert nib.load(mask).shape == nib.load(scan).shape
    capsys.readouterr()
    assert main(["suggest", str(scan), "--model", str(model), "--count", "2"]) == 0
    picks = capsys.readouterr().out.strip().splitlines()[-1].split(",")
    assert len(set(picks)) == 2 and all(0 <= int(z) < 6 for z in picks)
