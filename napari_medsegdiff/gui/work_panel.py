"""The Segment dock's "Work" tab: where the work is saved, restore it, go back in history.

:func:`restore_layers` puts a save back into the mask and variance layers exactly (labels
and proposal byte for byte, segmented / reviewed slices, class names, the model).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_medsegdiff import workfolder as wf
from napari_medsegdiff.errors import InputError, MedSegDiffError
from napari_medsegdiff.gui import layers as L
from napari_medsegdiff.gui.widgets import short_path

TIPS = {
    "beside": "Keep this scan's work folder beside the scan (a 'medsegdiff-work' folder) "
    "instead of in your user data folder; applies from the next segmentation",
    "restore": "Bring back the labels, the model's proposal, the corrected / reviewed slices "
    "and the model from the last save",
    "history": "Snapshots kept at each export and fine-tune (newest first)",
    "back": "Replace the mask by the chosen snapshot (the current state is kept as a "
    "snapshot first)",
}


class WorkPanel(QWidget):
    """Status of the chosen image's work folder, Restore, and the snapshot history."""

    def __init__(self, on_restore: Callable[[Path], None]) -> None:
        super().__init__()
        self._on_restore = on_restore
        self.folder: Path | None = None
        self.status = QLabel("nothing saved yet: the first segmentation starts a work folder")
        self.status.setWordWrap(True)
        self.beside = QCheckBox("work folder beside the scan")
        self.restore_button = QPushButton("Restore saved work")
        self.restore_button.setEnabled(False)
        self.restore_button.clicked.connect(self._restore_clicked)
        self.history = QComboBox()
        self.back_button = QPushButton("Go back to this")
        self.back_button.setEnabled(False)
        self.back_button.clicked.connect(self._back_clicked)
        for widget, key in (
            (self.beside, "beside"),
            (self.restore_button, "restore"),
            (self.history, "history"),
            (self.back_button, "back"),
        ):
            widget.setToolTip(TIPS[key])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.status)
        layout.addWidget(self.beside)
        layout.addWidget(self.restore_button)
        row = QHBoxLayout()
        row.addWidget(self.history, 1)
        row.addWidget(self.back_button)
        layout.addLayout(row)
        layout.addStretch(1)

    def show_folder(self, folder: Path | None, restorable: bool) -> None:
        """Describe ``folder``; ``restorable``: offer Restore (no mask shown for it yet)."""
        self.folder = folder
        saved = folder is not None and wf.is_work_folder(folder)
        status = "nothing saved yet: the first segmentation starts a work folder"
        if saved:
            try:
                lead = "Saved work found" if restorable else "Autosaved"
                status = f"{lead}: {wf.describe(wf.read_summary(folder))}\n{short_path(folder)}"
            except MedSegDiffError as exc:  # a damaged state.json: say so, offer nothing
                saved, status = False, f"saved work cannot be read: {exc}"
        self.status.setText(status)
        self.restore_button.setEnabled(saved and restorable)
        self.history.clear()
        for snap in wf.history(folder) if folder is not None else []:
            try:
                self.history.addItem(wf.describe(wf.read_summary(snap)), str(snap))
            except MedSegDiffError:
                continue  # a damaged snapshot is not offered
        self.back_button.setEnabled(self.history.count() > 0)

    def _restore_clicked(self) -> None:
        if self.folder is not None:
            self._on_restore(self.folder / wf.CURRENT)

    def _back_clicked(self) -> None:
        path = self.history.currentData()
        if path:
            self._on_restore(Path(path))


def restore_layers(viewer: Any, image: Any, save_dir: Path, model: str) -> tuple[Any, Any]:
    """Put the save at ``save_dir`` into ``image``'s mask / variance layers (made if needed)."""
    state = wf.load(save_dir)
    shape = tuple(L.spatial_shape(image))
    for name in ("labels", "proposal"):
        arr = getattr(state, name)
        if arr is None or tuple(arr.shape) != shape:
            got = None if arr is None else tuple(arr.shape)
            raise InputError(f"{save_dir}: saved {name} {got} do not fit {image.name!r} {shape}")
    mask, variance = L.ensure_result_layers(viewer, image, state.model or model)
    meta = mask.metadata
    meta[L.PROPOSAL] = state.proposal
    meta[L.SEGMENTED] = sorted(int(i) for i in state.segmented)
    meta[L.REVIEWED] = sorted(int(i) for i in state.reviewed)
    if state.model:
        meta[L.MODEL] = state.model
    mask.data = state.labels
    if state.class_names:
        L.set_class_names(mask, state.class_names)
    if state.variance is not None and tuple(state.variance.shape) == shape:
        variance.data = state.variance
    mask.refresh()
    return mask, variance
