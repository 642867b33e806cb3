"""Ensemble fusion: mean / vote / STAPLE (checked against SimpleITK) and uncertainty maps."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medsegdiff.ensemble import FUSIONS, Fused, fuse, member_probabilities, staple
from napari_medsegdiff.errors import InputError

sitk = pytest.importorskip("SimpleITK")


def _raters(seed: int, shape: tuple[int, ...], m: int) -> np.ndarray:
    """An ellipse/ellipsoid truth and m raters with systematically different FN/FP rates."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    centre = np.array(shape) / 2
    truth = sum(((g - c) / (0.6 * c)) ** 2 for g, c in zip(grid, centre)) < 1
    out = []
    for j in range(m):
        miss = 0.05 + 0.4 * j / m  # rater j misses more and more foreground
        false = 0.01 + 0.15 * rng.random()
        out.append(np.where(truth, rng.random(shape) > miss, rng.random(shape) < false))
    return np.stack(out)


def _sitk_staple(decisions: np.ndarray):
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1)
    image = f.Execute([sitk.GetImageFromArray(d.astype(np.uint8)) for d in decisions])
    return sitk.GetArrayFromImage(image), np.array(f.GetSensitivity()), np.array(f.GetSpecificity())


@pytest.mark.parametrize(
    ("seed", "shape", "m"),
    [(0, (40, 50), 3), (1, (32, 32), 5), (2, (10, 18, 14), 4), (3, (64, 48), 8)],
)
def test_staple_matches_simpleitk(seed, shape, m):
    decisions = _raters(seed, shape, m)
    w_ref, p_ref, q_ref = _sitk_staple(decisions)
    w, p, q = staple(decisions)
    assert w.shape == shape
    np.testing.assert_allclose(w, w_ref, atol=1e-3)
    np.testing.assert_allclose(p, p_ref, atol=1e-4)
    np.testing.assert_allclose(q, q_ref, atol=1e-4)
    # the systematically worse raters get lower estimated sensitivity
    assert p[0] > p[-1]


def test_staple_is_not_mean_squared():
    decisions = _raters(5, (40, 40), 4)
    w, _, _ = staple(decisions)
    mean = decisions.mean(axis=0)
    assert np.abs(w - mean**2).max() > 0.2
    assert np.abs(w - mean).max() > 0.2


def test_staple_trusts_the_reliable_rater():
    # Two raters: one perfect, one that marks a lot of extra foreground. Where they
    # disagree STAPLE follows the reliable one instead of saying 0.5.
    truth = np.zeros((30, 30), bool)
    truth[10:20, 10:20] = True
    noisy = truth.copy()
    noisy[0:6, :] = True
    w, _, q = staple(np.stack([truth, truth, noisy]))
    assert w[2, 2] < 0.5 and w[15, 15] > 0.99
    assert q[0] > q[2]


def test_staple_degenerate_and_prior():
    empty = np.zeros((3, 5, 5), bool)
    w, p, q = staple(empty)
    assert np.all(w == 0) and np.all(p == 1) and np.all(q == 1)
    w, _, _ = staple(~empty)
    assert np.all(w == 1)
    d = _raters(7, (20, 20), 3)
    low, _, _ = staple(d, prior=0.05)
    high, _, _ = staple(d, prior=0.95)
    assert low.sum() < high.sum()
    with pytest.raises(InputError, match="prior"):
        staple(d, prior=1.5)


def test_member_probabilities():
    x0 = np.array([-1.5, -1.0, 0.0, 1.0, 2.0], np.float32).reshape(1, 1, 1, 5)
    np.testing.assert_allclose(member_probabilities(x0)[0, 0, 0], [0, 0, 0.5, 1, 1])
    x = np.random.default_rng(0).uniform(-1.2, 1.2, (3, 4, 6, 7)).astype(np.float32)
    x[:, :, 0, 0] = -1.0  # all classes zero -> uniform
    p = member_probabilities(x)
    assert p.dtype == np.float32 and p.shape == x.shape
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p[:, :, 0, 0], 0.25)


def test_fuse_binary_methods():
    # 3 members, 1 channel, 1 x 4 image
    probs = np.array(
        [[0.9, 0.9, 0.2, 0.6], [0.8, 0.3, 0.1, 0.6], [0.7, 0.4, 0.3, 0.6]], np.float32
    ).reshape(3, 1, 1, 4)
    mean = fuse(probs, "mean")
    np.testing.assert_allclose(mean.probability[0, 0], [0.8, 1.6 / 3, 0.2, 0.6], atol=1e-6)
    np.testing.assert_array_equal(mean.mask[0], [1, 1, 0, 1])
    vote = fuse(probs, "vote")  # hard: [1,1,0,1],[1,0,0,1],[1,0,0,1]
    np.testing.assert_array_equal(vote.mask[0], [1, 0, 0, 1])
    np.testing.assert_allclose(vote.probability[0, 0], [1, 1 / 3, 0, 1])
    assert fuse(probs, "mean", threshold=0.7).mask[0].tolist() == [1, 0, 0, 0]
    assert mean.mask.dtype == np.uint8 and mean.entropy is not None
    # binary entropy of 0.5 is log 2
    half = fuse(np.full((2, 1, 2, 2), 0.5, np.float32))
    np.testing.assert_allclose(half.entropy, np.log(2), rtol=1e-6)


