"""MedSegDiff V1/V2: a mask (diffusion) UNet conditioned on an image branch.

The image branch (:class:`ConditionEncoder`) depends on the image only and returns a
:class:`Condition`, computed once per slice and reused for every denoising step and every
ensemble member; :meth:`MedSegDiff.denoise` runs only the light mask branch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from napari_medsegdiff.config import ModelConfig
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.model.conditioning import (
    ConditionFeature,
    ConditionUNet,
    DynamicFusion,
    ImageEncoder,
    SpectralCondition,
    SSFormer,
    UncertainSpatialAttention,
    foreground_probability,
)
from napari_medsegdiff.model.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimeEmbedding,
    Upsample,
    filter_grid,
    group_norm,
    zero_module,
)

#: V2 applies U-SA at this many first encoder stages.
ANCHOR_LEVELS = 2


@dataclass
class Condition:
    """Image-only tensors (batch first) the mask branch needs at every step.

    Keys: ``fuse{l}`` [B, C_l, H/2^l, W/2^l] (V1/V2 dynamic-encoding term LN(c)*c);
    V2 also ``gate{l}`` (U-SA gates), ``spectrum`` [B, T, 2C] (SS-Former condition tokens)
    and ``anchor_logits`` [B, K, H, W].
    """

    tensors: dict[str, Tensor]

    @property
    def batch_size(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    @property
    def spatial_size(self) -> tuple[int, int]:
        """(H, W) of the image this condition was computed from."""
        h, w = self.tensors["fuse0"].shape[-2:]
        return int(h), int(w)

    @property
    def anchor_logits(self) -> Tensor | None:
        return self.tensors.get("anchor_logits")

    def __getitem__(self, key: str) -> Tensor:
        return self.tensors[key]

    def get(self, key: str) -> Tensor | None:
        return self.tensors.get(key)

    def index(self, idx: Tensor) -> Condition:
        """Select / repeat rows, e.g. ``torch.arange(B).repeat_interleave(members)``."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Condition({k: v.index_select(0, idx.to(v.device)) for k, v in self.tensors.items()})

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Condition:
        """Move all tensors; ``dtype`` applies to floating-point tensors only."""
        out = {}
        for k, v in self.tensors.items():
            target = dtype if dtype is not None and v.is_floating_point() else None
            out[k] = v.to(device=device, dtype=target)
        return Condition(out)


@dataclass
class ModelOutput:
    """prediction [B, K, H, W] (epsilon or v); anchor_logits [B, K, H, W] (V2) or None."""

    prediction: Tensor
    anchor_logits: Tensor | None = None


def _widths(base: int, mult: tuple[int, ...]) -> list[int]:
    return [base * m for m in mult]


