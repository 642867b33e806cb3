"""The Fine-tune dock: learn from the user's corrected/reviewed slices into a new version."""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer, Signal

from napari_medsegdiff.checkpoints import class_names, read_model_info
from napari_medsegdiff.config import FinetuneSettings
from napari_medsegdiff.errors import InputError, MedSegDiffError
from napari_medsegdiff.gui import layers as L
from napari_medsegdiff.gui.finetune_plan import MODES, Plan, make_plan
from napari_medsegdiff.gui.finetune_ui import FinetuneControls
from napari_medsegdiff.gui.segment_dock import SegmentDock
from napari_medsegdiff.gui.widgets import (
    find_dock,
    notify_error,
    notify_info,
    short_path,
)
from napari_medsegdiff.gui.worker_dock import WorkerDock
from napari_medsegdiff.gui.workers import progress_text
from napari_medsegdiff.heads import ClassPlan, plan_classes

PLOT_MS = 300  # curve and progress redraws at most ~3 times per second


@dataclass(frozen=True)
class FinetuneJob:
    """One fine-tuning run, as the dock read it from its controls and layers."""

    model: Path
    image: np.ndarray  # (z, y, x[, c])
    labels: np.ndarray  # (z, y, x), a copy taken at start
    settings: FinetuneSettings  # steps, lr, hold-out, ...
    device: str
    layer: Any  # the napari labels layer (re-segmenting writes back into it)
    plan: Plan  # what trains and what is held out
    classes: ClassPlan  # keep / grow / new head
    model_name: str
    model_classes: list[str]
    slices: list[int]
    reviewed: list[int]
    new_model: bool
    class_names: dict[int, str] = field(default_factory=dict)


