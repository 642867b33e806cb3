"""The Segment dock's input controls: image/channels, model, sampler, scope, device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.gui import layers as L
from napari_medsegdiff.gui.review_panel import ReviewPanel
from napari_medsegdiff.gui.widgets import LayerCombo, ModelPicker, device_combo

SCOPES = ("current slice", "slice range", "whole volume", "2-D image")
SAMPLERS = {"DPM-Solver++": "dpm++", "DDIM": "ddim", "DDPM": "ddpm"}
FUSIONS = {"mean": "mean", "vote": "vote", "STAPLE": "staple"}


def _spin(lo: int, hi: int, value: int) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    return box


def _set_row_visible(form: QFormLayout, field: QWidget, visible: bool) -> None:
    if hasattr(form, "setRowVisible"):  # Qt >= 6.4
        form.setRowVisible(field, visible)
        return
    field.setVisible(visible)
    label = form.labelForField(field)
    if label is not None:
        label.setVisible(visible)


def is_input_image(layer: Any) -> bool:
    return isinstance(layer, Image) and not L.is_result_layer(layer)


class SegmentControls(QWidget):
    """Widgets of the Segment dock; the dock adds the run, review and export logic."""

    viewer: Any
    chunk_size: int | None

    def _build_ui(self) -> None:
        self.image_combo = LayerCombo(self.viewer, is_input_image)
        self.image_combo.currentTextChanged.connect(self._on_image_changed)
        self.channel_list = QListWidget()
        self.channel_list.setMaximumHeight(70)
        self.channel_list.setToolTip("Extra co-registered layers stacked as channels")
        self.volumes = QLineEdit()
        self.volumes.setPlaceholderText("the volume shown (or e.g. 0,3)")
        self.volumes.setToolTip("Volumes of a 4-D series used as the model's channels")
        self.model_picker = ModelPicker()
        self.ensemble = _spin(1, 32, 5)
        self.steps = _spin(1, 1000, 20)
        self.sampler = QComboBox()
        self.sampler.addItems(list(SAMPLERS))
        self.fusion = QComboBox()
        self.fusion.addItems(list(FUSIONS))
        self.scope = QComboBox()
        self.scope.addItems(SCOPES)
        self.scope.setCurrentText("whole volume")
        self.scope.currentTextChanged.connect(self._on_scope_changed)
        self.range_start, self.range_stop = _spin(0, 0, 0), _spin(1, 1, 1)
        self.range_row = QWidget()
        row = QHBoxLayout(self.range_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("start"))
        row.addWidget(self.range_start)
        row.addWidget(QLabel("stop"))
        row.addWidget(self.range_stop)
        self.device = device_combo()
        self.seed = _spin(0, 2**31 - 1, 0)
        self.keep_corrections = QCheckBox("keep my corrections")
        self.keep_corrections.setChecked(True)
        self.keep_corrections.setToolTip("Never overwrite slices you edited or marked reviewed")
        self.run_button, self.cancel_button = QPushButton("Run"), QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.count_label = QLabel("no mask yet")
        self.review_button = QPushButton("Mark slice reviewed")
        self.review_button.clicked.connect(lambda: self.mark_reviewed())
        self.review = ReviewPanel(self.jump_to, self.refresh_review)
        self.export_button = QPushButton("Export mask…")
        self.export_button.clicked.connect(self._export_clicked)
        self.export_variance = QCheckBox("also variance")

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Extra channels", self.channel_list)
        form.addRow("Volumes", self.volumes)
        form.addRow("Model", self.model_picker)
        form.addRow("Ensemble", self.ensemble)
        form.addRow("Steps", self.steps)
        form.addRow("Sampler", self.sampler)
        form.addRow("Fusion", self.fusion)
        form.addRow("Scope", self.scope)
        form.addRow("Range", self.range_row)
        form.addRow("Device", self.device)
        form.addRow("Seed", self.seed)
        self._form = form
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        status = QHBoxLayout()
        status.addWidget(self.count_label, 1)
        status.addWidget(self.review_button)
        export = QHBoxLayout()
        export.addWidget(self.export_button)
        export.addWidget(self.export_variance)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.keep_corrections)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addLayout(status)
        layout.addWidget(self.review)
        layout.addLayout(export)
        layout.addStretch(1)
        self._on_scope_changed(self.scope.currentText())

    def _on_scope_changed(self, scope: str) -> None:
        _set_row_visible(self._form, self.range_row, scope == "slice range")

    def _on_image_changed(self, *_: Any) -> None:
        image = self.image_combo.layer()
        self.channel_list.clear()
        if image is not None:
            shape = L.spatial_shape(image)
            if len(shape) == 2 and self.scope.currentText() != "2-D image":
                self.scope.setCurrentText("2-D image")
            elif len(shape) == 3:
                if self.scope.currentText() == "2-D image":
                    self.scope.setCurrentText("whole volume")
                self.range_start.setRange(0, shape[0] - 1)
                self.range_stop.setRange(1, shape[0])
                self.range_stop.setValue(shape[0])
            stem = L.result_names(image.name)[0]
            for layer in self.image_combo.layers():
                if layer is image or L.spatial_shape(layer) != shape or layer.rgb:
                    continue
                item = QListWidgetItem(layer.name)
                sibling = L.result_names(layer.name)[0] == stem and "[c" in layer.name
                item.setCheckState(Qt.CheckState.Checked if sibling else Qt.CheckState.Unchecked)
                self.channel_list.addItem(item)
        _set_row_visible(self._form, self.channel_list, self.channel_list.count() > 0)
        series = image is not None and L.is_volume_series(image)
        _set_row_visible(self._form, self.volumes, series)
        self._after_image_changed()

    def _after_image_changed(self) -> None:
        """Hook for the dock: the chosen image (hence its mask layer) changed."""

    # -------------------------------------------------------------- inputs
    def select_model(self, path: str | Path) -> None:
        """Select a model folder in the model combo (used by the Fine-tune dock)."""
        self.model_picker.select_model(path)

    def input_layers(self) -> list[Any]:
        image = self.image_combo.layer()
        if image is None:
            return []
        names = {
            self.channel_list.item(i).text()
            for i in range(self.channel_list.count())
            if self.channel_list.item(i).checkState() == Qt.CheckState.Checked
        }
        return [image] + [lay for lay in self.image_combo.layers() if lay.name in names]

    def volume_picks(self, image: Any) -> list[int]:
        """Series volumes used as channels: the field's list, else the volume shown."""
        if not L.is_volume_series(image):
            return [0]
        text = self.volumes.text().strip()
        if not text:
            return [L.shown_volume(self.viewer, image)]
        return L.parse_volumes(text, image.data.shape[0])

    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(
            sampler=SAMPLERS[self.sampler.currentText()],
            steps=self.steps.value(),
            ensemble=self.ensemble.value(),
            fusion=FUSIONS[self.fusion.currentText()],
            seed=self.seed.value(),
            chunk_size=self.chunk_size,
        )
