"""Progress reports and cancel tokens shared by the engine, the CLI (tqdm) and the GUI.

The engine never imports a GUI: it calls ``on_progress(Progress(...))`` and checks
``cancel.raise_if_cancelled()`` between denoising / training steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from napari_medsegdiff.errors import Cancelled


@dataclass(frozen=True)
class Progress:
    """One progress report: ``done`` of ``total`` units (slices or training steps)."""

    done: int
    total: int
    message: str = ""
    eta_s: float | None = None
    # Optional detail: the denoising step within the current unit, and a training loss.
    step: int | None = None
    steps: int | None = None
    loss: float | None = None
    metric: float | None = None

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.done / self.total)


ProgressCallback = Callable[[Progress], None]


class CancelToken:
    """A thread-safe flag: the GUI/CLI sets it, the engine stops at the next step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


class EtaClock:
    """Estimates time left from the average time per finished unit."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.start = time.perf_counter()

    def eta(self, done: int) -> float | None:
        if done <= 0:
            return None
        elapsed = time.perf_counter() - self.start
        return elapsed / done * max(0, self.total - done)


def check(cancel: CancelToken | None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` is set (``None`` never cancels)."""
    if cancel is not None:
        cancel.raise_if_cancelled()


def tqdm_bar(total: int, desc: str, unit: str):
    """A tqdm bar on stderr, drawn by the launcher's rank 0 only (silent on other ranks)."""
    import sys

    from tqdm import tqdm

    from napari_medsegdiff.launch_env import is_launch_main

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not is_launch_main(),
        dynamic_ncols=True,
        file=sys.stderr,
    )