class FinetuneDock(FinetuneControls, WorkerDock):
    """Fine-tune the proposal's model on corrected + reviewed slices (a new store version)."""

    finished = Signal(object)  # FinetuneResult or None
    job_name = "fine-tuning"
    memory_advice = "use fewer steps per batch or the cpu device"

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._segment_ref: Any = None
        self.result: Any = None
        self._job: FinetuneJob | None = None
        self._seen: tuple | None = None
        self._class_answers: dict[tuple, dict[int, str]] = {}
        self._init_worker(PLOT_MS)
        self._build_ui()
        self._count_timer = QTimer(self)  # corrections/reviews change as the user paints
        self._count_timer.setInterval(1000)
        self._count_timer.timeout.connect(self.update_counts)
        self._count_timer.start()
        self._on_labels_changed()

    # -------------------------------------------------------------- inputs
    @property
    def segment_dock(self) -> SegmentDock | None:
        """The Segment dock of this viewer (set explicitly, or found in the window)."""
        dock = self._segment_ref() if self._segment_ref is not None else None
        return dock or find_dock(self, SegmentDock)

    @segment_dock.setter
    def segment_dock(self, dock: SegmentDock | None) -> None:
        self._segment_ref = weakref.ref(dock) if dock is not None else None

    def _on_labels_changed(self, *_: Any) -> None:
        self._seen = None
        self.update_counts()

    def _follow_labels(self, labels: Any) -> None:
        """Default the image and base model to those that made the proposal."""
        seen = (id(labels), labels.metadata.get(L.SOURCE_LINK), labels.metadata.get(L.MODEL))
        if seen == self._seen:
            return
        self._seen = seen
        source, model = L.source_image(self.viewer, labels), seen[2]
        if source is not None and source in self.image_combo.layers():
            self.image_combo.setCurrentText(source.name)
        if model and Path(model).is_dir():
            self.model_picker.select_model(model)

    def plan(self) -> Plan:
        """What a Start would train on and hold out (see :mod:`finetune_plan`)."""
        labels = self.labels_combo.layer()
        if labels is None:
            return Plan(note="Choose the corrected labels: segment a scan first, then fix its mask")
        lab = L.as_volume(L.labels_of(labels))
        proposal = labels.metadata.get(L.PROPOSAL)
        if isinstance(proposal, np.ndarray) and L.as_volume(proposal).shape == lab.shape:
            proposal = L.as_volume(proposal)
        else:
            proposal = None
        return make_plan(lab, proposal, L.reviewed(labels), MODES[self.holdout.currentText()])

    def training_counts(self) -> tuple[int, int]:
        """(corrected, reviewed) slice counts of the chosen labels layer."""
        plan = self.plan()
        return len(plan.corrected), len(plan.reviewed)

    def update_counts(self) -> None:
        """Refresh the plan text (and follow a new proposal's image/model)."""
        if self.running:
            return
        labels = self.labels_combo.layer()
        if labels is not None:
            self._follow_labels(labels)
        plan = self.plan()
        self.count_label.setText(plan.note)
        if self.progress.format().startswith("ready"):
            self.progress.setFormat(
                f"ready: Start trains on {len(plan.train)} slice(s)"
                if plan.ready
                else "ready: correct some slices, then Start"
            )

    def _image_data(self, image: Any, channels: int) -> np.ndarray:
        """The image (z, y, x) or, for a multi-channel model, its ``[cN]`` siblings stacked."""
        if channels == 1:
            return np.asarray(image.data)
        base = L.result_names(image.name)[0]
        siblings = [
            lay
            for lay in self.image_combo.layers()
            if L.result_names(lay.name)[0] == base and "[c" in lay.name
        ]
        siblings.sort(key=lambda lay: lay.metadata.get("channel", 0))
        if len(siblings) != channels:
            raise InputError(
                f"model expects {channels} channels but {len(siblings)} channel "
                f"layers named like {image.name!r} are open"
            )
        return L.stack_channels(siblings)

    def _prepare(self) -> FinetuneJob:
        labels, image = self.labels_combo.layer(), self.image_combo.layer()
        if labels is None:
            raise InputError("no labels layer: segment a scan first, then correct its mask")
        if image is None:
            raise InputError("no image layer: open the scan the labels belong to")
        model = self.model_picker.current_path()
        if model is None:
            raise InputError("no base model: pick one or click Browse…")
        try:
            lr = float(self.lr.text())
        except ValueError:
            raise InputError(f"learning rate: not a number: {self.lr.text()!r}") from None
        info = read_model_info(model)
        if L.is_volume_series(image):  # the volumes the proposal was made from
            volumes = labels.metadata.get(L.VOLUME_PICKS) or [L.shown_volume(self.viewer, image)]
            data = L.stack_channels([image], [int(v) for v in volumes])
        else:
            data = self._image_data(image, info.config.in_channels)
        lab = np.array(L.as_volume(L.labels_of(labels)))  # a copy: painting goes on
        plan = self.plan()
        if not plan.ready:
            raise InputError(plan.note)
        classes = plan_classes(info.config.num_classes, lab, self.new_model.isChecked())
        if len(L.spatial_shape(image)) == 2:  # a 2-D image is a one-slice volume
            data = data[None]
        return FinetuneJob(
            model=model,
            image=data,
            labels=lab,
            settings=FinetuneSettings(steps=self.steps.value(), lr=lr, holdout=plan.holdout),
            device=self.device.currentText(),
            layer=labels,
            plan=plan,
            classes=classes,
            model_name=info.name,
            model_classes=class_names(info.meta, info.config.num_classes),
            slices=plan.train + plan.held_out,
            reviewed=L.reviewed(labels),
            new_model=self.new_model.isChecked(),
        )

    def confirm_classes(self, job: FinetuneJob) -> dict[int, str] | None:
        """Names for the classes a job adds, asked once per (model, classes); None = no."""
        plan = job.classes
        if not plan.added:
            return {}
        key = (str(job.model), plan.mode, plan.added)
        if key not in self._class_answers:
            names = self.ask_class_names(job.model_name, job.model_classes, plan)
            if names is None:
                return None
            self._class_answers[key] = names
        return self._class_answers[key]

    def ask_class_names(
        self, model_name: str, known: list[str], plan: ClassPlan
    ) -> dict[int, str] | None:
        """Ask whether to add the new label values as classes, and their names."""
        from qtpy.QtWidgets import QInputDialog

        names: dict[int, str] = {}
        for value in plan.added:
            if plan.mode == "new":
                question = (
                    f"New model for your labels (image weights from {model_name!r}).\n"
                    f"Name of label {value}:"
                )
            else:
                question = (
                    f"Label {value} is not a class of model {model_name!r} "
                    f"({', '.join(known)}).\nAdd it as a new class named:"
                )
            text, ok = QInputDialog.getText(self, "New class", question, text=f"class {value}")
            if not ok:
                return None
            names[value] = text.strip() or f"class {value}"
        return names

    # ------------------------------------------------------------------ run
    def _start_stop(self) -> None:
        if self.running:
            self.stop()
        else:
            self.start()

    def start(self) -> bool:
        """Start fine-tuning in a worker; False (with a notification) if it cannot start."""
        from napari_medsegdiff.finetune import finetune

        if self.running:
            return False
        try:
            job = self._prepare()
        except MedSegDiffError as exc:
            notify_error(exc)
            return False
        names = self.confirm_classes(job)
        if names is None:
            notify_info("fine-tuning not started: the new classes were not confirmed")
            return False
        job = dataclasses.replace(job, class_names=names)
        self._job, self.result = job, None
        relay, cancel = self._new_run(job.device)
        worker = create_worker(
            finetune,
            job.model,
            job.image,
            job.labels,
            settings=job.settings,
            device=job.device,
            slices=job.slices,
            reviewed=job.reviewed,
            new_model=job.new_model,
            class_names=job.class_names,
            on_progress=relay,
            cancel=cancel,
            _ignore_errors=True,
        )
        worker.returned.connect(self._on_returned)
        self.plot.clear()
        self.start_button.setText("Stop")
        self.resegment_button.setEnabled(False)
        self.progress.setValue(0)
        self.progress.setFormat(f"0/{job.settings.steps} steps (preparing)")
        self._start_worker(worker)
        return True

    def stop(self) -> None:
        """Stop training; the best weights so far are saved as a partial version."""
        if self._request_cancel():
            self.start_button.setEnabled(False)
            self.progress.setFormat("stopping (saving the best so far)…")

    def _tick(self) -> None:
        latest, points = self._relay.take()
        if points:
            self.plot.add(points)
            self.plot.redraw()
        if latest is not None and not self._stopping:
            self.progress.setValue(int(1000 * latest.fraction))
            text = progress_text(latest, "steps")
            if latest.loss is not None:
                text += f", loss {latest.loss:.4f}"
            self.progress.setFormat(text)

    def _on_returned(self, result: Any) -> None:
        self.result = result
        notify_info(self._result_text(result))
        self.model_picker.refresh()
        dock = self.segment_dock
        if dock is not None:
            dock.select_model(result.path)
            if self._job is not None:
                dock.work_saved(self._job.layer, f"fine-tune {result.path.name}")
        self.resegment_button.setEnabled(True)

    def _result_text(self, result: Any) -> str:
        """The summary with a short path and, when nothing was held out, the proposal's Dice."""
        text = result.summary().replace(str(result.path), short_path(result.path))
        plan = self._job.plan if self._job else None
        if result.held_out_dice is None and plan is not None:
            text += "; trained on all slices, none held out"
            if plan.proposal_dice is not None:
                text += f" (proposal vs corrections Dice {plan.proposal_dice:.3f} before tuning)"
        return text

    def _on_finished(self) -> None:
        self._tick()
        self.start_button.setText("Start")
        self.start_button.setEnabled(True)
        if self.result is not None:
            partial = " (partial)" if self.result.provenance.get("partial") else ""
            self.progress.setValue(1000)
            self.progress.setFormat(f"saved {self.result.path.name}{partial}")
        elif self._cancelled:  # stopped before the first step: the engine saved nothing
            self.progress.setFormat("stopped before the first step: no version saved")
            notify_info("fine-tuning stopped before the first step; no version saved")
        else:
            self.progress.setFormat("failed")
        self.update_counts()
        self.finished.emit(self.result)

    def resegment(self) -> bool:
        """Run the Segment dock with the new model on slices not corrected or reviewed."""
        dock, labels = self.segment_dock, self._job.layer if self._job else None
        if dock is None or self.result is None or labels is None:
            notify_error("nothing to re-segment: fine-tune first (with the Segment dock open)")
            return False
        keep = set(L.corrected(labels)) | set(L.reviewed(labels))
        depth = L.as_volume(L.labels_of(labels)).shape[0]
        done = labels.metadata.get(L.SEGMENTED) or range(depth)
        slices = [z for z in done if z not in keep]
        if not slices:
            notify_info("every segmented slice is corrected or reviewed: nothing to re-segment")
            return False
        source = L.source_image(self.viewer, labels)
        if source is not None:
            dock.image_combo.setCurrentText(source.name)
        dock.select_model(self.result.path)
        return dock.run(slices=slices, model=self.result.path)
