"""Fine-tuning on corrections: learns, never touches the base, cancels into a partial
version, records complete provenance."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest
from synthetic import ellipse_task

from napari_medsegdiff.checkpoints import ModelStore, file_sha256
from napari_medsegdiff.config import FinetuneSettings
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.finetune import corrected_slices, finetune
from napari_medsegdiff.progress import CancelToken

pytestmark = pytest.mark.slow


def _shifted_volume(n=10, seed=5):
    """A contrast the base model never saw: dark ellipses on a bright background."""
    images, labels = ellipse_task(n, seed=seed)
    return 1.0 - images, labels


def _hashes(folder):
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir())}


def test_corrected_slices():
    proposal = np.zeros((4, 5, 5), np.uint8)
    labels = proposal.copy()
    labels[1, 2, 2] = 1
    labels[3, 0, 0] = 2
    assert corrected_slices(labels, proposal) == [1, 3]


def test_finetune_learns_from_corrections_and_keeps_base(trained_tiny, tmp_path):
    base = trained_tiny["path"]
    before = _hashes(base)
    image, labels = _shifted_volume(10)
    proposal = np.zeros_like(labels)
    store = ModelStore(tmp_path / "store")
    settings = FinetuneSettings(steps=150, lr=2e-3, batch_size=8, val_every=50, holdout=0.3)
    result = finetune(
        base,
        image,
        labels,
        proposal=proposal,
        settings=settings,
        device="cpu",
        store=store,
        image_files=["shifted.nii.gz"],
    )
    prov = result.provenance
    assert prov["settings"] == dataclasses.asdict(settings)  # one object, saved as is
    assert prov["held_out_dice_best"] > prov["held_out_dice_before"] + 0.2, prov
    assert _hashes(base) == before  # the base model is never written
    assert result.path.parent == store.root and result.path.name.startswith(base.name)
    assert {p.name for p in result.path.iterdir()} == {
        "model.safetensors",
        "config.json",
        "provenance.json",
    }
    saved = json.loads((result.path / "provenance.json").read_text(encoding="utf-8"))
    for key in (
        "base_model",
        "image_files",
        "slices",
        "held_out_slices",
        "steps",
        "losses",
        "held_out_dice",
        "package_version",
        "partial",
    ):
        assert key in saved, key
    assert saved["base_model"]["sha256"] == before["model.safetensors"]
    assert saved["partial"] is False and len(saved["losses"]) == 150
    assert [e.path for e in store.versions()] == [result.path]


def test_cancel_saves_a_partial_version(trained_tiny, tmp_path):
    image, labels = _shifted_volume(6)
    token = CancelToken()

    def on_progress(p):
        if p.done >= 3:
            token.cancel()

    result = finetune(
        trained_tiny["path"],
        image,
        labels,
        slices=[0, 1, 2, 3],
        steps=100,
        lr=1e-3,
        batch_size=2,
        device="cpu",
        store=tmp_path / "s",
        on_progress=on_progress,
        cancel=token,
    )
    assert result.provenance["partial"] is True
    assert 3 <= result.provenance["steps_done"] < 100
    meta = json.loads((result.path / "config.json").read_text(encoding="utf-8"))
    assert meta["partial"] is True
    assert ModelStore(tmp_path / "s").versions()[0].partial


def test_two_finetunes_at_once_write_two_versions(trained_tiny, tmp_path, monkeypatch):
    """Force the collision: both runs pick the same version name before either claims it."""
    from napari_medsegdiff import checkpoints

    monkeypatch.setattr(checkpoints, "_version_stamp", lambda: "20260101-000000")
    picked = threading.Barrier(2, timeout=120)
    original = checkpoints.ModelStore.new_version_path
    first_pick = threading.local()

    def new_version_path(self, base_name):
        path = original(self, base_name)
        if not getattr(first_pick, "done", False):
            first_pick.done = True
            picked.wait()  # both threads hold the same candidate name here
        return path

    monkeypatch.setattr(checkpoints.ModelStore, "new_version_path", new_version_path)
    image, labels = _shifted_volume(4)
    store = ModelStore(tmp_path / "store")
    results, errors = [], []

    def run():
        try:
            results.append(
                finetune(
                    trained_tiny["path"],
                    image,
                    labels,
                    slices=[0, 1],
                    steps=3,
                    batch_size=2,
                    device="cpu",
                    store=store,
                )
            )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    paths = {r.path for r in results}
    assert len(paths) == 2 and {e.path for e in store.versions()} == paths
    first, second = sorted(p.name for p in paths)
    assert first.endswith("-ft-20260101-000000") and second == f"{first}-2"
    for result in results:  # each folder holds the run that reported it
        saved = json.loads((result.path / "provenance.json").read_text(encoding="utf-8"))
        assert saved["losses"] == result.provenance["losses"]


def test_refuses_without_usable_slices(trained_tiny, tmp_path):
    image, labels = _shifted_volume(3)
    with pytest.raises(InputError, match="no corrected"):
        finetune(trained_tiny["path"], image, labels, proposal=labels.copy(), store=tmp_path)
    with pytest.raises(InputError, match="shape"):
        finetune(trained_tiny["path"], image, labels[:2], slices=[0], store=tmp_path)
    with pytest.raises(InputError, match="0 \\(background\\)"):
        finetune(trained_tiny["path"], image, labels - 1, slices=[0], store=tmp_path)
    with pytest.raises(InputError, match="at most 63"):
        finetune(trained_tiny["path"], image, labels + 70, slices=[0], store=tmp_path)


def test_finetune_stops_once_the_painted_slices_are_fit(trained_tiny, tmp_path):
    """Without held-out slices the painted slices are the fit check: training stops when
    they come back (worst class) at FINETUNE_STOP_DICE, well before the step cap, and the
    progress says so."""
    from napari_medsegdiff import config

    image, labels = ellipse_task(6, seed=3)  # the base model's own task: fit quickly
    messages = []
    result = finetune(
        trained_tiny["path"],
        image,
        labels,
        slices=[0, 2, 4],
        steps=400,
        device="cpu",
        out=tmp_path / "fit",
        on_progress=lambda p: messages.append(p.message),
    )
    prov = result.provenance
    assert prov["stopped_fitted"] and prov["painted_dice_best"] >= config.FINETUNE_STOP_DICE
    assert prov["steps_done"] < 400 and prov["steps_done"] % config.FINETUNE_CHECK_EVERY == 0
    assert "held_out_dice" not in prov
    assert any("fitted" in m and "stopping" in m for m in messages)
    assert "painted slices come back at Dice" in result.summary()
