"""Sampler and segmenter contracts on an untrained tiny model (fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medsegdiff.checkpoints import save_model
from napari_medsegdiff.cli import error_line
from napari_medsegdiff.config import SamplerConfig, preset
from napari_medsegdiff.diffusion.sampling import denoise_loop, make_scheduler
from napari_medsegdiff.diffusion.schedule import NoiseSchedule, training_betas
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.model import build_model
from napari_medsegdiff.progress import CancelToken
from napari_medsegdiff.segmenter import Segmenter, assemble, member_seed, parse_slices


@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory) -> Segmenter:
    cfg = preset("tiny", mask_channels=3)
    torch.manual_seed(0)
    path = save_model(tmp_path_factory.mktemp("m") / "tiny3", build_model(cfg).state_dict(), cfg)
    return Segmenter.load(path, "cpu")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("name", ["dpm++", "ddim", "ddpm"])
def test_schedulers_use_the_training_betas(name, schedule):
    cfg = preset("tiny", schedule=schedule)
    sched = make_scheduler(name, cfg)
    np.testing.assert_allclose(sched.betas.numpy(), training_betas(cfg), rtol=1e-5, atol=1e-7)
    sched.set_timesteps(7)
    assert len(sched.timesteps) == 7
    assert sched.config.num_train_timesteps == 1000  # step count never rebuilds training


def test_noise_schedule_targets_roundtrip():
    for prediction in ("epsilon", "v_prediction"):
        s = NoiseSchedule(preset("tiny", prediction=prediction))
        x0 = torch.rand(4, 1, 8, 8) * 2 - 1
        noise = torch.randn_like(x0)
        t = torch.tensor([0, 10, 500, 999])
        xt = s.add_noise(x0, noise, t)
        rec = s.predict_x0(xt, s.target(x0, noise, t), t)
        torch.testing.assert_close(rec, x0, atol=1e-3, rtol=1e-3)


def test_parse_slices():
    assert parse_slices("2:5", 10) == [2, 3, 4]
    assert parse_slices("7,1,1", 10) == [1, 7]
    assert parse_slices(None, 3) == [0, 1, 2]
    for bad in ("5:2", "0:11", "x", "12"):
        with pytest.raises(InputError, match="slice"):
            parse_slices(bad, 10)


def test_member_seeds_differ_and_are_stable():
    seeds = {member_seed(0, m) for m in range(32)}
    assert len(seeds) == 32
    assert member_seed(3, 1) == member_seed(3, 1) != member_seed(4, 1)


def test_multiclass_segmentation_shapes_and_streaming(tiny_segmenter):
    vol = np.random.default_rng(0).normal(size=(4, 40, 24)).astype(np.float32)
    seen = []
    results = list(
        tiny_segmenter.segment_volume(
            vol,
            slices="1:3",
            sampler=SamplerConfig(steps=2, ensemble=2),
            on_progress=lambda p: seen.append(p),
        )
    )
    assert [r.index for r in results] == [1, 2]
    r = results[0]
    assert r.mask.shape == (40, 24) and r.mask.dtype == np.uint8 and r.mask.max() <= 2
    assert r.probability.shape == (3, 40, 24)
    np.testing.assert_allclose(r.probability.sum(0), 1, atol=1e-4)
    assert r.variance.shape == (40, 24) and r.entropy is not None
    assert seen[-1].done == 2 and seen[-1].total == 2
    mask, _var, _prob = assemble(results, vol.shape)
    assert mask[0].max() == 0 and np.array_equal(mask[1], r.mask)


def test_cancel_stops_within_a_step(tiny_segmenter):
    token = CancelToken()
    steps_seen = []

    def on_progress(p):
        if p.step is not None:
            steps_seen.append(p.step)
            if p.step == 2:
                token.cancel()

    from napari_medsegdiff.errors import Cancelled

    with pytest.raises(Cancelled):
        list(
            tiny_segmenter.segment_volume(
                np.random.default_rng(0).random((3, 32, 32), np.float32),  # not blank: sampled
                sampler=SamplerConfig(steps=10, ensemble=1),
                on_progress=on_progress,
                cancel=token,
            )
        )
    assert max(steps_seen) == 2


def test_channel_mismatch_is_a_clear_error(tiny_segmenter):
    with pytest.raises(InputError, match="expects 1"):
        list(tiny_segmenter.segment_volume(np.zeros((2, 32, 32, 3), np.float32)))


def test_rgb_2d_image(tmp_path):
    cfg = preset("tiny", in_channels=3)
    seg = Segmenter.load(save_model(tmp_path / "rgb", build_model(cfg).state_dict(), cfg), "cpu")
    result = seg.segment_image(
        np.random.default_rng(1).integers(0, 255, (30, 50, 3)),
        sampler=SamplerConfig(steps=2, ensemble=2),
    )
    assert result.mask.shape == (30, 50) and result.probability.shape == (1, 30, 50)


def test_sampler_config_validation():
    for kwargs, arg in [
        ({"ensemble": 0}, "ensemble"),
        ({"steps": 0}, "steps"),
        ({"sampler": "euler"}, "sampler"),
        ({"fusion": "max"}, "fusion"),
    ]:
        with pytest.raises(InputError, match=arg) as info:
            SamplerConfig(**kwargs)
        assert info.value.argument == arg and "--" not in str(info.value)
        assert error_line(info.value).startswith(f"--{arg}: ")


def test_inpainting_holds_the_known_pixels_through_the_loop():
    """RePaint-style replacement: the network sees x_t whose known pixels are x0 noised to
    the step's level (closer to x0 at each step), and the result equals x0 there."""
    cfg = preset("tiny")
    scheduler = make_scheduler("ddim", cfg)
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    where = torch.zeros(2, 1, 8, 8)
    where[..., :4] = 1
    seen: list[torch.Tensor] = []

    def denoise(x_t, t):
        seen.append(x_t.clone())
        return torch.zeros_like(x_t)

    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    out = denoise_loop(
        denoise, torch.randn(2, 1, 8, 8), scheduler, 4, generators, known=(x0, where)
    )
    assert torch.equal(out[..., :4], x0[..., :4])
    errors = [float((x[..., :4] - x0[..., :4]).abs().mean()) for x in seen]
    assert errors[-1] < errors[0] and errors[-1] < 0.5, errors


def test_refine_keeps_the_strokes_exactly(tiny_segmenter):
    rng = np.random.default_rng(0)
    images = tiny_segmenter.prepare(rng.random((3, 40, 30)).astype(np.float32))
    strokes = np.full((40, 30), -1)
    strokes[5:9, 3:25] = 2
    strokes[20:22, :] = 1
    cfg = SamplerConfig(ensemble=2, steps=2)
    result = tiny_segmenter.refine_slice(images, 1, strokes, sampler=cfg)
    painted = strokes >= 0
    assert np.array_equal(result.mask[painted], strokes[painted])
    assert not result.variance[painted].any() and result.mask.shape == (40, 30)
    with pytest.raises(InputError, match="not one of the model's 3 classes"):
        tiny_segmenter.refine_slice(images, 1, np.full((40, 30), 5), sampler=cfg)
