"""Training state beside a model folder: ``last/`` holds what a run needs to resume.

``last/`` is an ordinary model folder (EMA weights + config.json, written atomically by
:func:`~napari_medsegdiff.checkpoints.save_model`) plus two extra files:
``training_state.safetensors`` (raw weights ``model.*``, EMA ``ema.*``, optimiser tensors
``opt.<param>.<name>``) and ``training_state.json`` (step, optimiser scalars and param
groups, loss / Dice history, the TrainConfig). Nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from napari_medsegdiff.checkpoints import WEIGHTS, save_model
from napari_medsegdiff.config import ModelConfig, TrainConfig

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


class EMA:
    """Exponential moving average of a model's floating-point state."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # warm-up for short runs
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.shadow[key].lerp_(value.detach(), 1 - decay)
            else:
                self.shadow[key].copy_(value)


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state as safetensors-ready tensors and JSON-ready scalars."""
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_last(
    out: Path,
    model: torch.nn.Module,
    ema_shadow: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer,
    cfg: ModelConfig,
    tcfg: TrainConfig,
    step: int,
    history: dict,
    meta: dict,
) -> Path:
    """Write ``out/last``: EMA weights as the model, plus the state to resume from."""
    from safetensors.torch import save

    opt_tensors, opt_meta = optimizer_tensors(opt)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema_shadow.items()})
    tensors.update(opt_tensors)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    state_json = {
        "step": step,
        "optimizer": opt_meta,
        "history": history,
        "train_config": tcfg.to_dict(),
    }
    extra = {
        STATE_TENSORS: save(tensors),
        STATE_JSON: (json.dumps(state_json, default=float) + "\n").encode(),
    }
    return save_model(
        out / "last",
        ema_shadow,
        cfg,
        meta={**meta, "step": step},
        extra_files=extra,
        overwrite=True,
    )


def load_last(out: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(tensors, state JSON) of ``out/last``, or None when there is no training state."""
    from safetensors.torch import load_file

    folder = out / "last"
    if not (folder / STATE_TENSORS).is_file() or not (folder / WEIGHTS).is_file():
        return None
    return load_file(str(folder / STATE_TENSORS)), json.loads(
        (folder / STATE_JSON).read_text(encoding="utf-8")
    )


def restore_state(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    state_json: dict,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], int, dict]:
    """Load raw weights and optimiser state from :func:`load_last`'s result; returns the EMA
    weights (on ``device``), the step and the history to continue with."""
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    shadow = {k[4:]: v.to(device) for k, v in tensors.items() if k.startswith("ema.")}
    restore_optimizer(opt, tensors, state_json["optimizer"])
    return shadow, int(state_json["step"]), state_json["history"]
