"""How the image conditions the mask branch (MedSegDiff V1 and V2).

* V1 dynamic conditional encoding with FF-Parser: :class:`ConditionFeature` (image side,
  computed once per slice) and :class:`DynamicFusion` (mask side, every step).
* V2 anchor condition: :class:`UncertainSpatialAttention` (U-SA) with a
  :class:`LearnableGaussian` kernel.
* V2 semantic condition: :class:`SSFormer`, two-way cross-attention between the noise and
  condition embeddings in frequency space, with the :class:`NeuralBandPass` (NBP) filter.
* The image branches: :class:`ImageEncoder` (V1) and :class:`ConditionUNet` (V2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_medsegdiff.model.layers import (
    AttentionBlock,
    Downsample,
    FFParser,
    ResBlock,
    SpectralWeight,
    Upsample,
    group_norm,
    layer_norm,
    zero_module,
)

# --------------------------------------------------------------------------- V1


class ConditionFeature(nn.Module):
    """Image side of dynamic conditional encoding: c [B, Cc, h, w] -> LN(c') * c'
    [B, C, h, w], with c' = FF-Parser(1x1 conv(c)). Depends on the image only."""

    def __init__(self, cond_ch: int, ch: int, grid: int, ff_parser: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cond_ch, ch, 1)
        self.ff_parser = FFParser(ch, grid) if ff_parser else nn.Identity()
        self.norm = layer_norm(ch)

    def forward(self, c: Tensor) -> Tensor:
        c = self.ff_parser(self.proj(c))
        return self.norm(c) * c


class DynamicFusion(nn.Module):
    """Mask side: m' = FF-Parser(m); m' + LN(m') * a, where a = LN(c') * c' comes from
    :class:`ConditionFeature`. [B, C, h, w] x2 -> [B, C, h, w]."""

    def __init__(self, ch: int, grid: int, ff_parser: bool) -> None:
        super().__init__()
        self.ff_parser = FFParser(ch, grid) if ff_parser else nn.Identity()
        self.norm = layer_norm(ch)

    def forward(self, h: Tensor, a: Tensor) -> Tensor:
        h = self.ff_parser(h)
        return h + self.norm(h) * a


# --------------------------------------------------------------------------- V2 anchor


def foreground_probability(logits: Tensor) -> Tensor:
    """Anchor logits [B, K, H, W] -> foreground probability [B, 1, H, W]
    (sigmoid for K = 1, else 1 - softmax background)."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return 1.0 - torch.softmax(logits, dim=1)[:, :1]


class LearnableGaussian(nn.Module):
    """Separable Gaussian blur with a learnable sigma (pixels): [B, 1, H, W] -> same."""

    def __init__(self, sigma: float = 1.0, radius: int = 4) -> None:
        super().__init__()
        self.radius = radius
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp().clamp(0.25, 2.0 * self.radius)

    def kernel(self) -> Tensor:
        x = torch.arange(-self.radius, self.radius + 1, device=self.log_sigma.device)
        k = torch.exp(-(x.float() ** 2) / (2 * self.sigma**2))
        return k / k.sum()

    def forward(self, p: Tensor) -> Tensor:
        k = self.kernel().to(p.dtype)
        r = self.radius
        p = F.pad(p, (r, r, r, r), mode="replicate")
        p = F.conv2d(p, k.view(1, 1, 1, -1))
        return F.conv2d(p, k.view(1, 1, -1, 1))


class UncertainSpatialAttention(nn.Module):
    """U-SA gate from the anchor: p [B, 1, H, W] -> sigmoid(w * max(G_sigma * p_l, p_l) + b)
    [B, C, H/f, W/f], p_l = p average-pooled by f. The mask branch applies f * (1 + gate)."""

    def __init__(self, ch: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.gauss = LearnableGaussian()
        self.scale = nn.Parameter(torch.full((ch, 1, 1), 4.0))
        self.bias = nn.Parameter(torch.full((ch, 1, 1), -2.0))

    def forward(self, p: Tensor) -> Tensor:
        if self.factor > 1:
            p = F.avg_pool2d(p, self.factor)
        u = torch.maximum(self.gauss(p), p)  # relax: uncertain borders widen the anchor
        return torch.sigmoid(u * self.scale + self.bias)


# --------------------------------------------------------------------------- V2 semantic


def frequency_grid(height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Frequencies (cycles/pixel) of the rfft2 bins: fy [H, 1], fx [1, W//2+1]."""
    fy = torch.fft.fftfreq(height, device=device)[:, None]
    fx = torch.fft.rfftfreq(width, device=device)[None, :]
    return fy, fx


def frequency_positions(height: int, width: int, device: torch.device, n: int = 4) -> Tensor:
    """Fixed Fourier features of each rfft2 bin's frequency: [H * (W//2+1), 4n + 3].
    Defined on normalised frequency, so they mean the same at every input size."""
    fy, fx = frequency_grid(height, width, device)
    fy, fx = torch.broadcast_tensors(fy, fx)
    k = torch.arange(1, n + 1, device=device, dtype=torch.float32)
    feats = [fy[..., None], fx[..., None], torch.sqrt(fy**2 + fx**2)[..., None]]
    for f in (fy, fx):
        arg = 2 * math.pi * f[..., None] * k
        feats += [torch.sin(arg), torch.cos(arg)]
    return torch.cat(feats, dim=-1).flatten(0, 1)


def to_tokens(spec: Tensor) -> Tensor:
    """Complex spectrum [N, C, H, Wf] -> real tokens [N, H*Wf, 2C] (real, imag stacked)."""
    return torch.cat([spec.real, spec.imag], dim=1).flatten(2).transpose(1, 2)


def tokens_to_spatial(tokens: Tensor, height: int, width: int) -> Tensor:
    """Real tokens [N, H*Wf, 2C] -> irfft2 -> [N, C, H, W]."""
    n, _, c2 = tokens.shape
    x = tokens.float().transpose(1, 2).reshape(n, c2, height, width // 2 + 1)
    spec = torch.complex(x[:, : c2 // 2], x[:, c2 // 2 :])
    return torch.fft.irfft2(spec, s=(height, width), norm="ortho")


class NeuralBandPass(nn.Module):
    """NBP filter: X(f) * A(f) * sigmoid(s(|f| - lo)) * sigmoid(s(hi - |f|)).

    A is a learnable per-channel complex map over frequency bins (resampled to any size);
    the band edges lo/hi are per channel and, with ``emb_dim``, predicted from the time
    embedding (timestep-adaptive). Starts as (nearly) all-pass. [N, C, H, Wf] -> same.
    """

    sharpness = 20.0

    def __init__(self, ch: int, grid: int, emb_dim: int | None = None) -> None:
        super().__init__()
        self.attentive = SpectralWeight(ch, grid)
        edges = torch.cat([torch.full((ch,), -0.25), torch.full((ch,), 1.0)])
        if emb_dim:
            self.edges = nn.Linear(emb_dim, 2 * ch)
            nn.init.zeros_(self.edges.weight)
            with torch.no_grad():
                self.edges.bias.copy_(edges)
        else:
            self.edges_static = nn.Parameter(edges)

    def forward(self, spec: Tensor, width: int, emb: Tensor | None = None) -> Tensor:
        height = spec.shape[-2]
        if hasattr(self, "edges"):
            edges = self.edges(F.silu(emb)) if emb is not None else self.edges.bias[None]
            edges = edges.float()  # [N, 2C]
        else:
            edges = self.edges_static.float()[None]
        lo, hi = edges[:, :, None, None].chunk(2, dim=1)
        fy, fx = frequency_grid(height, width, spec.device)
        r = torch.sqrt(fy**2 + fx**2)
        band = torch.sigmoid(self.sharpness * (r - lo)) * torch.sigmoid(self.sharpness * (hi - r))
        return spec * self.attentive.complex_weight(height, width) * band


class SpectralCrossAttention(nn.Module):
    """Multi-head cross-attention between frequency tokens: queries from x [N, T, 2C],
    keys/values from y [N, S, 2C], each with fixed frequency positions [T|S, P] -> [N, T, 2C]
    (an update of x's spectrum; zero at init).

    Each rFFT bin is a token whose features are its real and imaginary parts stacked over
    channels (2C), so projections are real-linear maps of the complex spectrum; the softmax
    runs over frequency bins. Fixed Fourier features of the bin frequency are added to
    queries and keys, so a bin knows which frequency it is at any input size."""

    def __init__(self, ch: int, heads: int, pos_dim: int) -> None:
        super().__init__()
        self.heads = heads if ch % heads == 0 else 1
        self.norm_q = nn.LayerNorm(2 * ch)
        self.norm_kv = nn.LayerNorm(2 * ch)
        self.q = nn.Linear(2 * ch, ch)
        self.kv = nn.Linear(2 * ch, 2 * ch)
        self.pos_q = nn.Linear(pos_dim, ch)
        self.pos_k = nn.Linear(pos_dim, ch)
        self.out = zero_module(nn.Linear(ch, 2 * ch))

    def forward(self, x: Tensor, y: Tensor, pos_x: Tensor, pos_y: Tensor) -> Tensor:
        n, t, _ = x.shape
        dtype = self.q.weight.dtype  # tokens come from float32 FFTs
        x, y, pos_x, pos_y = (z.to(dtype) for z in (x, y, pos_x, pos_y))
        q = self.q(self.norm_q(x)) + self.pos_q(pos_x)
        k, v = self.kv(self.norm_kv(y)).chunk(2, dim=-1)
        k = k + self.pos_k(pos_y)
        q, k, v = (
            z.reshape(n, -1, self.heads, z.shape[-1] // self.heads).transpose(1, 2)
            for z in (q, k, v)
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, -1)
        return self.out(out)


class SSFormerLayer(nn.Module):
    """One SS-Former block at the bottleneck: NBP-filter the noise spectrum (time-adaptive),
    update the condition tokens from the noise (cond <- noise), then the noise embedding
    from the condition (noise <- cond), back with irfft2 as a residual, then a 1x1 FFN.

    e [N, C, h, w], cond tokens [N, h*(w//2+1), 2C], emb [N, E] -> (e', cond tokens')."""

    def __init__(self, ch: int, heads: int, grid: int, emb_dim: int, pos_dim: int) -> None:
        super().__init__()
        self.nbp = NeuralBandPass(ch, grid, emb_dim)
        self.cond_from_noise = SpectralCrossAttention(ch, heads, pos_dim)
        self.noise_from_cond = SpectralCrossAttention(ch, heads, pos_dim)
        self.ffn = nn.Sequential(
            group_norm(ch),
            nn.Conv2d(ch, 2 * ch, 1),
            nn.SiLU(),
            zero_module(nn.Conv2d(2 * ch, ch, 1)),
        )

    def forward(self, e: Tensor, c_tok: Tensor, emb: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        h, w = e.shape[-2:]
        e_tok = to_tokens(self.nbp(torch.fft.rfft2(e.float(), norm="ortho"), w, emb))
        c_tok = c_tok + self.cond_from_noise(c_tok, e_tok, pos, pos)
        delta = self.noise_from_cond(e_tok, c_tok, pos, pos)
        e = e + tokens_to_spatial(delta, h, w).to(e.dtype)
        return e + self.ffn(e), c_tok


class SSFormer(nn.Module):
    """Spectrum-Space Transformer: a chain of :class:`SSFormerLayer` blocks."""

    pos_freqs = 4

    def __init__(self, ch: int, heads: int, grid: int, emb_dim: int, layers: int) -> None:
        super().__init__()
        pos_dim = 4 * self.pos_freqs + 3
        self.layers = nn.ModuleList(
            SSFormerLayer(ch, heads, grid, emb_dim, pos_dim) for _ in range(layers)
        )

    def forward(self, e: Tensor, c_tok: Tensor, emb: Tensor) -> Tensor:
        pos = frequency_positions(*e.shape[-2:], e.device, self.pos_freqs).to(c_tok.dtype)
        for layer in self.layers:
            e, c_tok = layer(e, c_tok.float(), emb, pos)
        return e


class SpectralCondition(nn.Module):
    """Condition side of the SS-Former: deepest image features [B, Cc, h, w] -> 1x1 conv ->
    rfft2 -> static NBP filter -> tokens [B, h*(w//2+1), 2C]. Depends on the image only."""

    def __init__(self, cond_ch: int, ch: int, grid: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cond_ch, ch, 1)
        self.nbp = NeuralBandPass(ch, grid)

    def forward(self, c: Tensor) -> Tensor:
        c = self.proj(c)
        return to_tokens(self.nbp(torch.fft.rfft2(c.float(), norm="ortho"), c.shape[-1]))


# --------------------------------------------------------------------------- image branches


class ImageEncoder(nn.Module):
    """Image encoder (no time input): [B, C, H, W] -> per-level features
    [[B, w_l, H/2^l, W/2^l] for l in levels]."""

    def __init__(
        self,
        in_ch: int,
        widths: list[int],
        blocks: int,
        attention: tuple[int, ...],
        heads: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_ch, widths[0], 3, padding=1)
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = widths[0]
        for level, ch in enumerate(widths):
            mods: list[nn.Module] = []
            for _ in range(blocks):
                mods.append(ResBlock(prev, ch, None, dropout))
                if level in attention:
                    mods.append(AttentionBlock(ch, heads))
                prev = ch
            self.levels.append(nn.Sequential(*mods))
            last = level == len(widths) - 1
            self.downs.append(nn.Identity() if last else Downsample(ch))

    def forward(self, x: Tensor) -> list[Tensor]:
        h = self.stem(x)
        feats = []
        for level, down in zip(self.levels, self.downs):
            h = level(h)
            feats.append(h)
            h = down(h)
        return feats


class ConditionUNet(nn.Module):
    """V2 condition model, a small UNet segmenter over the image:
    [B, C, H, W] -> (decoded features per level [B, w_l, H/2^l, W/2^l] (the last one is the
    bottleneck embedding), anchor logits [B, K, H, W])."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        widths: list[int],
        blocks: int,
        attention: tuple[int, ...],
        heads: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.encoder = ImageEncoder(in_ch, widths, blocks, attention, heads, dropout)
        deep = widths[-1]
        self.mid = nn.Sequential(
            ResBlock(deep, deep, None, dropout),
            AttentionBlock(deep, heads),
            ResBlock(deep, deep, None, dropout),
        )
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(len(widths) - 2, -1, -1):
            self.ups.append(Upsample(widths[level + 1], widths[level]))
            self.decoders.append(ResBlock(2 * widths[level], widths[level], None, dropout))
        self.head = nn.Sequential(group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], out_ch, 1))

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        feats = self.encoder(x)
        h = self.mid(feats[-1])
        decoded = [h]
        for up, block, skip in zip(self.ups, self.decoders, reversed(feats[:-1])):
            h = block(torch.cat([up(h), skip], dim=1))
            decoded.insert(0, h)
        return decoded, self.head(h)
