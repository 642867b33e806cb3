"""MedSegDiff V1/V2 networks: shapes, sizes, condition reuse, FF-Parser, U-SA, losses."""

from __future__ import annotations

import math

import pytest
import torch

from napari_medsegdiff.config import preset
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.model import Condition, MedSegDiff, ModelOutput, anchor_loss, build_model
from napari_medsegdiff.model.conditioning import LearnableGaussian
from napari_medsegdiff.model.layers import FFParser, num_groups

VERSIONS = ("v1", "v2")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These networks are small: one thread is as fast, and immune to a busy neighbour core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(version: str = "v2", name: str = "tiny", seed: int = 0, **kw) -> MedSegDiff:
    torch.manual_seed(seed)
    return build_model(preset(name, version=version, **kw)).eval()


def _randomise_output(model: MedSegDiff) -> None:
    """The output conv is zero-initialised; give it weights so outputs depend on inputs."""
    torch.nn.init.normal_(model.diffusion.out[-1].weight, std=0.1)


def _run(model: MedSegDiff, b: int, h: int, w: int) -> ModelOutput:
    cfg = model.config
    x = torch.randn(b, cfg.mask_channels, h, w)
    img = torch.randn(b, cfg.in_channels, h, w)
    t = torch.randint(0, cfg.train_timesteps, (b,))
    with torch.no_grad():
        return model(x, t, img)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("name", "h", "w"), [("tiny", 32, 32), ("lite", 32, 48), ("base", 64, 32)])
def test_presets_build_and_forward(name: str, h: int, w: int, version: str) -> None:
    model = _model(version, name)
    out = _run(model, 1, h, w)
    assert out.prediction.shape == (1, 1, h, w)
    assert torch.isfinite(out.prediction).all()
    if version == "v2":
        assert out.anchor_logits is not None and out.anchor_logits.shape == (1, 1, h, w)
    else:
        assert out.anchor_logits is None


@pytest.mark.slow
def test_plus_preset_builds_and_forwards() -> None:
    model = _model("v2", "plus")
    n = sum(p.numel() for p in model.parameters())
    assert 300e6 < n < 600e6
    out = _run(model, 1, 32, 32)
    assert out.prediction.shape == (1, 1, 32, 32)
    assert torch.isfinite(out.prediction).all()


def test_lite_is_small() -> None:
    model = _model("v2", "lite")
    n = sum(p.numel() for p in model.parameters())
    assert n * 4 < 25e6  # float32 weights ship in the repo
    mask = sum(p.numel() for p in model.diffusion.parameters())
    assert mask < n  # capacity sits in the condition branch


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("h", "w"), [(48, 80), (80, 48), (16, 16), (64, 64)])
def test_non_square_and_non_preset_sizes(version: str, h: int, w: int) -> None:
    model = _model(version)
    _randomise_output(model)
    out = _run(model, 2, h, w)
    assert out.prediction.shape == (2, 1, h, w)
    assert torch.isfinite(out.prediction).all()


@pytest.mark.parametrize("version", VERSIONS)
def test_multiclass_and_multichannel(version: str) -> None:
    model = _model(version, in_channels=4, mask_channels=3)
    out = _run(model, 2, 32, 48)
    assert out.prediction.shape == (2, 3, 32, 48)
    if version == "v2":
        assert out.anchor_logits.shape == (2, 3, 32, 48)


@pytest.mark.parametrize("version", VERSIONS)
def test_denoise_equals_forward(version: str) -> None:
    model = _model(version)
    _randomise_output(model)
    x, img = torch.randn(3, 1, 48, 32), torch.randn(3, 1, 48, 32)
    t = torch.tensor([0, 500, 999])
    with torch.no_grad():
        full = model(x, t, img).prediction
        split = model.denoise(x, t, model.encode_condition(img))
        float_t = model.denoise(x, t.float(), model.encode_condition(img))
    torch.testing.assert_close(split, full)
    torch.testing.assert_close(float_t, full)


@pytest.mark.parametrize("version", VERSIONS)
def test_condition_computed_once_and_reused(version: str) -> None:
    model = _model(version)
    _randomise_output(model)
    img = torch.randn(2, 1, 32, 32)
    calls = []
    model.condition.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        cond = model.encode_condition(img)
        before = {k: v.clone() for k, v in cond.tensors.items()}
        outs = {}
        for step in (999, 500, 10):
            x = torch.randn(2, 1, 32, 32)
            outs[step] = model.denoise(x, torch.full((2,), step), cond)
            ref = model(x, torch.full((2,), step), img).prediction
            torch.testing.assert_close(outs[step], ref)
    assert len(calls) == 1 + 3  # one encode, plus one per reference forward
    for k, v in cond.tensors.items():  # denoising never changes the condition
        torch.testing.assert_close(v, before[k])
    assert not torch.allclose(outs[999], outs[10])


