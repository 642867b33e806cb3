"""Which slices to correct: where the ensemble disagrees most, spread along the volume.

A slice teaches fine-tuning the most where the model is unsure of much tissue: the score
is the ensemble variance summed over the slice (pixels of uncertain mask), measured with a
small, fast ensemble. Picks are greedy by score with a minimum gap between them, so the
suggestions are not neighbours of each other; the order is the order to visit them in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.preprocessing import foreground_slices
from napari_medsegdiff.progress import CancelToken, ProgressCallback

MAX_CANDIDATES = 64  # slices scored; a longer volume is scored at a stride


@dataclass
class Suggestion:
    """``slices``: indices along axis 0, most informative first; ``scores``: per scored slice."""

    slices: list[int]
    scores: dict[int, float] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"{z} ({self.scores.get(z, 0.0):.3g})" for z in self.slices]
        return "correct these slices, most informative first: " + ", ".join(parts)


def spread_picks(scores: dict[int, float], count: int, min_gap: int) -> list[int]:
    """Greedy by score, keeping picks at least ``min_gap`` apart (relaxed if too few)."""
    order = sorted(scores, key=lambda z: (-scores[z], z))
    gap = max(1, min_gap)
    while True:
        picks: list[int] = []
        for z in order:
            if all(abs(z - p) >= gap for p in picks):
                picks.append(z)
            if len(picks) == count:
                return picks
        if gap == 1:
            return picks
        gap = max(1, gap // 2)


def score_slices(
    model: str | Path | None,
    image: np.ndarray,
    candidates: Sequence[int],
    *,
    ensemble: int = 4,
    steps: int = 5,
    device: str = "auto",
    seed: int = 0,
    window: tuple[float, float] | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[int, float]:
    """Ensemble disagreement per slice: the variance map summed over the slice (pixels)."""
    from napari_medsegdiff.checkpoints import resolve_model
    from napari_medsegdiff.segmenter import Segmenter

    seg = Segmenter.load(resolve_model(model), device)
    sampler = SamplerConfig(steps=steps, ensemble=ensemble, seed=seed)
    results = seg.segment_volume(
        image,
        slices=list(candidates),
        sampler=sampler,
        window=window,
        on_progress=on_progress,
        cancel=cancel,
    )
    return {r.index: float(np.sum(r.variance, dtype=np.float64)) for r in results}


def suggest_slices(
    model: str | Path | None,
    image: np.ndarray,
    *,
    count: int = 5,
    exclude: Sequence[int] = (),
    **scoring: Any,
) -> Suggestion:
    """The ``count`` slices of image (z, y, x[, c]) most worth correcting (module docstring).

    ``exclude``: slices already corrected; ``scoring``: :func:`score_slices` options
    (ensemble, steps, device, seed, window, on_progress, cancel). Scores at most
    ``MAX_CANDIDATES`` tissue slices (at a stride on longer volumes)."""
    if not 1 <= count <= 100:
        raise InputError(f"count must be between 1 and 100, got {count}")
    candidates = [z for z in foreground_slices(image) if z not in set(exclude)]
    if not candidates:
        raise InputError("no slice holds tissue above the background level: nothing to suggest")
    stride = max(1, int(np.ceil(len(candidates) / MAX_CANDIDATES)))
    scores = score_slices(model, image, candidates[::stride], **scoring)
    span = candidates[-1] - candidates[0] + 1
    min_gap = max(1, span // (2 * count))
    return Suggestion(spread_picks(scores, count, min_gap), scores)
