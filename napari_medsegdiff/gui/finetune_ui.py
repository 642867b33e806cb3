"""The Fine-tune dock's controls: labels, image, base model, plan, training settings."""

from __future__ import annotations

from typing import Any

from napari.layers import Image, Labels
from qtpy.QtGui import QDoubleValidator
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_medsegdiff.config import FINETUNE_LR, FINETUNE_STEPS
from napari_medsegdiff.gui import layers as L
from napari_medsegdiff.gui.finetune_plan import MODES
from napari_medsegdiff.gui.loss_plot import LossPlot
from napari_medsegdiff.gui.sections import Tabs, page
from napari_medsegdiff.gui.widgets import LayerCombo, ModelPicker, device_combo

NO_LABELS = "choose the corrected labels…"


class FinetuneControls(QWidget):
    """Widgets of the Fine-tune dock; the dock adds the plan, run and re-segment logic.

    Layout: labels, image and base model on top; tabs "Data" (the plan), "Training" and
    "Curve" (each scrolls); Start, progress and Re-segment always visible at the bottom.
    """

    viewer: Any

    def _build_ui(self) -> None:
        self.labels_combo = LayerCombo(
            self.viewer,
            lambda lay: isinstance(lay, Labels),
            prefer=lambda lay: lay.metadata.get(L.ROLE) == "mask",  # masks the Segment dock made
            placeholder=NO_LABELS,
        )
        self.labels_combo.currentTextChanged.connect(self._on_labels_changed)
        self.image_combo = LayerCombo(
            self.viewer, lambda lay: isinstance(lay, Image) and not L.is_result_layer(lay)
        )
        self.model_picker = ModelPicker()
        self.steps = QSpinBox()
        self.steps.setRange(1, 100_000)
        self.steps.setValue(FINETUNE_STEPS)
        self.lr = QLineEdit(f"{FINETUNE_LR:g}")
        self.lr.setValidator(QDoubleValidator(1e-9, 1.0, 12))
        self.device = device_combo()
        self.holdout = QComboBox()
        self.holdout.addItems(list(MODES))
        self.holdout.currentTextChanged.connect(lambda _: self.update_counts())
        self.new_model = QCheckBox("new model from these labels")
        self.new_model.toggled.connect(lambda _: self.update_counts())
        self.count_label = QLabel("")
        self.count_label.setWordWrap(True)
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self._start_stop)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)  # a reset bar (value -1) shows no text
        self.progress.setFormat("ready: correct some slices, then Start")
        self.progress.setTextVisible(True)
        self.plot = LossPlot()
        self.resegment_button = QPushButton("Re-segment uncorrected slices")
        self.resegment_button.setEnabled(False)
        self.resegment_button.clicked.connect(lambda: self.resegment())
        self._set_tooltips()
        top = QFormLayout()
        top.addRow("Corrected labels", self.labels_combo)
        top.addRow("Image", self.image_combo)
        top.addRow("Base model", self.model_picker)
        self.tabs = Tabs()
        data, data_layout = page()
        data_form = QFormLayout()
        data_form.addRow("Held out", self.holdout)
        data_layout.addLayout(data_form)
        data_layout.addWidget(self.new_model)
        data_layout.addWidget(self.count_label)
        data_layout.addStretch(1)
        self.tabs.add_page("Data", data, "Which slices train and which are held out")
        training, train_layout = page()
        form = QFormLayout()
        form.addRow("Steps", self.steps)
        form.addRow("Learning rate", self.lr)
        form.addRow("Device", self.device)
        train_layout.addLayout(form)
        train_layout.addStretch(1)
        self.tabs.add_page("Training", training, "Steps, learning rate, device")
        curve, curve_layout = page()
        curve_layout.addWidget(self.plot)
        self.tabs.add_page("Curve", curve, "Loss and held-out Dice while training")
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.start_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.resegment_button)

    def _set_tooltips(self) -> None:
        tips = {
            self.labels_combo: "The labels to learn from: a mask the Segment dock made (after "
            "your corrections), or any labels layer you choose here",
            self.image_combo: "The scan those labels belong to",
            self.model_picker.combo: "The model to start from; the result is a new version, "
            "the base stays as it is",
            self.steps: "Training steps (batches of 4 slices). Time grows linearly: about "
            "half a second per step on a 2-core laptop CPU with the default model",
            self.lr: "Learning rate (AdamW); the default was chosen by measurement "
            "(benchmarks/finetune.py). Higher learns faster from few slices but may forget "
            "what the model knew",
            self.device: "Where to train: auto picks a GPU (cuda / mps) if present, else the CPU",
            self.new_model: "Start a new model for exactly the label values in these labels "
            "(background included), keeping only the base model's image weights: for a "
            "structure unrelated to the base model's classes. Unticked, label values above "
            "the base model's classes are added to it as new classes (you are asked once)",
            self.holdout: "Train on all slices (default: with 5 corrected slices, holding one "
            "out lowered Dice on the rest, see BENCHMARKS.md) and see the proposal's Dice, or "
            "hold out 1 in 5 slices (with at least 4) to measure Dice on slices not trained on",
            self.start_button: "Train a new model version on the slices listed above; "
            "click again to stop (the best weights so far are kept)",
            self.resegment_button: "Run the Segment dock with the new version on the segmented "
            "slices you neither corrected nor reviewed",
        }
        for widget, tip in tips.items():
            widget.setToolTip(tip)

    def _on_labels_changed(self, *_: Any) -> None:
        """Hook for the dock: the chosen labels layer changed."""

    def update_counts(self) -> None:
        """Hook for the dock: refresh the plan text."""

    def _start_stop(self) -> None:
        """Hook for the dock: Start / Stop clicked."""

    def resegment(self) -> bool:
        """Hook for the dock: re-segment with the new version."""
        return False
