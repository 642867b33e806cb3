"""Small reusable widgets: a layer combo that follows the viewer, a model picker."""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.utils import notifications
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QPushButton, QWidget

from napari_medsegdiff.checkpoints import (
    PROVENANCE,
    ModelEntry,
    list_models,
    read_model_info,
    training_run_model,
)
from napari_medsegdiff.devices import available_devices
from napari_medsegdiff.errors import MedSegDiffError

_PATH = re.compile(r"(?<![\w.~])(?:~|/)[^\s'\"(),;:]*/[^\s'\"(),;:]+")


def fit_paths(text: str, width: int = 60) -> str:
    """Long absolute paths in a message shortened (home as ``~``, middle elided)."""
    return _PATH.sub(lambda m: short_path(m.group(0), width), text)


def notify_error(exc: BaseException | str) -> None:
    """Show a user error as a napari notification (plain message, no traceback)."""
    notifications.show_error(fit_paths(str(exc)))


def notify_info(message: str) -> None:
    notifications.show_info(fit_paths(message))


def short_path(path: str | Path, width: int = 60) -> str:
    """A path that fits a notification: ``~`` for home, the middle elided, the name kept."""
    text = str(Path(path))
    home = str(Path.home())
    if text.startswith(home + os.sep):
        text = "~" + text[len(home) :]
    if len(text) <= width:
        return text
    name = Path(text).name
    head = max(4, width - len(name) - 2)
    return f"{text[:head]}…{os.sep}{name}"


def slice_list(indices: list[int], limit: int = 8) -> str:
    """``[3, 4, 5, 9]`` -> ``3-5, 9`` (runs joined, long lists shortened)."""
    runs: list[list[int]] = []
    for z in sorted(set(indices)):
        if runs and z == runs[-1][-1] + 1:
            runs[-1].append(z)
        else:
            runs.append([z])
    parts = [f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs]
    more = f" (+{len(parts) - limit} more)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


class LayerCombo(QComboBox):
    """The viewer's layers accepted by ``accept``; follows add/remove/rename by identity.

    With ``placeholder``, nothing is chosen automatically except layers ``prefer`` accepts
    (e.g. masks the Segment dock made); the user may still pick any listed layer.
    """

    def __init__(
        self,
        viewer: Any,
        accept: Callable[[Any], bool],
        prefer: Callable[[Any], bool] | None = None,
        parent=None,
        placeholder: str | None = None,
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.accept = accept
        self.prefer = prefer
        self.placeholder = placeholder
        self._chosen: Any = None  # weakref to the chosen layer: survives renames
        self.currentIndexChanged.connect(self._remember)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.reordered.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _remember(self, *_: Any) -> None:
        layer = self.layer()
        self._chosen = weakref.ref(layer) if layer is not None else None

    def _on_inserted(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.refresh)
        had = len(self.layers()) - (1 if layer is not None and self.accept(layer) else 0)
        self.refresh()
        if layer is not None and self.accept(layer):
            first = had == 0 and self.placeholder is None
            if first or (self.prefer and self.prefer(layer)):
                self.setCurrentText(layer.name)

    def layers(self) -> list[Any]:
        return [layer for layer in self.viewer.layers if self.accept(layer)]

    def refresh(self, event: Any = None) -> None:
        chosen = self._chosen() if self._chosen is not None else None
        layers = self.layers()
        current = chosen.name if chosen is not None and chosen in layers else self.currentText()
        names = [layer.name for layer in layers]
        items = ([self.placeholder] if self.placeholder is not None else []) + names
        if items == [self.itemText(i) for i in range(self.count())]:
            if current in names and current != self.currentText():
                self.setCurrentText(current)
            return
        self.blockSignals(True)
        self.clear()
        self.addItems(items)
        self.blockSignals(False)
        if current in names:
            self.setCurrentText(current)
        else:
            preferred = [lay.name for lay in layers if self.prefer and self.prefer(lay)]
            if preferred:
                self.setCurrentText(preferred[0])
            elif self.placeholder is not None:
                self.setCurrentIndex(0)
            elif names:
                self.setCurrentText(names[0])
        self._remember()
        self.currentTextChanged.emit(self.currentText())

    def layer(self) -> Any | None:
        if self.placeholder is not None and self.currentIndex() == 0:
            return None
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
        entries = [(model_label(e), str(e.path)) for e in list_models()]
        known = {p for _, p in entries}
        entries += [(f"{p.name} (folder)", str(p)) for p in self._extra if str(p) not in known]
        self.combo.blockSignals(True)
        self.combo.clear()
        for label, path in entries:
            self.combo.addItem(label, path)
            tip = f"{label}\n{path}"
            self.combo.setItemData(self.combo.count() - 1, tip, 3)  # tooltip role
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
            self.open_folder(folder)

    def open_folder(self, folder: str | Path) -> bool:
        """Select a model folder, or a training run's best/ (else last/) model; say which."""
        path, note = training_run_model(folder)
        try:
            read_model_info(path)
        except MedSegDiffError as exc:
            notify_error(exc)
            return False
        if note:
            notify_info(note.replace(str(folder), short_path(folder)))
        self.select_model(path)
        return True


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


def model_label(entry: ModelEntry) -> str:
    """A readable combo label: ``default``, or ``default + 4 slices of scan · 02 Dec 14:05``."""
    if entry.is_default:
        return "default (shipped)"
    meta, prov = _json(entry.path / "config.json"), _json(entry.path / PROVENANCE)
    base = str(meta.get("base") or prov.get("base_model", {}).get("name") or entry.name)
    base = base.split("-ft-")[0]
    parts = [base]
    slices = prov.get("slices")
    if isinstance(slices, list) and slices:
        files = prov.get("image_files") or []
        scan = f" of {Path(files[0]).name.split('.')[0]}" if files else ""
        parts[0] += f" + {len(slices)} slices{scan}"
    when = _when(entry.created)
    if when:
        parts.append(when)
    label = " · ".join(parts)
    return label + (" (partial)" if entry.partial else "")


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _when(created: str) -> str:
    try:
        stamp = _dt.datetime.fromisoformat(created)
    except (TypeError, ValueError):
        return ""
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone()
    return stamp.strftime("%d %b %H:%M")
