"""Reverse diffusion with a scheduler chosen at call time (diffusers).

``dpm++`` = DPM-Solver++ (2M, order 2), ``ddim`` and ``ddpm``. Every scheduler is built
from the model's own training betas, so the step count (1-1000) never changes the
training schedule. The image condition is computed by the caller once and reused for
every step and member.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from napari_medsegdiff.config import SAMPLERS, ModelConfig
from napari_medsegdiff.diffusion.schedule import training_betas
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.progress import CancelToken, check


def make_scheduler(name: str, cfg: ModelConfig) -> Any:
    """A fresh diffusers scheduler for ``name`` on the model's training schedule."""
    from diffusers.schedulers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = dict(
        num_train_timesteps=cfg.train_timesteps,
        trained_betas=training_betas(cfg).astype("float32").tolist(),
        prediction_type=cfg.prediction,
    )
    if name == "dpm++":
        return DPMSolverMultistepScheduler(
            **common,
            algorithm_type="dpmsolver++",
            solver_order=2,
            thresholding=True,  # clip the x0 estimate to the mask range [-1, 1]
            sample_max_value=1.0,
            lower_order_final=True,
        )
    if name == "ddim":
        # No x0 clipping: DDIM would mix the clipped x0 with the unclipped epsilon and drift.
        return DDIMScheduler(
            **common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing"
        )
    if name == "ddpm":
        return DDPMScheduler(
            **common, clip_sample=True, variance_type="fixed_small", timestep_spacing="trailing"
        )
    raise InputError(
        f"sampler: unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}",
        argument="sampler",
    )


def initial_noise(
    shape: Sequence[int], generators: Sequence[torch.Generator], device: torch.device
) -> torch.Tensor:
    """One noise map per row from that row's own CPU generator: (N, K, H, W)."""
    rows = [torch.randn(tuple(shape), generator=g) for g in generators]
    return torch.stack(rows).to(device)


def denoise_loop(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    scheduler: Any,
    steps: int,
    generators: Sequence[torch.Generator],
    cancel: CancelToken | None = None,
    on_step: Callable[[int, int], None] | None = None,
    known: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run the reverse process from noise ``x`` (N, K, H, W) to the clean mask estimate.

    ``denoise(x_t, t)`` returns the network output for a batch; ``generators`` (one per
    row) drive the stochastic samplers so every row is reproducible on its own.
    ``known = (x0, where)``: (N, K, H, W) mask values in [-1, 1] and (N, 1, H, W) 0/1;
    inpainting as in RePaint (Lugmayr et al. 2022): after every step the known pixels of
    x_t are replaced by ``x0`` noised to the next step's level, and at the end by ``x0``.
    """
    if not 1 <= steps <= scheduler.config.num_train_timesteps:
        raise InputError(
            f"steps must be between 1 and {scheduler.config.num_train_timesteps}, got {steps}",
            argument="steps",
        )
    scheduler.set_timesteps(steps, device=x.device)
    x = x * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    if known is not None:
        x = _replace_known(x, known, scheduler, int(timesteps[0]), generators)
    for i, t in enumerate(timesteps):
        check(cancel)
        t_batch = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        model_in = scheduler.scale_model_input(x, t)
        out = denoise(model_in, t_batch).to(x.dtype)
        kwargs: dict[str, Any] = {}
        if "generator" in scheduler.step.__code__.co_varnames:
            kwargs["generator"] = list(generators)
        x = scheduler.step(out, t, x, **kwargs).prev_sample
        if known is not None:
            level = int(timesteps[i + 1]) if i + 1 < len(timesteps) else -1
            x = _replace_known(x, known, scheduler, level, generators)
        if on_step is not None:
            on_step(i + 1, len(timesteps))
    return x.clamp(-1.0, 1.0)


def _replace_known(
    x: torch.Tensor,
    known: tuple[torch.Tensor, torch.Tensor],
    scheduler: Any,
    t: int,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """x_t with the known pixels set to q(x_t | x0) (``t`` = -1: to x0 itself)."""
    x0, where = known
    if t < 0:
        target = x0
    else:
        a = scheduler.alphas_cumprod[t].to(x.device, x.dtype)
        noise = initial_noise(x0.shape[1:], generators, x.device).to(x.dtype)
        target = a.sqrt() * x0 + (1 - a).sqrt() * noise
    return torch.where(where.bool(), target.to(x.dtype), x)