def test_condition_index_repeats_members() -> None:
    model = _model("v2")
    _randomise_output(model)
    img = torch.randn(2, 1, 32, 32)
    members = 3
    with torch.no_grad():
        cond = model.encode_condition(img)
        idx = torch.arange(2).repeat_interleave(members)
        rep = cond.index(idx)
        assert isinstance(rep, Condition) and rep.batch_size == 6
        x = torch.randn(6, 1, 32, 32)
        t = torch.full((6,), 300)
        out = model.denoise(x, t, rep)
        ref = model(x, t, img.repeat_interleave(members, 0)).prediction
    torch.testing.assert_close(out, ref)
    moved = cond.to("cpu", torch.float64)
    assert moved["fuse0"].dtype == torch.float64 and moved.batch_size == 2


@pytest.mark.parametrize("version", VERSIONS)
def test_condition_independent_of_noise(version: str) -> None:
    """Gradients of the condition w.r.t. x_t are impossible: it never sees x_t or t."""
    model = _model(version)
    img = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        a = model.encode_condition(img)
        b = model.encode_condition(img.clone())
    for k in a.tensors:
        torch.testing.assert_close(a[k], b[k])
    import inspect

    assert list(inspect.signature(model.encode_condition).parameters) == ["image"]


@pytest.mark.parametrize(("h", "w"), [(32, 32), (48, 80), (128, 64), (8, 8)])
def test_ff_parser_identity_at_init(h: int, w: int) -> None:
    ffp = FFParser(4, grid=32)
    x = torch.randn(2, 4, h, w)
    torch.testing.assert_close(ffp(x), x, atol=1e-5, rtol=1e-5)


def test_ff_parser_acts_on_frequencies_at_any_size() -> None:
    """A low-pass learnt on a 32-grid passes 0.1 cycles/px and blocks 0.4 at every size."""
    ffp = FFParser(1, grid=32)
    with torch.no_grad():
        fy = (torch.arange(32) - 16).float() / 32
        fx = torch.arange(17).float() / 32
        r = torch.sqrt(fy[:, None] ** 2 + fx[None] ** 2)
        ffp.filter.weight[0, 0] = (r < 0.25).float()
    for h, w in [(32, 32), (40, 80), (96, 64)]:
        yy = torch.arange(h).float()[:, None].expand(h, w)
        low = torch.cos(2 * math.pi * 0.1 * yy)[None, None]
        high = torch.cos(2 * math.pi * 0.4 * yy)[None, None]
        with torch.no_grad():
            out_low, out_high = ffp(low), ffp(high)
        assert (out_low - low).abs().mean() < 0.1 * low.abs().mean()
        assert out_high.abs().mean() < 0.1 * high.abs().mean()


def test_ff_parser_gets_gradients() -> None:
    model = _model("v1")
    _randomise_output(model)
    cfg = model.config
    out = model(torch.randn(2, 1, 32, 32), torch.tensor([5, 700]), torch.randn(2, 1, 32, 32))
    out.prediction.square().mean().backward()
    mask_ffp = model.diffusion.fusion[0].ff_parser.filter.weight
    image_ffp = model.condition.features[0].ff_parser.filter.weight
    assert mask_ffp.grad is not None and mask_ffp.grad.abs().sum() > 0
    assert image_ffp.grad is not None and image_ffp.grad.abs().sum() > 0
    assert cfg.ff_parser


def test_learnable_gaussian_sigma_gets_gradients() -> None:
    model = _model("v2")
    _randomise_output(model)
    img = torch.randn(2, 1, 32, 32)
    out = model(torch.randn(2, 1, 32, 32), torch.tensor([1, 900]), img)
    loss = out.prediction.square().mean() + anchor_loss(out.anchor_logits, torch.zeros(2, 32, 32))
    loss.backward()
    for usa in model.condition.usa:
        g = usa.gauss.log_sigma.grad
        assert g is not None and torch.isfinite(g) and g.abs() > 0
    # and the blur itself is differentiable in sigma
    blur = LearnableGaussian(sigma=1.0)
    p = torch.zeros(1, 1, 16, 16)
    p[..., 8, 8] = 1.0
    blur(p)[..., 8, 8].backward()
    assert blur.log_sigma.grad < 0  # wider kernel -> lower peak


