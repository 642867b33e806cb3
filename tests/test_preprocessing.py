"""Intensity normalisation and resizing to the model size and back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medsegdiff.errors import InputError
from napari_medsegdiff.metrics import dice
from napari_medsegdiff.preprocessing import (
    normalize_intensity,
    resize_probabilities,
    resize_slices,
    square_canvas,
)


def _volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = np.zeros((4, 32, 32), np.float32)
    vol[:, 8:24, 8:24] = rng.normal(300.0, 50.0, (4, 16, 16))
    return vol


def test_percentile_range_and_background():
    vol = _volume()
    out = normalize_intensity(vol)
    assert out.dtype == np.float32 and out.shape == vol.shape
    assert out.min() == -1.0 and out.max() == 1.0
    # percentiles come from the nonzero voxels: the tissue spreads over the whole range
    tissue = out[:, 8:24, 8:24]
    assert tissue.std() > 0.3
    assert np.all(out[vol == 0] == -1.0)


def test_percentile_robust_to_outliers():
    vol = _volume()
    base = normalize_intensity(vol)
    spiked = vol.copy()
    spiked[0, 10, 10] = 1e6
    spiked[1, 12, 12] = -1e6
    out = normalize_intensity(spiked)
    keep = np.ones(vol.shape, bool)
    keep[0, 10, 10] = keep[1, 12, 12] = False
    # a few extreme voxels barely move the mapping of everything else
    assert np.abs(out[keep] - base[keep]).max() < 0.1
    assert out[0, 10, 10] == 1.0 and out[1, 12, 12] == -1.0


def test_nan_inf_become_low_value():
    vol = _volume()
    vol[0, 0, 0] = np.nan
    vol[0, 10, 10] = np.inf
    vol[0, 11, 11] = -np.inf
    out = normalize_intensity(vol)
    assert np.isfinite(out).all()
    assert out[0, 0, 0] == out[0, 10, 10] == out[0, 11, 11] == -1.0
    np.testing.assert_allclose(
        np.delete(out.ravel(), [0, 10 * 32 + 10, 11 * 32 + 11]),
        np.delete(normalize_intensity(_volume()).ravel(), [0, 10 * 32 + 10, 11 * 32 + 11]),
        atol=1e-2,
    )


@pytest.mark.parametrize("value", [0.0, 7.0, np.nan])
def test_constant_volume_gives_zeros(value):
    vol = np.full((3, 5, 5), value, np.float32)
    with np.errstate(all="raise"):
        out = normalize_intensity(vol)
    assert out.dtype == np.float32 and np.all(out == 0.0)


def test_nonzero_constant_foreground_uses_all_voxels():
    vol = np.zeros((2, 6, 6), np.int16)
    vol[:, 2:4, 2:4] = 5
    out = normalize_intensity(vol)
    assert out[0, 0, 0] == -1.0 and out[0, 2, 2] == 1.0


def test_channels_are_normalised_separately():
    a = _volume(1)
    b = _volume(2) * 1000.0 + 5.0
    out = normalize_intensity(np.stack([a, b], axis=-1))
    assert out.shape == (4, 32, 32, 2)
    np.testing.assert_allclose(out[..., 0], normalize_intensity(a))
    np.testing.assert_allclose(out[..., 1], normalize_intensity(b), atol=1e-5)


def test_mask_selects_the_reference_voxels():
    vol = _volume()
    vol[:, 0:4, :] = 5000.0  # bright strip outside the mask
    mask = np.zeros(vol.shape, bool)
    mask[:, 8:24, 8:24] = True
    out = normalize_intensity(vol, mask=mask)
    np.testing.assert_allclose(out[mask], normalize_intensity(_volume())[mask], atol=1e-6)
    assert np.all(out[:, 0:4] == 1.0)


def test_ct_window():
    hu = np.array([[[-1000.0, -160.0, 40.0, 240.0, 3000.0]]], np.float32)
    out = normalize_intensity(hu, method="ct", window=(40, 400))
    np.testing.assert_allclose(out[0, 0], [-1.0, -1.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(normalize_intensity(hu, method="ct"), out)  # default window
    lung = normalize_intensity(hu, method="ct", window=(-600, 1500))
    assert -1.0 < lung[0, 0, 0] < lung[0, 0, 1]


def test_normalize_validation():
    vol = _volume()
    with pytest.raises(InputError, match="normalization"):
        normalize_intensity(vol, method="zscore")
    with pytest.raises(InputError, match="window"):
        normalize_intensity(vol, method="ct", window=(40, 0))
    with pytest.raises(InputError, match="window"):
        normalize_intensity(vol, method="ct", window=(40,))
    with pytest.raises(InputError, match="low/high"):
        normalize_intensity(vol, low=90, high=10)
    with pytest.raises(InputError, match="mask"):
        normalize_intensity(vol, mask=np.ones((2, 2), bool))
    with pytest.raises(InputError, match="volume"):
        normalize_intensity(np.zeros(5))


def test_resize_round_trip_shapes_numpy_and_torch():
    x = np.random.default_rng(0).random((3, 2, 50, 70)).astype(np.float64)
    small = resize_slices(x, (32, 48))
    assert isinstance(small, np.ndarray) and small.dtype == np.float32
    assert small.shape == (3, 2, 32, 48)
    assert resize_slices(small, (50, 70)).shape == (3, 2, 50, 70)
    t = torch.rand(2, 1, 40, 30, dtype=torch.float64)
    out = resize_slices(t, (64, 48))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert tuple(out.shape) == (2, 1, 64, 48)
    same = resize_slices(x, (50, 70))
    np.testing.assert_allclose(same, x.astype(np.float32))


def test_disc_down_and_back_keeps_dice():
    yy, xx = np.mgrid[:300, :200]
    disc = ((yy - 140) ** 2 + (xx - 90) ** 2) < 60**2
    canvas = square_canvas(300, 200, 64)
    small = resize_slices(disc[None, None].astype(np.float32), (canvas.height, canvas.width))
    back = resize_probabilities(small, (300, 200))
    assert dice(back[0, 0] > 0.5, disc) > 0.95


def test_resize_probabilities_multiclass_sums_to_one():
    rng = np.random.default_rng(0)
    p = rng.random((2, 3, 16, 16)).astype(np.float32)
    p /= p.sum(axis=1, keepdims=True)
    up = resize_probabilities(p, (40, 24))
    assert up.shape == (2, 3, 40, 24)
    np.testing.assert_allclose(up.sum(axis=1), 1.0, atol=1e-5)
    assert up.min() >= 0.0 and up.max() <= 1.0
    t = resize_probabilities(torch.from_numpy(p), (40, 24))
    np.testing.assert_allclose(t.numpy(), up, atol=1e-6)


@pytest.mark.parametrize(
    ("hw", "image_size", "content"),
    [
        ((512, 512), 128, (128, 128)),
        ((512, 256), 128, (128, 64)),
        ((256, 512), 128, (64, 128)),
        ((185, 149), 128, (128, 103)),  # the sample's axial slices
        ((1000, 10), 128, (128, 1)),  # never below one pixel
        ((100, 60), 256, (256, 154)),  # upscaling
    ],
)
def test_square_canvas_keeps_aspect_and_centres(hw, image_size, content):
    canvas = square_canvas(*hw, image_size)
    assert canvas.shape == (image_size, image_size)
    assert (canvas.height, canvas.width) == content
    x = torch.rand(2, 3, *content)
    placed = canvas.place(x)
    assert placed.shape == (2, 3, image_size, image_size)
    assert torch.equal(canvas.crop(placed), x)  # crop undoes place
    # centred: the padding on either side differs by at most one pixel
    rows = (placed[0, 0] != -1).any(1).nonzero()[:, 0]
    top, bottom = int(rows[0]), image_size - 1 - int(rows[-1])
    assert abs(top - bottom) <= 1
    assert int((placed == -1).sum()) == 2 * 3 * (image_size**2 - content[0] * content[1])


def test_resize_validation():
    with pytest.raises(InputError, match="x"):
        resize_slices(np.zeros((4, 4)), (2, 2))
    with pytest.raises(InputError, match="size"):
        resize_slices(np.zeros((1, 1, 4, 4)), (0, 2))
    with pytest.raises(InputError, match="image_size"):
        square_canvas(10, 10, 0)
