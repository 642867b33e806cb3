"""The Segment dock's input controls: image/channels, model, sampler, scope, device."""

from __future__ import annotations

import html
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

from napari_medsegdiff.checkpoints import read_model_info, recommended_sampler
from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.errors import MedSegDiffError
from napari_medsegdiff.gui import layers as L
from napari_medsegdiff.gui.review_panel import ReviewPanel
from napari_medsegdiff.gui.sections import Tabs, page
from napari_medsegdiff.gui.suggest_panel import SuggestPanel
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


TIPS = {
    "image": "The scan to segment (an Image layer; File > Open a NIfTI, or the sample data)",
    "channels": "Extra co-registered layers stacked as channels (for multi-sequence models)",
    "model": "The model that segments: the shipped default, your fine-tuned versions "
    "(newest first) or a folder (a training run's folder uses its best/ model)",
    "ensemble": "Samples drawn per slice (1-32). More samples: a steadier mask and a better "
    "uncertainty map; time grows linearly (ensemble x steps network passes per slice)",
    "steps": "Denoising steps per sample (1-1000). 20 is plenty with DPM-Solver++; DDPM needs "
    "hundreds. Time grows linearly (ensemble x steps network passes per slice)",
    "sampler": "How the noise is removed: DPM-Solver++ (fast, default), DDIM (deterministic), "
    "DDPM (the original; needs many steps). Same cost per step",
    "fusion": "How the ensemble's samples become one mask: mean = average probability "
    "(default); vote = majority of the samples; STAPLE = weights each sample by its "
    "estimated reliability (EM). Costs next to nothing",
    "scope": "Which slices to run: the current slice (quick look), a slice range, the whole "
    "volume (minutes on a CPU), or a 2-D image",
    "range": "Slices start..stop-1 along the slider (stop is exclusive)",
    "device": "Where to compute: auto picks a GPU (cuda / mps) if present, else the CPU",
    "seed": "Random seed: the same seed, model and settings give the same mask",
    "keep": "Never overwrite slices you edited or marked reviewed; a re-run skips them "
    "and says which",
    "run": "Segment the chosen slices (masks appear as slices finish)",
    "cancel": "Stop within one denoising step; finished slices are kept",
    "review": "Mark the slice on screen as checked: it is kept on re-runs and used as "
    "training data by the Fine-tune dock",
    "top_only": "Show only the most uncertain tenth of the boundary voxels",
    "three_d": "Show the uncertainty alone in 3-D (maximum intensity projection: where along "
    "the volume the samples disagree); click again for 2-D with the layers as they were",
    "legend": "The mask's colours and class names (from the model); hovering the image "
    "shows the class under the cursor in the status bar",
    "export": "Save the mask as NIfTI aligned voxel for voxel with the source scan",
    "export_variance": "Also save the variance (uncertainty) map beside the mask",
}


def cost_text(ensemble: int, steps: int, slices: int | None = None) -> str:
    """'5 x 20 = 100 network passes per slice' (and the run's total when known)."""
    text = f"{ensemble} x {steps} = {ensemble * steps} network passes per slice"
    if slices:
        text += f"; {slices} slice(s): {ensemble * steps * slices}"
    return text


