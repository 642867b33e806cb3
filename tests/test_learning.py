"""Learning tests: a tiny diffusion model must really learn a small task."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import dice

from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.segmenter import Segmenter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def segmenter(trained_tiny) -> Segmenter:
    return Segmenter.load(trained_tiny["path"], "cpu")


def _segment(seg: Segmenter, images: np.ndarray, **kw) -> list:
    return list(seg.segment_volume(images, sampler=SamplerConfig(**kw)))


def test_training_loss_falls(trained_tiny):
    losses = trained_tiny["result"].losses
    assert np.mean(losses[-50:]) < 0.5 * np.mean(losses[:20])


def test_tiny_model_learns_ellipses_with_20_dpm_steps(segmenter, trained_tiny):
    results = _segment(segmenter, trained_tiny["images"], steps=20, ensemble=3)
    scores = [dice(r.mask, trained_tiny["labels"][r.index]) for r in results]
    assert np.mean(scores) >= 0.9, scores


def test_samplers_agree(segmenter, trained_tiny):
    images = trained_tiny["images"][:3]
    dpm = _segment(segmenter, images, sampler="dpm++", steps=20, ensemble=1)
    ddim = _segment(segmenter, images, sampler="ddim", steps=50, ensemble=1)
    ddpm = _segment(segmenter, images, sampler="ddpm", steps=1000, ensemble=1)
    for a, b, c in zip(dpm, ddim, ddpm):
        assert dice(a.mask, b.mask) >= 0.95
        assert dice(a.mask, c.mask) >= 0.95


def test_same_seed_same_output_whatever_the_chunk(segmenter, trained_tiny):
    images = trained_tiny["images"][:2]
    runs = [
        _segment(segmenter, images, steps=5, ensemble=3, seed=7, chunk_size=c) for c in (1, 4, 6)
    ]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a.mask, b.mask)
            np.testing.assert_allclose(a.probability, b.probability, atol=1e-4)
    different = _segment(segmenter, images, steps=5, ensemble=3, seed=8)
    assert any(not np.allclose(a.probability, b.probability) for a, b in zip(runs[0], different))


def test_variance_is_zero_where_members_agree_and_positive_where_they_differ(
    segmenter, trained_tiny
):
    (result,) = _segment(segmenter, trained_tiny["images"][:1], steps=10, ensemble=6)
    members = result.members  # (M, 1, H, W) member probabilities
    assert members.shape[:2] == (6, 1)
    decisions = members[:, 0] > 0.5
    agree = decisions.all(0) | (~decisions).all(0)
    differ = ~agree
    assert agree.any() and differ.any()
    assert np.all(result.variance[differ] > 0)
    assert result.variance[differ].mean() > 5 * result.variance[agree].mean()
    np.testing.assert_allclose(result.variance, members[:, 0].var(0), rtol=1e-5, atol=1e-7)
    # The variance concentrates on the boundary, not inside the object.
    truth = trained_tiny["labels"][0].astype(bool)
    from scipy import ndimage

    ring = ndimage.binary_dilation(truth, iterations=2) & ~ndimage.binary_erosion(
        truth, iterations=2
    )
    assert result.variance[ring].mean() > result.variance[~ring].mean()


def test_segmenter_places_slices_as_training_does(segmenter):
    """A non-square slice reaches the network exactly as training placed it (aspect kept,
    centred on the square canvas, padded with the background level)."""
    import torch

    from napari_medsegdiff.data import fit_to_square

    vol = np.random.default_rng(0).random((3, 20, 40)).astype(np.float32)
    images = segmenter.prepare(vol)
    canvas = segmenter.canvas(20, 40)
    assert canvas.shape == (32, 32) and (canvas.height, canvas.width) == (16, 32)
    got = segmenter.model_input(images, [0, 2], canvas)
    want, _ = fit_to_square(images[[0, 2]], np.zeros((2, 20, 40), np.int64), 32)
    assert torch.equal(got.cpu(), want)
    (result,) = segmenter.segment_slices(images, [1], sampler=SamplerConfig(steps=1, ensemble=2))
    assert result.mask.shape == (20, 40) and result.probability.shape[-2:] == (20, 40)


def test_unlabelled_voxels_teach_nothing_and_labelled_ones_do():
    """Codes >= UNLABELLED carry a provisional class for the noised mask and, at weight 0,
    no gradient (diffusion and anchor loss); labelled voxels keep theirs."""
    from types import SimpleNamespace

    import torch

    from napari_medsegdiff.config import preset
    from napari_medsegdiff.diffusion.schedule import NoiseSchedule
    from napari_medsegdiff.objective import UNLABELLED, diffusion_loss, split_labels

    cfg = preset("tiny", version="v2", mask_channels=3)
    size = 16
    labels = torch.zeros(2, size, size, dtype=torch.long)
    labels[:, 4:12, 4:12] = UNLABELLED + 2  # "brain": provisional white matter
    classes, weight = split_labels(labels, 3)
    assert int(classes[0, 6, 6]) == 2 and weight is not None
    assert float(weight[:, 4:12, 4:12].sum()) == 0 and float(weight[:, :4].min()) == 1

    pred = torch.randn(2, 3, size, size, requires_grad=True)
    anchor = torch.randn(2, 3, size, size, requires_grad=True)
    seen = {}

    def net(x_t, t, images):
        seen["x_t"] = x_t
        return SimpleNamespace(prediction=pred, anchor_logits=anchor)

    schedule = NoiseSchedule(cfg)
    t = torch.full((2,), 10, dtype=torch.long)
    noise = torch.randn(2, 3, size, size)
    loss = diffusion_loss(
        net,
        schedule,
        torch.zeros(2, 1, size, size),
        labels,
        t,
        noise,
        mask_channels=3,
        aux_weight=1.0,
    )
    loss.backward()
    inside = (slice(None), slice(None), slice(4, 12), slice(4, 12))
    assert float(pred.grad[inside].abs().max()) == 0.0
    assert float(anchor.grad[inside].abs().max()) == 0.0
    assert float(pred.grad[:, :, :4].abs().min()) > 0
    # The noised mask inside follows the provisional class (white matter channel high).
    assert float(seen["x_t"][0, 2, 6, 6]) > float(seen["x_t"][0, 0, 6, 6])
    with pytest.raises(Exception, match="provisional class"):
        split_labels(torch.full((1, 4, 4), UNLABELLED + 7), 3)
