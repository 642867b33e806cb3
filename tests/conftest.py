"""Shared fixtures: a tiny model trained once per test session on a synthetic task."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)  # tiny models gain nothing from threads; avoids oversubscription

from synthetic import ellipse_task  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_model_store(tmp_path_factory, monkeypatch):
    """Never touch the real per-user model store or work folders from tests."""
    monkeypatch.setenv("MEDSEGDIFF_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.setenv("MEDSEGDIFF_WORK", str(tmp_path_factory.mktemp("work")))


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory) -> dict:
    """A tiny V2 model that learned to segment ellipses (32x32); trained once (~30 s)."""
    from napari_medsegdiff.config import TrainConfig, preset
    from napari_medsegdiff.data import SliceSet
    from napari_medsegdiff.training import train

    images, labels = ellipse_task(96, seed=1)
    data = SliceSet(
        torch.from_numpy(images[:, None] * 2 - 1),
        torch.from_numpy(labels),
        [f"e{i}" for i in range(len(images))],
    )
    cfg = preset("tiny", version="v2")
    tcfg = TrainConfig(
        steps=TINY_STEPS,
        batch_size=16,
        lr=3e-3,
        ema_decay=0.99,
        val_every=10_000,
        save_every=10_000,
        seed=0,
    )
    out = tmp_path_factory.mktemp("tiny_model")
    result = train(cfg, tcfg, data, out, device="cpu")
    test_images, test_labels = ellipse_task(8, seed=99)
    return {"path": result.best, "images": test_images, "labels": test_labels, "result": result}


TINY_STEPS = 400


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained tiny model folder (behaviour tests only need the plumbing)."""
    from napari_medsegdiff.checkpoints import save_model
    from napari_medsegdiff.config import preset
    from napari_medsegdiff.model import build_model

    cfg = preset("tiny")
    return save_model(tmp_path_factory.mktemp("m") / "tiny", build_model(cfg).state_dict(), cfg)


@pytest.fixture
def notes():
    """Messages of napari notifications shown during the test."""
    from napari.utils.notifications import notification_manager  # noqa: TID251 (GUI tests only)

    seen: list[str] = []

    def record(event):
        seen.append(str(getattr(event, "message", event)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
