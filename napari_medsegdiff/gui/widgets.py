"""Small reusable widgets: a layer combo that follows the viewer, a model picker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.utils import notifications
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QPushButton, QWidget

from napari_medsegdiff.checkpoints import list_models, read_model_info
from napari_medsegdiff.devices import available_devices
from napari_medsegdiff.errors import MedSegDiffError


def notify_error(exc: BaseException | str) -> None:
    """Show a user error as a napari notification (plain message, no traceback)."""
    notifications.show_error(str(exc))


def notify_info(message: str) -> None:
    notifications.show_info(message)


class LayerCombo(QComboBox):
    """Names of the viewer's layers accepted by ``accept``; refreshes on add/remove/rename."""

    def __init__(
        self,
        viewer: Any,
        accept: Callable[[Any], bool],
        prefer: Callable[[Any], bool] | None = None,
        parent=None,
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.accept = accept
        self.prefer = prefer
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.reordered.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _on_inserted(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.refresh)
        had = self.count()
        self.refresh()
        if layer is not None and self.accept(layer):
            if had == 0 or (self.prefer and self.prefer(layer)):
                self.setCurrentText(layer.name)

    def layers(self) -> list[Any]:
        return [layer for layer in self.viewer.layers if self.accept(layer)]

    def refresh(self, event: Any = None) -> None:
        current = self.currentText()
        names = [layer.name for layer in self.layers()]
        if names == [self.itemText(i) for i in range(self.count())]:
            return
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        self.blockSignals(False)
        if current in names:
            self.setCurrentText(current)
        elif names:
            preferred = [
                n for n, lay in zip(names, self.layers()) if self.prefer and self.prefer(lay)
            ]
            self.setCurrentText(preferred[0] if preferred else names[0])
        self.currentTextChanged.emit(self.currentText())

    def layer(self) -> Any | None:
        name = self.currentText()
        for layer in self.layers():
            if layer.name == name:
                return layer
        return None


class ModelPicker(QWidget):
    """The shipped default + model-store versions (newest first) + folders browsed to."""

    changed = Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.combo = QComboBox()
        self.combo.setMinimumContentsLength(12)
        self.combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.browse_button = QPushButton("Browse…")
        self.browse_button.setToolTip("Pick a model folder (model.safetensors + config.json)")
        self.browse_button.clicked.connect(self.browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo, 1)
        layout.addWidget(self.browse_button)
        self._extra: list[Path] = []
        self.combo.currentIndexChanged.connect(lambda _: self.changed.emit(self.path_text()))
        self.refresh()

    def refresh(self) -> None:
        """Re-read the model list, keeping the current choice."""
        current = self.path_text()
        entries = [(e.label, str(e.path)) for e in list_models()]
        known = {p for _, p in entries}
        entries += [(f"{p.name} (folder)", str(p)) for p in self._extra if str(p) not in known]
        self.combo.blockSignals(True)
        self.combo.clear()
        for label, path in entries:
            self.combo.addItem(label, path)
            self.combo.setItemData(self.combo.count() - 1, path, 3)  # tooltip role
        if not entries:
            self.combo.addItem("no model installed: Browse…", "")
        self.combo.blockSignals(False)
        if current:
            self._set_current(current)

    def _set_current(self, path: str) -> bool:
        for i in range(self.combo.count()):
            if self.combo.itemData(i) and Path(self.combo.itemData(i)) == Path(path):
                self.combo.setCurrentIndex(i)
                return True
        return False

    def select_model(self, path: str | Path) -> None:
        """Select the model folder ``path`` (adding it to the list if needed)."""
        path = Path(path)
        self.refresh()
        if not self._set_current(str(path)):
            self._extra.append(path)
            self.refresh()
            self._set_current(str(path))

    def path_text(self) -> str:
        return str(self.combo.currentData() or "")

    def current_path(self) -> Path | None:
        text = self.path_text()
        return Path(text) if text else None

    def browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder")
        if folder:
            try:
                read_model_info(folder)
            except MedSegDiffError as exc:
                notify_error(exc)
                return
            self.select_model(folder)


def device_combo() -> QComboBox:
    combo = QComboBox()
    combo.addItems(["auto", *available_devices()])
    return combo


def find_dock(widget: QWidget, cls: type) -> Any | None:
    """The first ``cls`` widget in the same main window as ``widget`` (floating docks too)."""
    top = widget.window()
    while top.parentWidget() is not None:
        top = top.parentWidget().window()
    if isinstance(top, cls):
        return top
    found = top.findChildren(cls)
    return found[0] if found else None
