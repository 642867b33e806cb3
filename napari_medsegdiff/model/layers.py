"""Building blocks shared by the mask (diffusion) branch and the image (condition) branch.

Shapes: ``B`` batch, ``C`` channels, ``H, W`` spatial size, ``E`` time-embedding width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Largest frequency grid (rows) a spectral filter is parameterised at; bigger inputs
#: resample it. Keeps FF-Parser / NBP weights small at 256 px and 512 channels.
MAX_FILTER_SIZE = 128


def num_groups(channels: int) -> int:
    """GroupNorm groups: the largest of 32, 16, 8, 4, 2 dividing ``channels`` with at
    least 4 channels per group (1 if none), so 8 channels -> 2 groups, 128 -> 32."""
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0 and channels // groups >= 4:
            return groups
    return 1


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters (residual branches start as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def layer_norm(channels: int) -> nn.GroupNorm:
    """LayerNorm over (C, H, W) of each sample, with per-channel affine: GroupNorm(1, C).
    (Much faster on CPU than a per-pixel channel LayerNorm, and size independent.)"""
    return nn.GroupNorm(1, channels)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (long or float) timesteps: [N] -> [N, dim]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """Sinusoid -> MLP: [N] timesteps -> [N, E]."""

    def __init__(self, freq_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """GN-SiLU-Conv, (scale-shift by the time embedding), GN-SiLU-Dropout-Conv, + skip.

    ``emb_dim=None`` builds the unconditioned variant used by the image branch.
    [B, Cin, H, W], [B, E] -> [B, Cout, H, W].
    """

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch) if emb_dim else None
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None and emb is not None:
            scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels with a residual: [B, C, H, W] -> same."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        heads = num_heads if channels % num_heads == 0 else 1
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        # [B, heads, HW, d] with unit stride on d, so the fused CPU/GPU kernels apply
        q, k, v = qkv.transpose(-1, -2).contiguous().unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Strided 3x3 conv: [B, C, H, W] -> [B, Cout, H/2, W/2]."""

    def __init__(self, channels: int, out_ch: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_ch or channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """3x3 conv at the low resolution, then nearest x2 (a quarter of the cost of
    conv-after-upsampling): [B, C, H, W] -> [B, Cout, 2H, 2W]."""

    def __init__(self, channels: int, out_ch: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_ch or channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")


def filter_grid(image_size: int, level: int) -> int:
    """Rows of the frequency grid a level's filter is parameterised at."""
    return max(2, min(image_size // 2**level, MAX_FILTER_SIZE))


def resample_spectrum_map(weight: Tensor, height: int, width: int) -> Tensor:
    """Resample a map over rFFT bins to another input size, matching *frequencies*.

    ``weight`` [C, P, h, h//2+1]: rows in centred order (row i is frequency
    ``(i - h//2) / h`` cycles/pixel), columns ``0 .. 1/2``. Returns [C, P, H, W//2+1] in
    ``torch.fft.rfft2`` order (rows ``fftfreq(H)``), bilinearly interpolated, so a
    filter learnt at one size acts on the same physical frequencies at any size.
    """
    c, p, h, wf = weight.shape
    rows = torch.fft.fftfreq(height, device=weight.device, dtype=torch.float32)
    cols = torch.fft.rfftfreq(width, device=weight.device, dtype=torch.float32)
    src_y = rows * h + h // 2  # source row index (centred layout)
    src_x = cols * (2 * (wf - 1))  # source column index
    gy = 2 * src_y / (h - 1) - 1
    gx = 2 * src_x / (wf - 1) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # [H, Wf, 2] (x, y)
    out = F.grid_sample(
        weight.reshape(1, c * p, h, wf).float(),
        grid[None],
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    return out.reshape(c, p, height, width // 2 + 1)


class SpectralWeight(nn.Module):
    """A learnable complex weight per channel and rFFT bin, parameterised on a fixed grid
    (``grid`` rows) and resampled to any input size. Initialised to 1 + 0j (identity)."""

    def __init__(self, channels: int, grid: int) -> None:
        super().__init__()
        weight = torch.zeros(channels, 2, grid, grid // 2 + 1)
        weight[:, 0] = 1.0
        self.weight = nn.Parameter(weight)  # [C, (real, imag), h, h//2+1]
        self._cache: tuple[tuple, Tensor] | None = None

    def complex_weight(self, height: int, width: int) -> Tensor:
        """[C, H, W//2+1] complex64 for an input of size H x W (cached without grad)."""
        p = self.weight
        key = (height, width, p.device, p.data_ptr(), p._version)
        use_cache = not torch.is_grad_enabled()
        if use_cache and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        w = p.float()
        if tuple(w.shape[-2:]) == (height, width // 2 + 1):
            w = torch.fft.ifftshift(w, dim=-2)  # centred rows -> rfft2 row order
        else:
            w = resample_spectrum_map(w, height, width)
        out = torch.complex(w[:, 0], w[:, 1])
        self._cache = (key, out) if use_cache else None
        return out


class FFParser(nn.Module):
    """Feature Frequency Parser (MedSegDiff V1): ``irfft2(rfft2(x) * A)`` with a learnable
    per-channel complex map A (see :class:`SpectralWeight`). [B, C, H, W] -> same."""

    def __init__(self, channels: int, grid: int) -> None:
        super().__init__()
        self.filter = SpectralWeight(channels, grid)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        spec = torch.fft.rfft2(x.float(), norm="ortho")
        spec = spec * self.filter.complex_weight(h, w)
        return torch.fft.irfft2(spec, s=(h, w), norm="ortho").to(x.dtype)
