"""The learning-rate schedule: constant by default, cosine to ``lr_final`` when asked."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from napari_medsegdiff.config import TrainConfig, preset
from napari_medsegdiff.data import SliceSet
from napari_medsegdiff.training import learning_rate, train
from napari_medsegdiff.training_state import load_last


def test_constant_unless_a_final_rate_is_given():
    tcfg = TrainConfig(steps=100, lr=1e-3)
    assert {learning_rate(tcfg, s) for s in (0, 50, 99)} == {1e-3}


def test_cosine_runs_from_lr_to_lr_final():
    tcfg = TrainConfig(steps=101, lr=1e-3, lr_final=1e-5)
    assert learning_rate(tcfg, 0) == pytest.approx(1e-3)
    assert learning_rate(tcfg, 50) == pytest.approx((1e-3 + 1e-5) / 2)
    assert learning_rate(tcfg, 100) == pytest.approx(1e-5)
    rates = [learning_rate(tcfg, s) for s in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(rates))  # never rises
    assert learning_rate(tcfg, 500) == pytest.approx(1e-5)  # past the end: stays at the floor


def test_training_steps_with_the_scheduled_rate(tmp_path):
    """The optimiser saved after the last step used the schedule's rate for that step."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 32, 32, generator=g) * 2 - 1
    data = SliceSet(images, (images[:, 0] > 0).long(), [f"s{i}" for i in range(4)])
    tcfg = TrainConfig(steps=5, batch_size=2, lr=1e-3, lr_final=1e-4, val_every=100, save_every=100)
    train(preset("tiny", version="v2"), tcfg, data, tmp_path, device="cpu")
    _, state = load_last(tmp_path)
    (group,) = state["optimizer"]["param_groups"]
    assert math.isclose(group["lr"], learning_rate(tcfg, 4))
    assert math.isclose(group["lr"], 1e-4)