def test_ss_former_and_condition_branch_get_gradients() -> None:
    model = _model("v2")
    _randomise_output(model)
    # SS-Former attention outputs are zero-initialised; open them so both directions act
    for layer in model.diffusion.ss_former.layers:
        for attn in (layer.cond_from_noise, layer.noise_from_cond):
            torch.nn.init.normal_(attn.out.weight, std=0.05)
    out = model(torch.randn(2, 1, 32, 32), torch.tensor([3, 600]), torch.randn(2, 1, 32, 32))
    out.prediction.square().mean().backward()
    layer = model.diffusion.ss_former.layers[0]
    for p in (
        layer.cond_from_noise.q.weight,
        layer.noise_from_cond.q.weight,
        layer.nbp.attentive.weight,
        model.condition.spectral.nbp.attentive.weight,
    ):
        assert p.grad is not None and p.grad.abs().sum() > 0
    cond_params = list(model.condition_parameters())
    assert cond_params and all(any(p is q for q in model.parameters()) for p in cond_params)
    assert not any(p is q for p in cond_params for q in model.diffusion.parameters())


@pytest.mark.parametrize("k", [1, 3])
def test_anchor_loss_lower_when_logits_match(k: int) -> None:
    torch.manual_seed(0)
    target = torch.randint(0, max(k, 2), (2, 16, 16))
    onehot = torch.nn.functional.one_hot(target, max(k, 2)).permute(0, 3, 1, 2).float()
    good = (onehot[:, 1:] if k == 1 else onehot) * 20 - 10
    random = torch.randn(2, k, 16, 16)
    loss_good, loss_random = anchor_loss(good, target), anchor_loss(random, target)
    assert loss_good < 0.05 < loss_random
    with pytest.raises(InputError):
        anchor_loss(random, target[:, :8])


def test_tiny_v2_overfits_one_batch() -> None:
    torch.manual_seed(0)
    model = build_model(preset("tiny", version="v2")).train()
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    target = torch.stack(
        [((yy - 12) ** 2 + (xx - 16) ** 2 < 60), ((yy - 20) ** 2 + (xx - 14) ** 2 < 40)]
    )
    image = target[:, None].float() * 2 - 1 + 0.2 * torch.randn(2, 1, 32, 32)
    x0 = target[:, None].float() * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([100, 400])
    abar = torch.cos(t.float() / 1000 * math.pi / 2)[:, None, None, None] ** 2
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(x_t, t, image)
        loss = (out.prediction - noise).square().mean() + anchor_loss(
            out.anchor_logits, target.long()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_inputs_raise_clear_errors() -> None:
    model = _model("v2")
    with pytest.raises(InputError, match=r"model expects 1 image channel\(s\) .*, got 3"):
        model.encode_condition(torch.randn(1, 3, 32, 32))
    with pytest.raises(InputError, match="multiples of 4"):
        model.encode_condition(torch.randn(1, 1, 33, 32))
    lite = _model("v1", "lite")
    with pytest.raises(InputError, match=r"multiples of 8 .* got 50x64"):
        lite(torch.randn(1, 1, 50, 64), torch.tensor([3]), torch.randn(1, 1, 50, 64))
    cond = model.encode_condition(torch.randn(2, 1, 32, 32))
    with pytest.raises(InputError, match="batch"):
        model.denoise(torch.randn(3, 1, 32, 32), torch.tensor([1, 2, 3]), cond)
    with pytest.raises(InputError, match="computed at"):
        model.denoise(torch.randn(2, 1, 32, 48), torch.tensor([1, 2]), cond)
    with pytest.raises(InputError, match="x_t must be"):
        model.denoise(torch.randn(2, 2, 32, 32), torch.tensor([1, 2]), cond)


def test_group_norm_groups_divide_channels() -> None:
    for ch in (1, 3, 8, 16, 24, 48, 128, 512):
        g = num_groups(ch)
        assert ch % g == 0
    assert num_groups(8) == 2 and num_groups(128) == 32


@pytest.mark.parametrize("version", VERSIONS)
def test_autocast_and_bfloat16(version: str) -> None:
    model = _model(version)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 1, 32, 48), torch.tensor([1, 2]), torch.randn(2, 1, 32, 48))
    out.prediction.float().square().mean().backward()
    half = _model(version).to(torch.bfloat16)
    with torch.no_grad():
        cond = half.encode_condition(torch.randn(1, 1, 32, 32, dtype=torch.bfloat16))
        pred = half.denoise(
            torch.randn(1, 1, 32, 32, dtype=torch.bfloat16), torch.tensor([7]), cond
        )
    assert pred.dtype == torch.bfloat16 and torch.isfinite(pred.float()).all()


@pytest.mark.parametrize("layers", [0, 2])
def test_ss_former_depth(layers: int) -> None:
    model = _model("v2", ss_former_layers=layers)
    assert (model.diffusion.ss_former is None) == (layers == 0)
    out = _run(model, 1, 32, 32)
    assert out.prediction.shape == (1, 1, 32, 32)
    # every parameter takes part (DistributedDataParallel needs no unused parameters)
    model.train()
    _randomise_output(model)
    img = torch.randn(1, 1, 32, 32)
    out = model(torch.randn(1, 1, 32, 32), torch.tensor([9]), img)
    (out.prediction.sum() + out.anchor_logits.sum()).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused
