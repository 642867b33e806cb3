"""2.5-D context: neighbours stacked as channels, fed in training and in segmentation;
slices without tissue are skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import dice

from napari_medsegdiff.checkpoints import save_model
from napari_medsegdiff.config import SamplerConfig, TrainConfig, preset
from napari_medsegdiff.data import slices_from_volume
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.model import build_model
from napari_medsegdiff.preprocessing import context_indices, with_context
from napari_medsegdiff.segmenter import Segmenter
from napari_medsegdiff.training import train
from napari_medsegdiff.warm_start import add_context


def test_context_indices_mirror_at_the_ends():
    assert context_indices(0, 5, 2) == [2, 1, 0, 1, 2]
    assert context_indices(4, 5, 1) == [3, 4, 3]
    assert context_indices(2, 5, 0) == [2]
    assert context_indices(0, 1, 2) == [0, 0, 0, 0, 0]  # a single image is its own neighbour


def test_with_context_stacks_neighbours_channel_by_channel():
    z = np.arange(4, dtype=np.float32)
    images = np.stack([z * 10, z * 10 + 1], axis=1)[..., None, None]  # (4, 2, 1, 1)
    out = with_context(images, [0, 2], 1)
    assert out.shape == (2, 6, 1, 1)
    assert out[:, :, 0, 0].tolist() == [[10, 11, 0, 1, 10, 11], [10, 11, 20, 21, 30, 31]]
    assert np.array_equal(with_context(images, [3], 0), images[[3]])


def test_config_records_context_and_rejects_nonsense():
    cfg = preset("tiny", context=2, in_channels=2)
    assert cfg.input_channels == 10
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="context"):
        preset("tiny", context=9)


def test_add_context_starts_as_the_same_function():
    torch.manual_seed(0)
    cfg = preset("tiny", version="v2", mask_channels=3)
    net = build_model(cfg).eval()
    state, cfg3 = add_context(net.state_dict(), cfg, 1)
    wide = build_model(cfg3).eval()
    wide.load_state_dict(state)
    images = torch.randn(4, 1, 32, 32)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([900, 100])
    with torch.no_grad():
        flat = net.denoise(x, t, net.encode_condition(images[[1, 2]]))
        ctx = wide.denoise(x, t, wide.encode_condition(with_context(images, [1, 2], 1)))
    assert cfg3.context == 1 and cfg3.input_channels == 3
    assert torch.allclose(flat, ctx)


def _cylinders(n_volumes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Volumes (n*6, 32, 32): an elliptic cylinder along z; every other slice shows no
    image of it (flat background), yet it is labelled there: only the neighbours tell."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    images, labels = [], []
    for _ in range(n_volumes):
        cy, cx = rng.uniform(11, 21, 2)
        ry, rx = rng.uniform(5, 9, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        for z in range(6):
            shown = inside if z % 2 == 0 else np.zeros_like(inside)
            images.append(np.where(shown, 0.9, 0.3) + 0.05 * rng.standard_normal((32, 32)))
            labels.append(inside.astype(np.int64))
    return np.asarray(images, np.float32), np.asarray(labels)


def test_a_2_5d_model_learns_what_only_the_neighbours_show(tmp_path):
    """Trained on context stacks, segmenting through Segmenter: the blank slices get the
    cylinder, which a 2-D model cannot see."""
    cfg = preset("tiny", version="v2", context=1)
    image, labels = _cylinders(24, seed=1)
    sets = [
        slices_from_volume(image[i : i + 6], labels[i : i + 6], 32, range(6), context=1)
        for i in range(0, len(image), 6)
    ]
    data = type(sets[0]).concat(sets)
    assert data.images.shape[1] == 3
    tcfg = TrainConfig(
        steps=400, batch_size=16, lr=3e-3, ema_decay=0.99, val_every=10_000,
        save_every=10_000, seed=0,
    )  # fmt: skip
    result = train(cfg, tcfg, data, tmp_path / "run", device="cpu")
    seg = Segmenter.load(result.best, "cpu")
    test_image, test_labels = _cylinders(1, seed=7)
    results = list(seg.segment_volume(test_image, sampler=SamplerConfig(steps=5, ensemble=3)))
    blank = [r for r in results if r.index % 2 == 1 and r.index < 5]  # two neighbours shown
    scores = [dice(r.mask, test_labels[r.index]) for r in blank]
    assert min(scores) > 0.8, scores


def test_slices_without_tissue_are_skipped_in_order(trained_tiny, tmp_path):
    seg = Segmenter.load(trained_tiny["path"], "cpu")
    images = np.clip(trained_tiny["images"][:3], 0.0, None)  # an MR-like scan: air is 0
    volume = np.zeros((5, 32, 32), np.float32)
    volume[[1, 3, 4]] = images
    results = list(seg.segment_volume(volume, sampler=SamplerConfig(steps=3, ensemble=2)))
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.skipped for r in results] == [True, False, True, False, False]
    for r in results[0], results[2]:
        assert not r.mask.any() and not r.variance.any()
    assert dice(results[1].mask, trained_tiny["labels"][0]) > 0.8
    every = seg.segment_volume(volume, sampler=SamplerConfig(steps=3, ensemble=2, skip_empty=False))
    assert not any(r.skipped for r in every)


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_a_blank_or_constant_scan_is_background_not_sampled(trained_tiny, value):
    # normalisation maps a constant volume to mid-grey; without a contrast test the model
    # would be asked to find tissue in it (the shipped one labelled 97 % of a blank slice)
    seg = Segmenter.load(trained_tiny["path"], "cpu")
    results = list(seg.segment_volume(np.full((3, 32, 32), value, np.float32)))
    assert [r.skipped for r in results] == [True, True, True]
    assert not any(r.mask.any() or r.variance.any() for r in results)


def test_a_context_model_folder_round_trips(tmp_path, rng):
    cfg = preset("tiny", context=2)
    save_model(tmp_path / "m", build_model(cfg).state_dict(), cfg)
    seg = Segmenter.load(tmp_path / "m", "cpu")
    assert seg.config.context == 2
    one = rng.random((1, 32, 32)).astype(np.float32)
    (r,) = seg.segment_volume(one, sampler=SamplerConfig(steps=1, ensemble=1))
    assert r.mask.shape == (32, 32) and not r.skipped
