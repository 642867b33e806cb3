"""Frozen, typed configurations saved beside the weights as JSON.

* :class:`ModelConfig`  -- architecture (V1/V2, preset) and the *training* diffusion schedule.
* :class:`SamplerConfig` -- how to sample at run time (scheduler, steps, ensemble, fusion).
* :class:`TrainConfig` -- the optimisation loop.

The training schedule (``train_timesteps``, ``schedule``, ``prediction``) belongs to the
model: a sampler only chooses *which* of those timesteps to visit.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

from napari_medsegdiff.errors import InputError

Version = Literal["v1", "v2"]
SamplerName = Literal["dpm++", "ddim", "ddpm"]
FusionName = Literal["mean", "vote", "staple"]

SAMPLERS: tuple[str, ...] = ("dpm++", "ddim", "ddpm")
FUSIONS: tuple[str, ...] = ("mean", "vote", "staple")
PRESETS: tuple[str, ...] = ("tiny", "lite", "base", "plus")

T = TypeVar("T")

# Fine-tuning defaults, chosen by benchmarks/finetune.py (BENCHMARKS.md, "Fine-tuning").
# FINETUNE_STEPS is a cap: without held-out slices a fine-tune stops once the painted
# slices come back at FINETUNE_STOP_DICE (worst class, checked every FINETUNE_CHECK_EVERY
# steps at the model's own sampler). lr 1e-3 without augmentation fits 5 painted slices in
# ~175 steps where 5e-4 with augmentation had not in 400 (benchmarks/effort.py, BENCHMARKS.md).
FINETUNE_STEPS = 400
FINETUNE_LR = 1e-3
FINETUNE_AUGMENT = False
FINETUNE_STOP_DICE = 0.95
FINETUNE_CHECK_EVERY = 25


@dataclass(frozen=True)
class FinetuneSettings:
    """The training knobs of one fine-tune, as the CLI, the Fine-tune dock, the jobs and the
    benchmarks pass them (saved as is in the new version's provenance, ``settings``).

    ``holdout``: fraction of the corrected slices held out for Dice (0: none, then the fit
    of the painted slices is checked instead); ``val_every``: steps between checks (None:
    the default for the case); ``steps`` is a cap (see FINETUNE_STEPS). Values are checked
    where they are used (TrainConfig), with messages that name the argument.
    """

    steps: int = FINETUNE_STEPS
    lr: float = FINETUNE_LR
    batch_size: int = 4
    augment: bool = FINETUNE_AUGMENT
    replay: bool = False
    freeze_condition: bool = False
    holdout: float = 0.0
    val_every: int | None = None
    seed: int = 0


def _from_dict(cls: type[T], data: dict[str, Any], what: str) -> T:
    """Build a frozen dataclass from JSON data, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise InputError(f"{what}: expected a JSON object, got {type(data).__name__}")
    names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InputError(f"{what}: unknown field(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what}: {exc}") from None


MAX_CONTEXT = 4  # neighbouring slices on each side a 2.5-D model may see

_LIMITS = {  # upper bounds far above every preset ("plus": 512 channels, 256 px)
    "in_channels": 64,
    "mask_channels": 256,
    "image_size": 4096,
    "base_channels": 2048,
    "num_res_blocks": 32,
    "num_heads": 64,
    "cond_channels": 2048,
    "train_timesteps": 100_000,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and training schedule of a MedSegDiff model.

    ``in_channels`` C is the number of image channels (1 CT/MRI, 3 RGB, 4 BraTS);
    ``context`` k is how many neighbouring slices on each side the condition branch sees
    (2.5-D: the image input has ``C * (2k + 1)`` channels, :attr:`input_channels`);
    ``mask_channels`` K is 1 for a binary mask or the number of classes (including
    background) for a one-hot multi-class mask. Inputs H, W must be divisible by
    ``2 ** (len(channel_mult) - 1)``.
    """

    version: Version = "v2"
    preset: str = "lite"
    in_channels: int = 1
    context: int = 0
    mask_channels: int = 1
    image_size: int = 128
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (3,)
    num_heads: int = 4
    dropout: float = 0.0
    ff_parser: bool = True
    # Image (condition) branch width (V1 encoder, V2 condition model); V2 SS-Former depth.
    cond_channels: int = 32
    ss_former_layers: int = 1
    # Training diffusion schedule (fixed with the weights).
    train_timesteps: int = 1000
    schedule: Literal["linear", "cosine"] = "linear"
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"

    def __post_init__(self) -> None:
        if self.version not in ("v1", "v2"):
            raise ValueError(f"version must be 'v1' or 'v2', got {self.version!r}")
        for name, top in _LIMITS.items():
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            if value > top:  # a corrupt or hostile config.json must not allocate terabytes
                raise ValueError(f"{name} must be at most {top}, got {value!r}")
        if not self.channel_mult:
            raise ValueError("channel_mult must not be empty")
        if len(self.channel_mult) > 8 or not all(
            _is_int(m) and 1 <= m <= 16 for m in self.channel_mult
        ):
            raise ValueError(
                f"channel_mult must be 1-8 integers in 1..16, got {self.channel_mult!r}"
            )
        if not all(_is_int(a) and 0 <= a < len(self.channel_mult) for a in self.attention_levels):
            raise ValueError(
                f"attention_levels must be level indices 0..{len(self.channel_mult) - 1}, "
                f"got {self.attention_levels!r}"
            )
        if not _is_int(self.context) or not 0 <= self.context <= MAX_CONTEXT:
            raise ValueError(f"context must be 0..{MAX_CONTEXT} slices, got {self.context!r}")
        if not _is_int(self.ss_former_layers) or not 0 <= self.ss_former_layers <= 32:
            raise ValueError(f"ss_former_layers must be 0..32, got {self.ss_former_layers!r}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.ff_parser, bool):
            raise ValueError(f"ff_parser must be true or false, got {self.ff_parser!r}")
        if self.image_size % self.size_divisor:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by {self.size_divisor}"
            )
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if self.prediction not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"prediction must be 'epsilon' or 'v_prediction', got {self.prediction!r}"
            )

    @property
    def input_channels(self) -> int:
        """Channels of the condition input: C image channels for each of 2k + 1 slices."""
        return self.in_channels * (2 * self.context + 1)

    @property
    def size_divisor(self) -> int:
        """H and W must be multiples of this (one halving per extra level)."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def num_classes(self) -> int:
        """Number of label values the decoded mask can take (background included)."""
        return 2 if self.mask_channels == 1 else self.mask_channels

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data, "model config")


_PRESETS: dict[str, dict[str, Any]] = {
    # Tests: a forward pass in milliseconds on CPU.
    "tiny": dict(
        image_size=32,
        base_channels=8,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_levels=(2,),
        num_heads=2,
        cond_channels=8,
    ),
    # Shipped default: interactive on a laptop CPU.
    "lite": dict(
        image_size=128,
        base_channels=16,
        channel_mult=(1, 2, 2, 4),
        num_res_blocks=1,
        attention_levels=(3,),
        num_heads=4,
        cond_channels=16,
    ),
    # As published (MedSegDiff-B): 128 channels at 256 px.
    "base": dict(
        image_size=256,
        base_channels=128,
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_res_blocks=2,
        attention_levels=(4,),
        num_heads=4,
        cond_channels=64,
    ),
    # MedSegDiff++ scale: 512 channels, 12 res blocks (3 per level x 4 levels).
    "plus": dict(
        image_size=256,
        base_channels=512,
        channel_mult=(1, 1, 2, 2),
        num_res_blocks=3,
        attention_levels=(3,),
        num_heads=8,
        cond_channels=128,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """Return the named preset (``tiny``, ``lite``, ``base``, ``plus``) with overrides."""
    if name not in _PRESETS:
        raise InputError(
            f"preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}",
            argument="preset",
        )
    values = dict(_PRESETS[name], preset=name)
    values.update(overrides)
    try:
        return ModelConfig(**values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"preset {name!r}: {exc}") from None


@dataclass(frozen=True)
class SamplerConfig:
    """Run-time sampling: scheduler, step count, ensemble size, fusion and seed."""

    sampler: SamplerName = "dpm++"
    steps: int = 20
    ensemble: int = 5
    fusion: FusionName = "mean"
    seed: int = 0
    chunk_size: int | None = None  # members x slices per forward; None = measured per device
    threshold: float = 0.5
    skip_empty: bool = True  # slices without tissue: background, zero variance, not sampled

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise InputError(
                f"sampler: unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}",
                argument="sampler",
            )
        if self.fusion not in FUSIONS:
            raise InputError(
                f"fusion: unknown fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}",
                argument="fusion",
            )
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise InputError(
                f"steps must be between 1 and 1000, got {self.steps!r}", argument="steps"
            )
        if not isinstance(self.ensemble, int) or not 1 <= self.ensemble <= 32:
            raise InputError(
                f"ensemble must be between 1 and 32, got {self.ensemble!r}", argument="ensemble"
            )
        if self.chunk_size is not None and self.chunk_size < 1:
            raise InputError(f"chunk_size must be >= 1, got {self.chunk_size!r}")
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"threshold must be in (0, 1), got {self.threshold!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation loop settings (AdamW + EMA + clipping, finite step budget)."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-4
    lr_final: float | None = None  # cosine decay from lr to this over the steps; None: constant
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    val_every: int = 200
    val_steps: int = 20  # DPM-Solver++ steps for validation Dice
    val_ensemble: int = 1
    save_every: int = 200
    aux_loss_interval: int = 1  # V2: condition-model Dice + CE every N steps
    aux_loss_weight: float = 1.0
    augment: bool = True
    amp: bool = True  # used on CUDA only
    seed: int = 0
    freeze_condition: bool = False
    unlabelled_weight: float = 0.0  # loss weight of voxels coded objective.UNLABELLED + c
    stop_at_dice: float | None = None  # stop once validation Dice (worst class) reaches this
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "val_every", "save_every", "aux_loss_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(
                    f"{name.replace('_', ' ')} must be a positive integer, got {value!r}",
                    argument=name,
                )
        if not self.lr > 0:
            raise InputError(f"learning rate must be positive, got {self.lr!r}", argument="lr")
        if self.lr_final is not None and not 0 <= self.lr_final <= self.lr:
            raise InputError(
                f"final learning rate must be between 0 and the learning rate {self.lr:g}, "
                f"got {self.lr_final!r}",
                argument="lr_final",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def dumps(obj: Any) -> str:
    """JSON text for a config dataclass (stable key order, trailing newline)."""
    data = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