class SegmentControls(QWidget):
    """Widgets of the Segment dock; the dock adds the run, review and export logic.

    Layout: image and model on top; tabs "Run", "Sampling" and "Review" (each scrolls);
    Run / Cancel and the progress bar always visible at the bottom.
    """

    viewer: Any
    chunk_size: int | None

    def _build_ui(self) -> None:
        self._make_inputs()
        self._make_sampling()
        self._make_review()
        top = QFormLayout()
        top.addRow("Image", self.image_combo)
        top.addRow("Model", self.model_picker)
        self.tabs = Tabs()
        self.tabs.add_page("Run", self._run_page(), "What to segment")
        self.tabs.add_page("Sampling", self._sampling_page(), "Ensemble, steps, sampler: cost")
        self.tabs.add_page("Review", self._review_page(), "Uncertainty, review, export")
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.tabs, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        self._on_scope_changed(self.scope.currentText())
        self._update_cost()

    def _make_inputs(self) -> None:
        self.image_combo = LayerCombo(self.viewer, is_input_image)
        self.image_combo.currentTextChanged.connect(self._on_image_changed)
        self.channel_list = QListWidget()
        self.channel_list.setMaximumHeight(70)
        self.volumes = QLineEdit()
        self.volumes.setPlaceholderText("the volume shown (or e.g. 0,3)")
        self.volumes.setToolTip(
            "Volumes of a 4-D series (fMRI, DWI) used as the model's channels; "
            "empty = the volume shown"
        )
        self.model_picker = ModelPicker()
        self.scope = QComboBox()
        self.scope.addItems(SCOPES)
        self.scope.setCurrentText("current slice")  # a first run is a quick look
        self.scope.currentTextChanged.connect(self._on_scope_changed)
        self.range_start, self.range_stop = _spin(0, 0, 0), _spin(1, 1, 1)
        self.range_row = QWidget()
        row = QHBoxLayout(self.range_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("start"))
        row.addWidget(self.range_start)
        row.addWidget(QLabel("stop (excl.)"))
        row.addWidget(self.range_stop)
        self.keep_corrections = QCheckBox("keep my corrections")
        self.keep_corrections.setChecked(True)
        self.run_button, self.cancel_button = QPushButton("Run"), QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)  # a reset bar (value -1) would show no text at all
        self.progress.setTextVisible(True)
        self.progress.setFormat("ready: choose the slices, then Run")
        for widget, key in (
            (self.image_combo, "image"),
            (self.channel_list, "channels"),
            (self.model_picker.combo, "model"),
            (self.scope, "scope"),
            (self.range_start, "range"),
            (self.range_stop, "range"),
            (self.keep_corrections, "keep"),
            (self.run_button, "run"),
            (self.cancel_button, "cancel"),
        ):
            widget.setToolTip(TIPS[key])

    def _make_sampling(self) -> None:
        self.ensemble = _spin(1, 32, 5)
        self.steps = _spin(1, 1000, 20)
        self.sampler = QComboBox()
        self.sampler.addItems(list(SAMPLERS))
        self.fusion = QComboBox()
        self.fusion.addItems(list(FUSIONS))
        self.device = device_combo()
        self.seed = _spin(0, 2**31 - 1, 0)
        self.cost_label = QLabel()
        self.cost_label.setWordWrap(True)
        self.model_picker.changed.connect(self._apply_recommended)
        self.ensemble.valueChanged.connect(self._update_cost)
        self.steps.valueChanged.connect(self._update_cost)
        for widget, key in (
            (self.ensemble, "ensemble"),
            (self.steps, "steps"),
            (self.sampler, "sampler"),
            (self.fusion, "fusion"),
            (self.device, "device"),
            (self.seed, "seed"),
        ):
            widget.setToolTip(TIPS[key])
        self.cost_label.setToolTip(TIPS["ensemble"])

    def _make_review(self) -> None:
        self.count_label = QLabel("no mask yet")
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.legend.setToolTip(TIPS["legend"])
        self.review_button = QPushButton("Mark slice reviewed")
        self.review_button.clicked.connect(lambda: self.mark_reviewed())
        self.review = ReviewPanel(self.jump_to, self.refresh_review)
        self.suggest = SuggestPanel(self.suggest_inputs, self.jump_to)
        self.top_only = QCheckBox("only the most uncertain")
        self.top_only.toggled.connect(lambda _: self.update_uncertainty_display())
        self.three_d = QPushButton("3-D view")
        self.three_d.setCheckable(True)
        self.three_d.toggled.connect(self.show_3d)
        self.export_button = QPushButton("Export mask…")
        self.export_button.clicked.connect(self._export_clicked)
        self.export_variance = QCheckBox("also variance")
        for widget, key in (
            (self.review_button, "review"),
            (self.top_only, "top_only"),
            (self.three_d, "three_d"),
            (self.export_button, "export"),
            (self.export_variance, "export_variance"),
        ):
            widget.setToolTip(TIPS[key])

    def _run_page(self) -> QWidget:
        widget, layout = page()
        form = QFormLayout()
        form.addRow("Extra channels", self.channel_list)
        form.addRow("Volumes", self.volumes)
        form.addRow("Scope", self.scope)
        form.addRow("Range", self.range_row)
        self._form = form
        layout.addLayout(form)
        layout.addWidget(self.keep_corrections)
        layout.addStretch(1)
        return widget

    def _sampling_page(self) -> QWidget:
        widget, layout = page()
        form = QFormLayout()
        form.addRow("Ensemble", self.ensemble)
        form.addRow("Steps", self.steps)
        form.addRow("Cost", self.cost_label)
        form.addRow("Sampler", self.sampler)
        form.addRow("Fusion", self.fusion)
        form.addRow("Seed", self.seed)
        form.addRow("Device", self.device)
        layout.addLayout(form)
        layout.addStretch(1)
        return widget

    def _review_page(self) -> QWidget:
        widget, layout = page()
        status = QHBoxLayout()
        status.addWidget(self.count_label, 1)
        status.addWidget(self.review_button)
        display = QHBoxLayout()
        display.addWidget(self.top_only, 1)
        display.addWidget(self.three_d)
        export = QHBoxLayout()
        export.addWidget(self.export_button)
        export.addWidget(self.export_variance)
        layout.addLayout(status)
        layout.addWidget(self.legend)
        layout.addWidget(self.suggest)
        layout.addLayout(display)
        layout.addWidget(self.review)
        layout.addLayout(export)
        layout.addStretch(1)
        return widget

    def set_legend(self, entries: list[tuple[str, tuple[float, ...]]]) -> None:
        """Show ``[(class name, rgba), ...]`` as coloured squares with names."""
        parts = []
        for name, rgba in entries:
            r, g, b = (int(255 * float(c)) for c in rgba[:3])
            parts.append(f'<span style="color: rgb({r},{g},{b})">■</span> {html.escape(name)}')
        self.legend.setText("&nbsp;&nbsp;".join(parts))

    def _apply_recommended(self, path: str) -> None:
        """Take the model's recommended ensemble / steps / seed (config.json), if it has any."""
        if not path:
            return
        try:
            meta = read_model_info(path).meta
        except MedSegDiffError:
            return  # reported when the model is used
        values = recommended_sampler(meta)
        for key, box in (("ensemble", self.ensemble), ("steps", self.steps), ("seed", self.seed)):
            if key in values:
                box.setValue(int(values[key]))

    def _update_cost(self, *_: Any) -> None:
        self.cost_label.setText(cost_text(self.ensemble.value(), self.steps.value()))

    def update_uncertainty_display(self) -> None:
        """Hook for the dock: re-derive the variance layer's contrast limits."""

    def show_3d(self, on: bool) -> None:
        """Hook for the dock: toggle a 3-D view of the uncertainty."""

    def suggest_inputs(self) -> tuple[Any, str, Any, list[int]]:
        """Hook for the dock: (model, device, volume, corrected slices) for "Suggest"."""
        raise NotImplementedError

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
                    self.scope.setCurrentText("current slice")
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
