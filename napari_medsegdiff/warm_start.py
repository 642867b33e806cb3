"""Start a model from another model's weights.

:func:`add_context` turns a 2-D model into a 2.5-D one (``context`` k neighbouring slices
on each side) that computes exactly the same function at first: every weight whose input
channels were the C image channels gets ``C * (2k + 1)`` inputs, the centre slice keeps the
old weights and the neighbours start at zero, so training only has to learn what the
neighbours add (MODEL_CARD.md, "2-D vs 2.5-D").
"""

from __future__ import annotations

import dataclasses

import torch

from napari_medsegdiff.config import ModelConfig
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.model import build_model


def add_context(
    state: dict[str, torch.Tensor], cfg: ModelConfig, context: int
) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """(state of a 2-D model ``cfg``, k) -> (state, config) of the 2.5-D model.

    Image-input weights ``[out, C, ...]`` become ``[out, C * (2k + 1), ...]`` with the old
    weights at the centre slice's channels and zeros elsewhere; all else is copied.
    """
    if cfg.context:
        raise InputError(f"model already has context {cfg.context}; start from a 2-D model")
    new_cfg = dataclasses.replace(cfg, context=context)
    target = build_model(new_cfg).state_dict()
    c = cfg.in_channels
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        want = target.get(key)
        if want is None or want.shape == value.shape:
            out[key] = value.clone()
            continue
        if value.ndim < 2 or value.shape[1] != c or want.shape[1] != new_cfg.input_channels:
            raise InputError(f"{key}: cannot widen {tuple(value.shape)} to {tuple(want.shape)}")
        widened = torch.zeros(want.shape, dtype=value.dtype)
        widened[:, context * c : (context + 1) * c] = value
        out[key] = widened
    return out, new_cfg
