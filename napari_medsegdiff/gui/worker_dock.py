"""What the Segment and Fine-tune docks share about running one engine job in a worker.

A run gets a fresh :class:`~napari_medsegdiff.progress.CancelToken` (also cancelled when the
dock is destroyed, through a callback that holds no reference to the dock) and a
:class:`ProgressRelay` that a timer polls on the GUI thread; errors are routed to one
notification (a user error as it is, out-of-memory with advice, anything else logged).
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Any

from qtpy.QtCore import QTimer

from napari_medsegdiff.devices import is_out_of_memory
from napari_medsegdiff.errors import Cancelled, MedSegDiffError
from napari_medsegdiff.gui.widgets import notify_error
from napari_medsegdiff.gui.workers import ProgressRelay, cancel_all, warm_imports
from napari_medsegdiff.progress import CancelToken

log = logging.getLogger(__name__)


class WorkerDock:
    """Mixin for a QWidget dock that runs one worker at a time.

    Subclasses set ``job_name`` and ``memory_advice`` and implement ``_tick`` (poll the
    relay, draw progress) and ``_on_finished`` (the run is over, whatever its end).
    """

    job_name = "the job"
    memory_advice = "choose the cpu device"

    def _init_worker(self, poll_ms: int) -> None:
        self._worker: Any = None
        self._cancel: CancelToken | None = None
        self._relay = ProgressRelay()
        self._tokens: list[CancelToken] = []
        self._cancelled = self._failed = False
        self._device = ""
        self.destroyed.connect(partial(cancel_all, self._tokens))  # type: ignore[attr-defined]
        self._timer = QTimer(self)  # type: ignore[arg-type]
        self._timer.setInterval(poll_ms)
        self._timer.timeout.connect(self._tick)
        self.warmup = threading.Thread(target=warm_imports, name="medsegdiff-warmup", daemon=True)
        self.warmup.start()

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _new_run(self, device: str) -> tuple[ProgressRelay, CancelToken]:
        """A fresh relay and cancel token for the next worker."""
        self._relay, self._cancel = ProgressRelay(), CancelToken()
        self._tokens[:] = [self._cancel]
        self._cancelled = self._failed = False
        self._device = device
        return self._relay, self._cancel

    def _start_worker(self, worker: Any) -> None:
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._worker_finished)
        self._worker = worker
        self._timer.start()
        worker.start()

    def _request_cancel(self) -> bool:
        """Ask the running job to stop; False when there is nothing to stop."""
        if self._cancel is None:
            return False
        self._cancel.cancel()
        return True

    @property
    def _stopping(self) -> bool:
        return self._cancel is not None and self._cancel.cancelled

    def _worker_finished(self) -> None:
        self._timer.stop()
        self._worker = None
        self._on_finished()

    def _on_errored(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self._cancelled = True
            return
        self._failed = True
        if isinstance(exc, MedSegDiffError):
            notify_error(exc)
        elif is_out_of_memory(exc):
            notify_error(f"out of memory on {self._device}: {self.memory_advice}")
        else:
            log.error("%s failed", self.job_name, exc_info=exc)
            notify_error(f"{self.job_name} failed: {type(exc).__name__}: {exc}")

    def _tick(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_finished(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
