"""Worker bodies (run in a napari thread worker) and the progress hand-over (no Qt here).

The engine reports through plain callables; :class:`ProgressRelay` keeps the latest report
(and the loss curve) behind a lock so the main thread can poll it a few times per second
instead of receiving one signal per denoising step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.progress import CancelToken, Progress


class ProgressRelay:
    """Thread-safe mailbox: the worker calls it, the GUI ``take()``s what is new."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: Progress | None = None
        self._points: list[tuple[int, float | None, float | None]] = []
        self._fresh = False

    def __call__(self, progress: Progress) -> None:
        with self._lock:
            self._latest = progress
            self._fresh = True
            if progress.loss is not None or progress.metric is not None:
                self._points.append((progress.done, progress.loss, progress.metric))

    def take(self) -> tuple[Progress | None, list[tuple[int, float | None, float | None]]]:
        """(latest report if new else None, curve points since the last take)."""
        with self._lock:
            latest = self._latest if self._fresh else None
            points, self._points, self._fresh = self._points, [], False
        return latest, points


class SegmenterCache:
    """Loaded models keyed by (folder, device); keeps the last ``size`` of them."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], Any] = {}

    def get(self, model: str | Path, device: str) -> Any:
        from napari_medsegdiff.segmenter import Segmenter

        key = (str(Path(model).resolve()), str(device))
        with self._lock:
            if key in self._items:
                self._items[key] = self._items.pop(key)  # most recent last
                return self._items[key]
        seg = Segmenter.load(model, device)
        with self._lock:
            self._items[key] = seg
            while len(self._items) > self.size:
                self._items.pop(next(iter(self._items)))
        return seg

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def cancel_all(tokens: list[CancelToken], *_: object) -> None:
    """Cancel every token (connected to a dock's ``destroyed``: a closed window stops work)."""
    for token in tokens:
        token.cancel()


def warm_imports() -> None:
    """Import the engine's heavy modules (torch, diffusers schedulers) ahead of a run.

    Run in a background thread when a dock opens, so the first Run does not stall the
    viewer on module imports (which hold the GIL for long stretches).
    """
    import torch

    import napari_medsegdiff.segmenter  # noqa: F401

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo once
    try:
        from diffusers.schedulers import (  # noqa: F401
            DDIMScheduler,
            DDPMScheduler,
            DPMSolverMultistepScheduler,
        )
    except ImportError:  # reported properly by the engine when sampling starts
        pass


def segment_job(
    cache: SegmenterCache,
    model: str | Path,
    device: str,
    data: np.ndarray,
    slices: Sequence[int] | None,
    sampler: SamplerConfig,
    relay: ProgressRelay,
    cancel: CancelToken,
) -> Iterator[Any]:
    """Generator body: load (cached) then yield one ``SliceResult`` per finished slice.

    ``slices=None`` means a 2-D image (H, W[, C]) segmented with ``segment_image``.
    """
    relay(Progress(0, len(slices) if slices is not None else 1, "loading model"))
    seg = cache.get(model, device)
    if slices is None:
        yield seg.segment_image(data, sampler=sampler, cancel=cancel, on_progress=relay)
        return
    yield from seg.segment_volume(
        data, slices=list(slices), sampler=sampler, on_progress=relay, cancel=cancel
    )


def format_eta(seconds: float | None) -> str:
    """'1:05' style time left ('' when unknown)."""
    if seconds is None or not np.isfinite(seconds):
        return ""
    seconds = round(float(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_text(progress: Progress, unit: str) -> str:
    """'3/30 slices, ETA 0:12 (step 2/3)' for the progress bar."""
    text = f"{progress.done}/{progress.total} {unit}"
    eta = format_eta(progress.eta_s)
    if eta:
        text += f", ETA {eta}"
    if progress.step is not None and progress.steps:
        text += f" (step {progress.step}/{progress.steps})"
    elif progress.message and progress.done == 0:
        text += f" ({progress.message})"
    return text


class RunProgress:
    """One monotone fraction, step count and ETA for a whole segmentation run.

    The engine reports finished slices and, within a chunk of slices, the denoising step
    (which restarts for every chunk). This folds both into "denoising steps of the run",
    so the bar moves within a one-slice run and never jumps back.
    """

    def __init__(self, slices: int, steps: int) -> None:
        self.total, self.steps = max(1, slices), max(1, steps)
        self.chunk = 1  # slices finished together last time: the size of a chunk
        self._done = 0
        self._best = 0.0
        self._start = time.perf_counter()

    def update(self, progress: Progress) -> tuple[float, str]:
        """(fraction 0..1, bar text) for a report."""
        if progress.done > self._done:
            self.chunk = max(1, progress.done - self._done)
            self._done = progress.done
        units = float(progress.done)
        if progress.step is not None and progress.steps:
            left = max(0, self.total - progress.done)
            units += min(self.chunk, left) * min(progress.step, progress.steps) / progress.steps
        fraction = max(self._best, min(1.0, units / self.total))
        self._best = fraction
        total_steps = self.total * self.steps
        text = (
            f"{progress.done}/{self.total} slices, "
            f"step {round(fraction * total_steps)}/{total_steps} of the run"
        )
        elapsed = time.perf_counter() - self._start
        if 0.0 < fraction < 1.0 and elapsed > 0.5:
            text += f", ETA {format_eta(elapsed / fraction * (1.0 - fraction))}"
        elif progress.message and fraction == 0.0:
            text += f" ({progress.message})"
        return fraction, text
