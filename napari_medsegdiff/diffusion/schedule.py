"""The *training* noise schedule: fixed with the weights, never rebuilt at sampling time.

Forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` over ``T`` steps with a
linear (Ho et al.) or cosine (Nichol & Dhariwal) beta schedule. The same betas are handed
to every diffusers scheduler at sampling time (``trained_betas``), so training and
sampling agree exactly whatever step count is chosen.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from napari_medsegdiff.config import ModelConfig


def training_betas(cfg: ModelConfig) -> np.ndarray:
    """Betas of the training schedule, shape (T,), float64."""
    steps = cfg.train_timesteps
    if cfg.schedule == "linear":
        scale = 1000.0 / steps
        return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)
    ]
    return np.asarray(betas, dtype=np.float64)


class NoiseSchedule:
    """Adds noise and builds regression targets for training.

    All tensors: ``x0``/``noise`` (B, K, H, W), ``t`` (B,) long in ``[0, T)``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        betas = torch.from_numpy(training_betas(cfg))
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float()  # (T,)
        self.num_timesteps = cfg.train_timesteps

    def _coef(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.alphas_cumprod.to(x.device)[t].view(-1, *([1] * (x.ndim - 1)))
        return abar.sqrt().to(x.dtype), (1.0 - abar).sqrt().to(x.dtype)

    def sample_timesteps(
        self, batch: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform t in [0, T), shape (batch,), on CPU."""
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) sample."""
        a, s = self._coef(t, x0)
        return a * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network regresses: epsilon, or v = sqrt(abar) eps - sqrt(1-abar) x0."""
        if self.cfg.prediction == "epsilon":
            return noise
        a, s = self._coef(t, x0)
        return a * noise - s * x0

    def predict_x0(self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean-mask estimate implied by a network output at step t."""
        a, s = self._coef(t, x_t)
        if self.cfg.prediction == "epsilon":
            return (x_t - s * output) / a.clamp_min(1e-8)
        return a * x_t - s * output
