""" "Suggest slices": which slices to correct first, computed in a worker, click to jump."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_medsegdiff.errors import MedSegDiffError
from napari_medsegdiff.gui.widgets import notify_error, notify_info
from napari_medsegdiff.progress import CancelToken

# ``inputs()`` returns (model path, device, image (z, y, x[, c]), slices to exclude).
Inputs = Callable[[], tuple[Any, str, Any, list[int]]]


def suggest_job(model: Any, device: str, data: Any, count: int, exclude: list[int], cancel):
    """Worker body: the suggestion for a volume (see :func:`napari_medsegdiff.suggest`)."""
    from napari_medsegdiff.suggest import suggest_slices

    return suggest_slices(model, data, count=count, exclude=exclude, device=device, cancel=cancel)


class SuggestPanel(QGroupBox):
    """Button + count + list; results are visited in order (``on_jump(index)``)."""

    def __init__(self, inputs: Inputs, on_jump: Callable[[int], None], parent=None) -> None:
        super().__init__("Which slices to correct", parent)
        self.inputs, self.on_jump = inputs, on_jump
        self.worker: Any = None
        self.cancel = CancelToken()
        self.tokens: list[CancelToken] = []  # cancelled when the dock goes away
        self.suggestion: Any = None
        self.button = QPushButton("Suggest slices")
        self.button.setToolTip(
            "Rank slices by how much correcting them would teach the model: where a small, "
            "fast ensemble (4 samples x 5 steps) disagrees most, spread along the volume so "
            "the picks are not neighbours. Slices you already corrected are left out"
        )
        self.button.clicked.connect(lambda: self.start())
        self.count = QSpinBox()
        self.count.setRange(1, 20)
        self.count.setValue(5)
        self.count.setToolTip("How many slices to suggest")
        self.next_button = QPushButton("Next ▶")
        self.next_button.setToolTip("Go to the next suggested slice")
        self.next_button.clicked.connect(lambda: self.step())
        self.list = QListWidget()
        self.list.setMaximumHeight(110)
        self.list.setToolTip(
            "Suggested slices, most informative first, with their disagreement relative to "
            "the top one; click to jump there"
        )
        self.list.itemClicked.connect(
            lambda item: self.on_jump(int(item.data(Qt.ItemDataRole.UserRole)))
        )
        row = QHBoxLayout()
        row.addWidget(self.button, 1)
        row.addWidget(self.count)
        row.addWidget(self.next_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.list)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self) -> bool:
        """Score the slices in a worker; False (with a notification) if it cannot start."""
        if self.running:
            return False
        try:
            model, device, data, exclude = self.inputs()
        except MedSegDiffError as exc:
            notify_error(exc)
            return False
        self.cancel = CancelToken()
        self.tokens[:] = [self.cancel]
        worker = create_worker(
            suggest_job,
            model,
            device,
            data,
            self.count.value(),
            exclude,
            self.cancel,
            _ignore_errors=True,
        )
        worker.returned.connect(self.show)
        worker.errored.connect(lambda exc: notify_error(exc))
        worker.finished.connect(self._finished)
        self.worker = worker
        self.button.setEnabled(False)
        self.button.setText("Scoring slices…")
        worker.start()
        return True

    def show(self, suggestion: Any) -> None:  # type: ignore[override]
        """List the suggested slices (most informative first) and jump to the first."""
        self.suggestion = suggestion
        self.list.clear()
        top = max(suggestion.scores.values(), default=0.0) or 1.0
        for rank, index in enumerate(suggestion.slices, 1):
            score = suggestion.scores.get(index, 0.0) / top
            item = QListWidgetItem(f"{rank}. slice {index} (disagreement {100 * score:.0f} %)")
            item.setData(Qt.ItemDataRole.UserRole, int(index))
            self.list.addItem(item)
        if suggestion.slices:
            self.list.setCurrentRow(0)
            self.on_jump(int(suggestion.slices[0]))
            notify_info(
                "correct these slices, most informative first: "
                + ", ".join(str(z) for z in suggestion.slices)
            )

    def step(self) -> None:
        """Go to the next suggestion (wrapping around)."""
        if not self.list.count():
            return
        row = (self.list.currentRow() + 1) % self.list.count()
        self.list.setCurrentRow(row)
        self.on_jump(int(self.list.item(row).data(Qt.ItemDataRole.UserRole)))

    def _finished(self) -> None:
        self.worker = None
        self.button.setEnabled(True)
        self.button.setText("Suggest slices")

    def stop(self) -> None:
        self.cancel.cancel()
