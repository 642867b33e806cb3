"""The Segment dock's "Correct" tab: fill between slices and propagate (a mixin + panel).

* **Fill between slices**: the slices you painted (labels differ from the proposal) are
  interpolated onto the slices between them, per label (:mod:`napari_medsegdiff.interpolate`,
  ITK's morphological contour interpolation). Filled slices become the proposal there
  (they are not corrections); painted and reviewed slices are never touched; one undo
  (Ctrl+Z on the mask) takes the fill back, and the proposal follows.
* **Propagate**: segment the next n slices above or below the current one with the
  chosen model (the newest version after a fine-tune), then move there; Alt+Up / Alt+Down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

from napari_medsegdiff.errors import MedSegDiffError
from napari_medsegdiff.gui import layers as L
from napari_medsegdiff.gui.widgets import notify_error, notify_info, slice_list

TIPS = {
    "fill": "Interpolate the slices you painted onto the slices between them (shape-based, "
    "per label, as ITK-SNAP / 3D Slicer do). Painted and reviewed slices are kept; "
    "Ctrl+Z on the mask undoes the fill",
    "up": "Segment the next slices above the current one with the chosen model (Alt+Up)",
    "down": "Segment the next slices below the current one with the chosen model (Alt+Down)",
    "count": "How many slices Propagate segments",
}


class CorrectPanel(QWidget):
    """Buttons of the Correct tab; the dock connects them."""

    def __init__(self) -> None:
        super().__init__()
        self.fill_button = QPushButton("Fill between slices")
        self.status = QLabel("paint a structure on two or more slices, then fill between")
        self.status.setWordWrap(True)
        self.count = QSpinBox()
        self.count.setRange(1, 50)
        self.count.setValue(3)
        self.up_button = QPushButton("Propagate ↑")
        self.down_button = QPushButton("Propagate ↓")
        for widget, key in (
            (self.fill_button, "fill"),
            (self.up_button, "up"),
            (self.down_button, "down"),
            (self.count, "count"),
        ):
            widget.setToolTip(TIPS[key])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.fill_button)
        layout.addWidget(self.status)
        row = QHBoxLayout()
        row.addWidget(self.down_button)
        row.addWidget(self.count)
        row.addWidget(self.up_button)
        layout.addLayout(row)
        layout.addStretch(1)


class FillRecord:
    """The last fill, so an undo / redo of it keeps the proposal in step with the labels."""

    def __init__(self, slices: Sequence[int], before: np.ndarray, after: np.ndarray) -> None:
        self.slices = list(slices)
        self.before, self.after = before, after  # (n, y, x) proposal before / labels after

    def sync(self, labels: np.ndarray, proposal: np.ndarray) -> None:
        for i, z in enumerate(self.slices):
            if np.array_equal(labels[z], self.before[i]):
                proposal[z] = self.before[i]  # undone
            elif np.array_equal(labels[z], self.after[i]):
                proposal[z] = self.after[i]  # redone


class CorrectMixin:
    """Fill between slices and Propagate for the Segment dock."""

    viewer: Any
    tabs: Any
    running: bool

    def _init_correct(self) -> None:
        self.correct = CorrectPanel()
        self.tabs.add_page("Correct", self.correct, "Fill between slices, propagate")
        self.correct.fill_button.clicked.connect(lambda: self.fill_between_slices())
        self.correct.up_button.clicked.connect(lambda: self.propagate(+1))
        self.correct.down_button.clicked.connect(lambda: self.propagate(-1))
        self._fill: FillRecord | None = None
        for key, direction in (("Alt-Up", +1), ("Alt-Down", -1)):
            self.viewer.bind_key(key, lambda _v, d=direction: self.propagate(d), overwrite=True)

    def fill_between_slices(self) -> bool:
        """Start the fill in a worker (the first use loads ITK, ~10 s); ``fill_finished``
        carries the filled slices. False if it did not start."""
        from napari.qt.threading import create_worker

        from napari_medsegdiff.interpolate import fill_between

        mask = self.mask_layer()  # type: ignore[attr-defined]
        if mask is None or L.labels_of(mask).ndim != 3:
            notify_error("fill between slices: paint on a volume's mask first (run Segment)")
            return False
        painted = L.corrected(mask)
        if len(painted) < 2:
            notify_error("fill between slices: paint the structure on at least two slices")
            return False
        worker = create_worker(fill_between, np.array(L.labels_of(mask)), painted)
        worker.returned.connect(lambda fill: self._apply_fill(mask, fill))
        worker.errored.connect(lambda exc: self._fill_failed(exc))
        self.correct.fill_button.setEnabled(False)
        self.correct.status.setText(f"filling between {slice_list(painted)}…")
        worker.start()
        return True

    def _fill_failed(self, exc: BaseException) -> None:
        self.correct.fill_button.setEnabled(True)
        message = str(exc) if isinstance(exc, MedSegDiffError) else f"{type(exc).__name__}: {exc}"
        notify_error(f"fill between slices: {message}")
        self.correct.status.setText("fill failed")
        self.fill_finished.emit([])  # type: ignore[attr-defined]

    def _apply_fill(self, mask: Any, fill: Any) -> None:
        """Write the fill into the slices still unpainted and unreviewed (one undo step)."""
        self.correct.fill_button.setEnabled(True)
        labels = L.labels_of(mask)
        protected = set(L.corrected(mask)) | set(L.reviewed(mask))  # also painted meanwhile
        slices = [z for z in fill.filled if z not in protected]
        if not slices:
            notify_info("fill between slices: no unpainted slice between the painted ones")
            self.fill_finished.emit([])  # type: ignore[attr-defined]
            return
        proposal = L.as_volume(mask.metadata[L.PROPOSAL])
        new = fill.labels[slices]
        zz = np.asarray(slices)
        changed = np.nonzero(labels[zz] != new)
        self._fill = FillRecord(slices, proposal[slices].copy(), new.copy())
        proposal[slices] = new  # proposals, not corrections
        if changed[0].size:
            mask.data_setitem((zz[changed[0]], changed[1], changed[2]), new[changed])
        mask.refresh()
        text = (
            f"filled {len(slices)} slice(s) between painted {slice_list(list(fill.painted))}: "
            f"{slice_list(slices)}"
        )
        self.correct.status.setText(text)
        notify_info(text)
        self.fill_finished.emit(slices)  # type: ignore[attr-defined]

    def _sync_fill(self, *_: Any) -> None:
        """After an undo / redo of the last fill, keep the proposal equal to the labels there."""
        mask = self.mask_layer()  # type: ignore[attr-defined]
        if self._fill is None or mask is None:
            return
        labels = L.labels_of(mask)
        proposal = mask.metadata.get(L.PROPOSAL)
        if isinstance(proposal, np.ndarray) and proposal.shape == labels.shape:
            self._fill.sync(labels, proposal)

    def propagate(self, direction: int) -> bool:
        """Segment the next ``count`` slices above (+1) or below (-1) the current one."""
        image = self.image_combo.layer()  # type: ignore[attr-defined]
        if image is None or len(L.spatial_shape(image)) != 3:
            notify_error("propagate: open a volume first")
            return False
        depth = L.spatial_shape(image)[0]
        here = L.current_index(self.viewer, image)
        steps = range(1, self.correct.count.value() + 1)
        slices = [here + direction * k for k in steps if 0 <= here + direction * k < depth]
        if not slices:
            notify_info("propagate: no slice left in that direction")
            return False
        started = self.run(slices=sorted(slices))  # type: ignore[attr-defined]
        if started:
            L.jump_to_slice(self.viewer, image, slices[0])
        return bool(started)
