"""The Segment dock's work folder: autosave of its masks, restore, snapshots (a mixin).

The dock supplies ``viewer``, ``image_combo``, ``tabs``, ``model_picker``, ``running``,
``mask_layer()``, ``select_model()``, ``refresh_review()``, ``update_counts()`` and
``_watch_mask()``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from napari_medsegdiff import workfolder as wf
from napari_medsegdiff.errors import MedSegDiffError
from napari_medsegdiff.gui import layers as L
from napari_medsegdiff.gui.autosave import Autosaver, existing_work_folder, work_folder_of
from napari_medsegdiff.gui.widgets import notify_error, notify_info, short_path
from napari_medsegdiff.gui.work_panel import WorkPanel, restore_layers

log = logging.getLogger(__name__)


class WorkFolderMixin:
    """Autosave / restore / history for the Segment dock."""

    viewer: Any
    image_combo: Any
    tabs: Any
    model_picker: Any
    running: bool

    def _init_work(self) -> None:
        self.autosave = Autosaver()
        self.work = WorkPanel(self.restore_work)
        self.tabs.add_page("Work", self.work, "Autosave, restore, snapshots")
        self.autosave.saved.connect(self._on_work_saved)
        self.destroyed.connect(self.autosave.close)  # type: ignore[attr-defined]
        self._offered: Path | None = None

    def _track_work(self, image: Any, mask: Any, variance: Any) -> None:
        """Autosave ``mask`` into the image's work folder; a save made in an earlier
        session that is not being continued is kept as a snapshot, never overwritten."""
        if self.autosave.track_of(mask) is not None:
            return
        try:
            beside = self.work.beside.isChecked()
            folder = existing_work_folder(image) or work_folder_of(image, beside)
            if wf.is_work_folder(folder):
                wf.snapshot(folder, "earlier session")
            self.autosave.track(mask, variance, folder)
            self.work.show_folder(folder, restorable=False)
        except (OSError, MedSegDiffError) as exc:  # the run goes on; the layers are untouched
            log.warning("work folder unavailable", exc_info=exc)
            notify_error(f"autosave is off for this scan: {exc}")

    def _show_work(self) -> None:
        image = self.image_combo.layer()
        mask = self.mask_layer()
        track = self.autosave.track_of(mask) if mask is not None else None
        if track is not None:
            self.work.show_folder(track.folder, restorable=False)
            return
        try:
            folder = None if image is None else existing_work_folder(image)
        except Exception as exc:  # a layer without array data, an unreadable folder
            log.warning("work folder lookup failed", exc_info=exc)
            folder = None
        self.work.show_folder(folder, restorable=folder is not None)
        if folder is not None and self._offered != folder:
            self._offered = folder
            try:
                summary = wf.describe(wf.read_summary(folder))
            except MedSegDiffError as exc:
                notify_error(f"saved work for {image.name} cannot be read: {exc}")
                return
            notify_info(f"{image.name}: saved work found ({summary}); Work tab > Restore")

    def restore_work(self, save_dir: Path) -> bool:
        """Put a save (the last one, or a snapshot) back into the chosen image's layers."""
        image = self.image_combo.layer()
        if image is None or self.running:
            notify_info("choose the scan first (and wait for a running segmentation)")
            return False
        folder = save_dir.parent if save_dir.name == wf.CURRENT else save_dir.parent.parent
        mask = self.mask_layer()
        try:
            if mask is not None and self.autosave.track_of(mask) is not None:
                self.autosave.save_now(mask, "before going back", snapshot=True)
                self.autosave.wait()
            model = self.model_picker.current_path()
            mask, variance = restore_layers(self.viewer, image, save_dir, str(model or ""))
        except (MedSegDiffError, OSError, ValueError) as exc:
            notify_error(f"could not restore {short_path(save_dir)}: {exc}")
            return False
        model_path = mask.metadata.get(L.MODEL)
        if model_path and Path(model_path).exists():
            self.select_model(model_path)
        track = self.autosave.track(mask, variance, folder, saved=save_dir.name == wf.CURRENT)
        if save_dir.name != wf.CURRENT:  # went back: the snapshot becomes the current save
            self.autosave.save_now(mask, "went back")
        self._watch_mask()
        self.refresh_review()
        self.update_counts()
        self.work.show_folder(track.folder, restorable=False)
        notify_info(f"restored {image.name} from {short_path(save_dir)}")
        return True

    def _on_work_saved(self, folder: str) -> None:
        mask = self.mask_layer()
        track = self.autosave.track_of(mask) if mask is not None else None
        if track is not None and str(track.folder) == folder:
            self.work.show_folder(track.folder, restorable=False)

    def work_saved(self, mask: Any, reason: str) -> None:
        """Save now and keep a snapshot (the Fine-tune dock calls this after a version)."""
        self.autosave.save_now(mask, reason, snapshot=True)