class ConditionEncoder(nn.Module):
    """The whole image branch: [B, C, H, W] image -> :class:`Condition`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.v2 = cfg.version == "v2"
        mask_w = _widths(cfg.base_channels, cfg.channel_mult)
        cond_w = _widths(cfg.cond_channels, cfg.channel_mult)
        args = (cfg.num_res_blocks, tuple(cfg.attention_levels), cfg.num_heads, cfg.dropout)
        if self.v2:
            self.backbone: nn.Module = ConditionUNet(
                cfg.input_channels, cfg.mask_channels, cond_w, *args
            )
        else:
            self.backbone = ImageEncoder(cfg.input_channels, cond_w, *args)
        self.features = nn.ModuleList(
            ConditionFeature(cw, mw, filter_grid(cfg.image_size, lv), cfg.ff_parser)
            for lv, (cw, mw) in enumerate(zip(cond_w, mask_w))
        )
        if self.v2:
            levels = min(ANCHOR_LEVELS, len(mask_w))
            self.usa = nn.ModuleList(
                UncertainSpatialAttention(mask_w[lv], 2**lv) for lv in range(levels)
            )
        self.spectral = (
            SpectralCondition(cond_w[-1], mask_w[-1], filter_grid(cfg.image_size, len(mask_w) - 1))
            if self.v2 and cfg.ss_former_layers > 0
            else None
        )

    def forward(self, image: Tensor) -> Condition:
        if self.v2:
            feats, logits = self.backbone(image)
        else:
            feats, logits = self.backbone(image), None
        out = {f"fuse{lv}": mod(f) for lv, (mod, f) in enumerate(zip(self.features, feats))}
        if self.v2:
            prob = foreground_probability(logits.float()).to(image.dtype)
            for lv, usa in enumerate(self.usa):
                out[f"gate{lv}"] = usa(prob)
            if self.spectral is not None:
                out["spectrum"] = self.spectral(feats[-1])
            out["anchor_logits"] = logits
        return Condition(out)


class DiffusionUNet(nn.Module):
    """The mask branch: x_t [N, K, H, W], t [N], Condition -> prediction [N, K, H, W]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.v2 = cfg.version == "v2"
        widths = _widths(cfg.base_channels, cfg.channel_mult)
        depth, blocks = len(widths), cfg.num_res_blocks
        emb = min(4 * cfg.base_channels, 512)
        self.time = TimeEmbedding(max(32, cfg.base_channels), emb)
        self.stem = nn.Conv2d(cfg.mask_channels, widths[0], 3, padding=1)
        attn = set(cfg.attention_levels)

        def attention(ch: int, level: int) -> nn.Module:
            return AttentionBlock(ch, cfg.num_heads) if level in attn else nn.Identity()

        self.enc_blocks, self.enc_attn = nn.ModuleList(), nn.ModuleList()
        self.fusion, self.downs = nn.ModuleList(), nn.ModuleList()
        prev = widths[0]
        for lv, ch in enumerate(widths):
            for _ in range(blocks):
                self.enc_blocks.append(ResBlock(prev, ch, emb, cfg.dropout))
                self.enc_attn.append(attention(ch, lv))
                prev = ch
            self.fusion.append(DynamicFusion(ch, filter_grid(cfg.image_size, lv), cfg.ff_parser))
            self.downs.append(Downsample(ch) if lv < depth - 1 else nn.Identity())

        deep = widths[-1]
        self.mid1 = ResBlock(deep, deep, emb, cfg.dropout)
        self.ss_former = (
            SSFormer(
                deep,
                cfg.num_heads,
                filter_grid(cfg.image_size, depth - 1),
                emb,
                cfg.ss_former_layers,
            )
            if self.v2 and cfg.ss_former_layers > 0
            else None
        )
        self.mid_attn = attention(deep, depth - 1)
        self.mid2 = ResBlock(deep, deep, emb, cfg.dropout)

        self.dec_blocks, self.dec_attn, self.ups = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for lv in range(depth - 1, -1, -1):
            ch = widths[lv]
            for _ in range(blocks):
                self.dec_blocks.append(ResBlock(2 * ch, ch, emb, cfg.dropout))
                self.dec_attn.append(attention(ch, lv))
            self.ups.append(Upsample(ch, widths[lv - 1]) if lv > 0 else nn.Identity())
        self.out = nn.Sequential(
            group_norm(widths[0]),
            nn.SiLU(),
            zero_module(nn.Conv2d(widths[0], cfg.mask_channels, 3, padding=1)),
        )
        self.blocks = blocks

    def forward(self, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        emb = self.time(t)
        h = self.stem(x)
        skips: list[Tensor] = []
        i = 0
        for lv, (fusion, down) in enumerate(zip(self.fusion, self.downs)):
            for j in range(self.blocks):
                h = self.enc_attn[i](self.enc_blocks[i](h, emb))
                i += 1
                if j == self.blocks - 1:
                    h = fusion(h, cond[f"fuse{lv}"])  # dynamic conditional encoding
                    gate = cond.get(f"gate{lv}")
                    if gate is not None:  # U-SA anchor condition
                        h = h * (1 + gate)
                skips.append(h)
            h = down(h)
        h = self.mid1(h, emb)
        if self.ss_former is not None:
            h = self.ss_former(h, cond["spectrum"], emb)
        h = self.mid2(self.mid_attn(h), emb)
        i = 0
        for up in self.ups:
            for _ in range(self.blocks):
                h = self.dec_attn[i](self.dec_blocks[i](torch.cat([h, skips.pop()], 1), emb))
                i += 1
            h = up(h)
        return self.out(h)


class MedSegDiff(nn.Module):
    """MedSegDiff V1/V2 (``config.version``); see the module docstring."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.condition = ConditionEncoder(config)
        self.diffusion = DiffusionUNet(config)

    def _check_size(self, h: int, w: int, what: str) -> None:
        d = self.config.size_divisor
        if h % d or w % d or h < d or w < d:
            raise InputError(
                f"{what} height and width must be positive multiples of {d} for this model "
                f"({len(self.config.channel_mult)} levels), got {h}x{w}"
            )

    def encode_condition(self, image: Tensor) -> Condition:
        """Image [B, C', H, W] -> :class:`Condition` (run once per slice); C' is
        ``config.input_channels`` (a 2.5-D model's neighbours stacked by
        :func:`~napari_medsegdiff.preprocessing.with_context`)."""
        if image.ndim != 4:
            raise InputError(f"image must be a [B, C, H, W] tensor, got shape {tuple(image.shape)}")
        c = self.config.input_channels
        if image.shape[1] != c:
            raise InputError(
                f"model expects {c} image channel(s) (C x (2 * context + 1)), got {image.shape[1]}"
            )
        self._check_size(image.shape[2], image.shape[3], "image")
        return self.condition(image)

    def denoise(self, x_t: Tensor, t: Tensor, cond: Condition) -> Tensor:
        """x_t [N, K, H, W], t [N] (or scalar; long or float in [0, train_timesteps)),
        cond with batch_size N -> prediction [N, K, H, W]."""
        k = self.config.mask_channels
        if x_t.ndim != 4 or x_t.shape[1] != k:
            raise InputError(f"x_t must be [N, {k}, H, W], got shape {tuple(x_t.shape)}")
        self._check_size(x_t.shape[2], x_t.shape[3], "mask")
        n = x_t.shape[0]
        if cond.batch_size != n:
            raise InputError(
                f"condition has batch {cond.batch_size} but x_t has {n}; "
                "use cond.index(...) to repeat it per member"
            )
        if cond.spatial_size != tuple(x_t.shape[2:]):
            raise InputError(
                f"condition was computed at {cond.spatial_size}, x_t is {tuple(x_t.shape[2:])}"
            )
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(n)
        return self.diffusion(x_t, t, cond)

    def forward(self, x_t: Tensor, t: Tensor, image: Tensor) -> ModelOutput:
        """Training: x_t [B, K, H, W], t [B], image [B, C, H, W] -> :class:`ModelOutput`."""
        cond = self.encode_condition(image)
        return ModelOutput(self.denoise(x_t, t, cond), cond.anchor_logits)

    def condition_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the image/condition branch (for freezing during fine-tuning)."""
        return self.condition.parameters()


def build_model(cfg: ModelConfig) -> MedSegDiff:
    """Build an (untrained) MedSegDiff for ``cfg``."""
    return MedSegDiff(cfg)


__all__ = ["Condition", "MedSegDiff", "ModelOutput", "build_model"]