def test_vote_even_members_needs_more_than_half():
    probs = np.array([1.0, 1.0, 0.0, 0.0], np.float32).reshape(4, 1, 1, 1)
    assert fuse(probs, "vote").mask.item() == 0


def test_fuse_multiclass():
    # 3 members, 3 classes, 1 x 3 image: pixel 0 all say class 2; pixel 1 votes 1,1,2;
    # pixel 2 is a tie 0 / 1 / 2 -> lowest label.
    onehot = np.eye(3, dtype=np.float32)
    labels = np.array([[2, 1, 0], [2, 1, 1], [2, 2, 2]])
    probs = onehot[labels].transpose(0, 2, 1)[:, :, None, :]  # [M, K, 1, 3]
    vote = fuse(probs, "vote")
    np.testing.assert_array_equal(vote.mask[0], [2, 1, 0])
    np.testing.assert_allclose(vote.probability.sum(axis=0), 1.0)
    mean = fuse(probs, "mean")
    np.testing.assert_array_equal(mean.mask[0], [2, 1, 0])
    np.testing.assert_allclose(mean.entropy[0, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(mean.entropy[0, 2], np.log(3), rtol=1e-6)
    assert mean.variance[0, 0] == 0 and mean.variance[0, 2] > mean.variance[0, 1] > 0


def test_fuse_multiclass_staple_per_class():
    rng = np.random.default_rng(3)
    truth = np.zeros((24, 24), int)
    truth[4:12, 4:12] = 1
    truth[14:22, 10:20] = 2
    members = []
    for j in range(5):
        noisy = truth.copy()
        flip = rng.random(truth.shape) < 0.05 + 0.05 * j
        noisy[flip] = rng.integers(0, 3, flip.sum())
        members.append(np.eye(3, dtype=np.float32)[noisy].transpose(2, 0, 1))
    fused = fuse(np.stack(members), "staple")
    assert fused.sensitivity.shape == (3, 5) and fused.specificity.shape == (3, 5)
    np.testing.assert_allclose(fused.probability.sum(axis=0), 1.0, atol=1e-5)
    assert (fused.mask == truth).mean() > 0.98
    # each class row equals binary STAPLE of that class's one-vs-rest decisions
    hard = np.stack(members).argmax(axis=1)
    _, p1, _ = staple(hard == 1)
    np.testing.assert_allclose(fused.sensitivity[1], p1)


def test_fuse_binary_staple_and_variance():
    decisions = _raters(11, (30, 30), 5)
    probs = decisions.astype(np.float32)[:, None]
    fused = fuse(probs, "staple")
    w_ref, p_ref, _ = _sitk_staple(decisions)
    np.testing.assert_allclose(fused.probability[0], w_ref, atol=1e-3)
    np.testing.assert_allclose(fused.sensitivity[0], p_ref, atol=1e-4)
    np.testing.assert_array_equal(fused.mask, (w_ref > 0.5).astype(np.uint8))
    agree = decisions.all(axis=0) | ~decisions.any(axis=0)
    assert np.all(fused.variance[agree] == 0)
    assert np.all(fused.variance[~agree] > 0)


@pytest.mark.parametrize("method", FUSIONS)
def test_fuse_shapes_and_single_member(method):
    probs = np.random.default_rng(0).random((1, 1, 5, 6)).astype(np.float32)
    out = fuse(probs, method)
    assert isinstance(out, Fused)
    assert out.mask.shape == (5, 6) and out.probability.shape == (1, 5, 6)
    assert out.variance.shape == (5, 6) and np.all(out.variance == 0)
    assert out.probability.dtype == np.float32 and out.variance.dtype == np.float32


def test_fuse_validation():
    probs = np.zeros((2, 1, 4, 4), np.float32)
    with pytest.raises(InputError, match="fusion: unknown fusion 'x'; choose mean, vote, staple"):
        fuse(probs, "x")
    with pytest.raises(InputError, match="at least one ensemble member"):
        fuse(np.zeros((0, 1, 4, 4)))
    with pytest.raises(InputError, match="probs"):
        fuse(np.zeros((4, 4)))
    with pytest.raises(InputError, match="threshold"):
        fuse(probs, threshold=2.0)
