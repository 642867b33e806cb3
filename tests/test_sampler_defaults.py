"""Sampling defaults by measurement: the choice rule, the config.json record, and
``medsegdiff train --choose-sampler`` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import tiny_train_argv

from napari_medsegdiff.checkpoints import WEIGHTS, recommended_sampler, save_model
from napari_medsegdiff.cli import main
from napari_medsegdiff.config import ModelConfig, preset
from napari_medsegdiff.model import build_model
from napari_medsegdiff.sampler_defaults import (
    REFERENCE,
    STEPS,
    SamplerChoice,
    cheapest_within,
    choose_sampler,
    write_sampler,
)


def test_cheapest_within_tolerance_and_with_enough_members():
    table = {
        (2, 1): 0.95,  # cheapest and best, but one member gives no variance
        (2, 3): 0.896,  # 6 passes, within 0.005 of 0.900
        (3, 2): 0.899,  # 6 passes too, but more steps and too few members
        (5, 3): 0.897,
        (2, 5): 0.899,
        (10, 3): 0.890,  # outside the tolerance
    }
    assert cheapest_within(table, 0.900, 0.005, 3) == (2, 3)
    assert cheapest_within(table, 0.900, 0.002, 3) == (2, 5)
    assert cheapest_within(table, 0.900, 0.005, 1) == (2, 1)
    assert cheapest_within(table, 0.990, 0.005, 3) == REFERENCE  # nothing close: the reference


def test_choose_sampler_scores_the_reference_and_candidates():
    calls = []

    def score(steps: int, ensemble: int) -> float:
        calls.append((steps, ensemble))
        return 0.80 + 0.01 * min(ensemble, 5) - 0.001 * steps  # members help, steps drift

    choice = choose_sampler(score, steps=(2, 5), ensembles=(1, 3, 5, 10))
    assert calls[0] == REFERENCE and (2, 1) not in calls  # one member is never a candidate
    # reference 0.80 + 0.05 - 0.05 = 0.80; (2, 3) scores 0.828: cheapest within tolerance.
    assert (choice.steps, choice.ensemble) == (2, 3)
    assert choice.dice == pytest.approx(0.828) and choice.reference_dice == pytest.approx(0.80)


def test_write_sampler_records_the_choice_and_keeps_the_weights(tmp_path):
    cfg = preset("tiny", mask_channels=3)
    folder = save_model(tmp_path / "m", build_model(cfg).state_dict(), cfg, meta={"note": "x"})
    weights = (folder / WEIGHTS).read_bytes()
    write_sampler(folder, SamplerChoice(3, 5, 0.91, 0.912, 0.005), by="test")
    meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert recommended_sampler(meta) == {"steps": 3, "ensemble": 5, "seed": 0}
    assert meta["sampler_measured"]["reference"] == {"steps": 50, "ensemble": 10, "dice": 0.912}
    assert meta["note"] == "x" and ModelConfig.from_dict(meta["model"]) == cfg
    assert (folder / WEIGHTS).read_bytes() == weights
    assert not list(folder.glob(".*tmp*"))


@pytest.mark.slow
def test_train_choose_sampler_records_measured_defaults(tmp_path, capsys):
    torch.manual_seed(0)
    out = tmp_path / "model"
    argv = [*tiny_train_argv(tmp_path, cases=3, steps=4, batch=4), "--out", str(out)]
    argv += ["--val-fraction", "0.2", "--lr", "1e-3"]
    assert main([*argv, "--choose-sampler"]) == 0
    meta = json.loads((out / "best" / "config.json").read_text(encoding="utf-8"))
    chosen = recommended_sampler(meta)
    measured = meta["sampler_measured"]
    assert measured["by"] == "medsegdiff train --choose-sampler"
    if (chosen["steps"], chosen["ensemble"]) != REFERENCE:
        assert chosen["steps"] in STEPS and chosen["ensemble"] >= 3
        assert measured["dice"] >= measured["reference"]["dice"] - measured["tolerance"]
    assert "sampler:" in capsys.readouterr().err
    # Without validation slices there is nothing to measure on: one line, before training.
    assert main([*argv[:-4], "--val-fraction", "0", "--choose-sampler"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        "--choose-sampler: needs validation slices to measure on (--val-fraction is 0.0)"
    )
