"""The Segment dock: pick image + model + sampler, run in a worker, review, export."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer, Signal

from napari_medsegdiff.checkpoints import read_model_info
from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.errors import InputError, MedSegDiffError
from napari_medsegdiff.gui import layers as L
from napari_medsegdiff.gui.correct_dock import CorrectMixin
from napari_medsegdiff.gui.export import ask_export_target
from napari_medsegdiff.gui.segment_ui import SegmentControls, cost_text
from napari_medsegdiff.gui.widgets import notify_error, notify_info, short_path, slice_list
from napari_medsegdiff.gui.work_dock import WorkFolderMixin
from napari_medsegdiff.gui.worker_dock import WorkerDock
from napari_medsegdiff.gui.workers import RunProgress, SegmenterCache, cancel_all, segment_job
from napari_medsegdiff.nifti import write_image, write_labels
from napari_medsegdiff.review import display_limits, limits_from_values, review_volume
from napari_medsegdiff.volume import VolumeGeometry

log = logging.getLogger(__name__)
FLUSH_MS = 150  # layer refreshes at most ~7 times per second


@dataclass(frozen=True)
class SegmentJob:
    """One segmentation run, as the dock read it from its controls."""

    image: Any  # the (first) napari image layer
    volumes: tuple[int, ...]  # volumes of a 4-D series used as channels
    skipped: tuple[int, ...]  # corrected / reviewed slices left alone
    data: np.ndarray  # (z, y, x[, c]) or (y, x[, c])
    model: Path
    two_d: bool
    slices: tuple[int, ...]  # along display axis 0
    keep: bool  # keep corrections made during the run
    sampler: SamplerConfig
    device: str


class SegmentDock(SegmentControls, CorrectMixin, WorkFolderMixin, WorkerDock):
    """Segment the chosen image layer(s) slice by slice with a MedSegDiff ensemble."""

    run_finished = Signal()
    fill_finished = Signal(object)  # the slices "Fill between slices" filled
    job_name = "segmentation"
    memory_advice = "lower the ensemble size or the scope, or choose the cpu device"

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.cache = SegmenterCache()
        self.chunk_size: int | None = None  # members x slices per forward; None = measured
        self._hidden_for_3d: list[Any] = []  # layers the 3-D view hid, shown again after
        self._top_only_before_3d = False
        self._run_progress = RunProgress(1, 1)
        self._pending: list[Any] = []
        self._no_tissue = 0  # slices of this run skipped for holding no tissue
        self._writer: L.ResultWriter | None = None
        self._job: SegmentJob | None = None
        self._init_worker(FLUSH_MS)
        self._build_ui()
        self._init_correct()
        self._init_work()
        self.destroyed.connect(partial(cancel_all, self.suggest.tokens))
        self._count_timer = QTimer(self)
        self._count_timer.setSingleShot(True)
        self._count_timer.setInterval(300)
        self._count_timer.timeout.connect(self.update_counts)
        self._on_image_changed()

    # -------------------------------------------------------------- inputs
    def mask_layer(self) -> Any | None:
        """The mask made for the chosen image (found by identity: renaming keeps the link)."""
        image = self.image_combo.layer()
        return None if image is None else L.find_result(self.viewer, image, "mask")

    def variance_layer(self) -> Any | None:
        image = self.image_combo.layer()
        return None if image is None else L.find_result(self.viewer, image, "variance")

    def _selected_slices(self, image: Any) -> list[int]:
        depth = L.spatial_shape(image)[0]
        scope = self.scope.currentText()
        if scope == "current slice":
            return [L.current_index(self.viewer, image)]
        if scope == "slice range":
            start, stop = self.range_start.value(), self.range_stop.value()
            if not 0 <= start < stop <= depth:
                raise InputError(f"slice range {start}:{stop} is empty or outside 0:{depth}")
            return list(range(start, stop))
        return list(range(depth))

    def _prepare(self, slices: Sequence[int] | None, model: str | Path | None) -> SegmentJob | None:
        layers = self.input_layers()
        if not layers:
            raise InputError("no image layer: open a scan (File > Open) or load the sample data")
        image = layers[0]
        volumes = self.volume_picks(image)
        data = L.stack_channels(layers, volumes)
        model_path = Path(model) if model else self.model_picker.current_path()
        if model_path is None:
            raise InputError(
                "no model: install the default model, or click Browse… to pick a model folder"
            )
        shape = L.spatial_shape(image)
        two_d = len(shape) == 2
        info = read_model_info(model_path)
        channels = 3 if image.rgb else data.shape[-1] if data.ndim == len(shape) + 1 else 1
        if channels != info.config.in_channels:
            raise InputError(
                f"image has {channels} channel(s) but model {info.name!r} expects "
                f"{info.config.in_channels}: tick/untick extra channels or pick another model"
            )
        if self.scope.currentText() == "2-D image" and not two_d:
            raise InputError(
                f"scope '2-D image' needs a 2-D or RGB image layer; {image.name!r} is a volume "
                f"{shape}: choose 'current slice', a range or the whole volume"
            )
        if len(shape) not in (2, 3):
            raise InputError(f"{image.name!r}: expected a 2-D image or a 3-D volume, got {shape}")
        indices = [0] if two_d else list(slices) if slices is not None else None
        if indices is None:
            indices = self._selected_slices(image)
        mask = self.mask_layer()
        keep = self.keep_corrections.isChecked()
        skipped: list[int] = []
        if keep and mask is not None:
            protected = set(L.corrected(mask)) | set(L.reviewed(mask))
            skipped = [i for i in indices if i in protected]
            indices = [i for i in indices if i not in protected]
            if not indices:
                notify_info(
                    f"all {len(skipped)} selected slice(s) are corrected or reviewed; nothing "
                    "to run (untick 'keep my corrections' to overwrite them)"
                )
                return None
            if skipped:
                notify_info(
                    f"skipping {len(skipped)} slice(s) you corrected or reviewed: "
                    f"{slice_list(skipped)} (untick 'keep my corrections' to redo them)"
                )
        return SegmentJob(
            image=image,
            volumes=tuple(volumes),
            skipped=tuple(skipped),
            data=data,
            model=model_path,
            two_d=two_d,
            slices=tuple(indices),
            keep=keep,
            sampler=self.sampler_config(),
            device=self.device.currentText(),
        )

    def suggest_inputs(self) -> tuple[Path, str, np.ndarray, list[int]]:
        """(model, device, volume (z, y, x[, c]), slices already corrected or reviewed)."""
        layers = self.input_layers()
        if not layers:
            raise InputError("no image layer: open a scan first, then ask for suggestions")
        image = layers[0]
        if len(L.spatial_shape(image)) != 3:
            raise InputError(
                f"{image.name!r}: suggestions need a volume (a 2-D image is one slice)"
            )
        model = self.model_picker.current_path()
        if model is None:
            raise InputError("no model: pick one or click Browse…")
        data = L.stack_channels(layers, self.volume_picks(image))
        mask = self.mask_layer()
        done = sorted(set(L.corrected(mask)) | set(L.reviewed(mask))) if mask is not None else []
        return model, self.device.currentText(), data, done

    # ------------------------------------------------------------------ run
    @property
    def written(self) -> list[int]:
        """Slices written into the mask by the current (or last) run."""
        return list(self._writer.written) if self._writer else []

    def run(self, slices: Sequence[int] | None = None, model: str | Path | None = None) -> bool:
        """Start a segmentation (``slices`` overrides the scope); False if it did not start."""
        if self.running:
            notify_info("a segmentation is already running")
            return False
        try:
            job = self._prepare(slices, model)
        except MedSegDiffError as exc:
            notify_error(exc)
            return False
        if job is None:
            return False
        self.autosave.settle()  # a save still writing the proposal / variance finishes first
        mask, variance = L.ensure_result_layers(self.viewer, job.image, str(job.model))
        self._track_work(job.image, mask, variance)
        if L.is_volume_series(job.image):  # the Fine-tune dock trains on the same volumes
            mask.metadata[L.VOLUME_PICKS] = list(job.volumes)
        self._job, self._pending, self._no_tissue = job, [], 0
        self._writer = L.ResultWriter(mask, variance, job.keep)
        self._writer.top_only = self.top_only.isChecked()
        self._run_progress = RunProgress(len(job.slices), job.sampler.steps)
        self._watch_mask()
        relay, cancel = self._new_run(job.device)
        worker = create_worker(
            segment_job,
            self.cache,
            job.model,
            job.device,
            job.data,
            None if job.two_d else list(job.slices),
            job.sampler,
            relay,
            cancel,
            _ignore_errors=True,
        )
        worker.yielded.connect(self._pending.append)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        sampler, count = job.sampler, len(job.slices)
        cost = cost_text(sampler.ensemble, sampler.steps, count)
        self.progress.setFormat(f"0/{count} slices, {cost} (loading model)")
        self._start_worker(worker)
        return True

    def cancel(self) -> None:
        """Stop within one denoising step; finished slices are kept."""
        if self._request_cancel():
            self.cancel_button.setEnabled(False)
            self.progress.setFormat("cancelling…")

    def _tick(self) -> None:
        if self._pending and self._writer is not None:
            self._no_tissue += sum(bool(getattr(r, "skipped", False)) for r in self._pending)
            self._writer.pending.extend(self._pending)
            self._pending.clear()
            self._writer.flush()
        latest, _ = self._relay.take()
        if latest is not None and not self._stopping:
            fraction, text = self._run_progress.update(latest)
            self.progress.setValue(int(1000 * fraction))
            self.progress.setFormat(text)

    def _on_finished(self) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        try:
            self._tick()
        except Exception as exc:  # a layer problem must not leave the dock stuck
            log.error("could not write results", exc_info=exc)
            notify_error(f"could not write the results: {exc}")
        written = len(self._writer.written) if self._writer else 0
        skipped = len(self._writer.skipped) if self._writer else 0
        total = len(self._job.slices) if self._job else 0
        if self._cancelled:
            text = f"cancelled: {written}/{total} slices kept"
            notify_info(text)
        elif self._failed:
            text = "failed"
        else:
            text = f"done: {written}/{total} slices"
            if self._no_tissue:
                text += f" ({self._no_tissue} without tissue: background, not sampled)"
            if skipped:
                text += f" ({skipped} edited during the run kept)"
            before = list(self._job.skipped) if self._job else []
            if before:
                text += f"; skipped corrected/reviewed {slice_list(before)}"
        self.progress.setValue(int(1000 * written / max(1, total)))
        self.progress.setFormat(text)
        self.refresh_review()
        self.update_counts()
        if self._writer is not None and self._writer.written:
            self.autosave.save_now(self._writer.mask, "segmentation")
        self.run_finished.emit()

    # -------------------------------------------------- corrections, review
    def _after_image_changed(self) -> None:
        self._watch_mask()
        self.update_counts()
        if hasattr(self, "work"):
            self._show_work()

    def _watch_mask(self) -> None:
        mask = self.mask_layer()
        if mask is not None:
            mask.events.paint.connect(self._schedule_count)
            mask.events.data.connect(self._schedule_count)
            mask.events.paint.connect(self._sync_fill)
            mask.events.labels_update.connect(self._sync_fill)
            mask.events.set_data.connect(self._sync_fill)  # undo / redo only refresh

    def _schedule_count(self, event: Any = None) -> None:
        self._count_timer.start()

    def update_counts(self) -> tuple[int, int]:
        """Refresh the 'N slices corrected, M reviewed' label and legend; returns (N, M)."""
        mask = self.mask_layer()
        self.set_legend(L.class_legend(mask) if mask is not None else [])
        if mask is None:
            self.count_label.setText("no mask yet")
            return 0, 0
        n, m = len(L.corrected(mask)), len(L.reviewed(mask))
        self.count_label.setText(f"{n} slices corrected, {m} reviewed")
        return n, m

    def mark_reviewed(self, index: int | None = None) -> None:
        """Mark the current slice (or ``index``) of the mask as reviewed."""
        mask = self.mask_layer()
        if mask is None:
            notify_error("no mask to review: run a segmentation first")
            return
        L.mark_reviewed(mask, L.current_index(self.viewer, mask) if index is None else index)
        self.update_counts()

    def refresh_review(self) -> None:
        mask, variance = self.mask_layer(), self.variance_layer()
        if mask is None or variance is None or mask.data.ndim != 3:
            self.review.set_ranking([])
            return
        done = mask.metadata.get(L.SEGMENTED, [])
        ranking, shares, values = review_volume(variance.data, mask.data, done)
        self.review.set_ranking(ranking, shares)
        if not values.any():
            values = np.asarray(variance.data)[np.asarray(variance.data) > 0]
        variance.contrast_limits = limits_from_values(values, self.top_only.isChecked())

    def update_uncertainty_display(self) -> None:
        """Contrast limits from the boundary region (all of it, or its top tenth)."""
        mask, variance = self.mask_layer(), self.variance_layer()
        if mask is None or variance is None:
            return
        done = mask.metadata.get(L.SEGMENTED, [])
        var, labels = L.as_volume(np.asarray(variance.data)), L.as_volume(L.labels_of(mask))
        variance.contrast_limits = display_limits(var, labels, done, self.top_only.isChecked())
        if self._writer is not None:
            self._writer.top_only = self.top_only.isChecked()

    def show_3d(self, on: bool) -> None:
        """3-D view of the uncertainty alone (maximum intensity projection), or back to 2-D.

        The other layers are hidden in 3-D (they would hide the uncertainty) and only the
        most uncertain voxels are drawn; going back restores both.
        """
        variance = self.variance_layer()
        if on and variance is None:
            notify_info("no uncertainty yet: run a segmentation first")
            self.three_d.setChecked(False)
            return
        if on:
            others = [lay for lay in self.viewer.layers if lay is not variance]
            self._hidden_for_3d = [lay for lay in others if lay.visible]
            for layer in self._hidden_for_3d:
                layer.visible = False
            variance.visible = True
            variance.rendering = "mip"
            self._top_only_before_3d = self.top_only.isChecked()
            self.top_only.setChecked(True)  # a projection of everything saturates
        else:
            for layer in self._hidden_for_3d:
                if layer in self.viewer.layers:
                    layer.visible = True
            self._hidden_for_3d = []
            self.top_only.setChecked(self._top_only_before_3d)
        self.viewer.dims.ndisplay = 3 if on else 2

    def jump_to(self, index: int) -> None:
        layer = self.mask_layer() or self.image_combo.layer()
        if layer is not None:
            L.jump_to_slice(self.viewer, layer, index)

    # --------------------------------------------------------------- export
    def export(
        self, path: str | Path, overwrite: bool = False, variance_path: str | Path | None = None
    ) -> Path | None:
        """Write the mask (and optionally the variance) as NIfTI aligned with the scan."""
        mask = self.mask_layer()
        try:
            if mask is None:
                raise InputError("nothing to export: run a segmentation first")
            geometry = VolumeGeometry.from_metadata(mask.metadata)
            out = write_labels(L.labels_of(mask), like=geometry, path=path, overwrite=overwrite)
            variance = self.variance_layer()
            if variance_path is not None and variance is not None:
                write_image(variance.data, like=geometry, path=variance_path, overwrite=overwrite)
        except MedSegDiffError as exc:
            notify_error(exc)
            return None
        notify_info(f"saved {short_path(out)}")
        self.autosave.save_now(mask, f"export {out.name}", snapshot=True)
        return out

    def _export_clicked(self) -> None:
        image = self.image_combo.layer()
        default = f"{L.result_names(image.name)[0].replace(' ', '_')}.nii.gz" if image else ""
        target = ask_export_target(self, default, self.export_variance.isChecked())
        if target is not None:
            path, var_path, overwrite = target
            self.export(path, overwrite=overwrite, variance_path=var_path)
