"""Autosave: each mask's labels, proposal, slice state and variance go to its scan's work
folder (:mod:`napari_medsegdiff.workfolder`) a moment after each edit, off the GUI thread.

The GUI thread only copies the labels (one memcpy); the proposal and variance, which only
a run changes, are written from the layers (a run first waits for the save); the
worker thread computes the corrected slices and writes the save atomically. Edits made
while a save is running are saved right after it. A failed save (disk full, read-only)
gives one notification per failure streak and never touches the layers.
"""

from __future__ import annotations

import logging
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from napari_medsegdiff import workfolder as wf
from napari_medsegdiff.finetune import corrected_slices
from napari_medsegdiff.gui import layers as L
from napari_medsegdiff.gui.widgets import notify_error, notify_info, short_path

log = logging.getLogger(__name__)
AUTOSAVE_DELAY_MS = 2000  # a save starts at most this long after an edit
_EDIT_EVENTS = ("paint", "labels_update", "data", "set_data")


def image_path(image: Any) -> str | None:
    """The file or folder the image layer was opened from (None for layers made in code)."""
    source = getattr(image, "source", None)
    path = getattr(source, "path", None)
    return str(path) if path else None


def work_folder_of(image: Any, beside: bool = False) -> Path:
    """The image's work folder: under the user's data folder, or beside the scan."""
    path = image_path(image)
    root = wf.beside_root(path) if beside and path else wf.default_root()
    name = Path(path).name if path else image.name
    for suffix in (".gz", ".nii", ".nrrd", ".dcm"):
        name = name.removesuffix(suffix)
    return wf.folder_for(root, name, wf.scan_key(path or image.name, image.data))


def existing_work_folder(image: Any) -> Path | None:
    """A work folder already saved for this image (beside the scan first), else None."""
    for beside in (True, False):
        if beside and not image_path(image):
            continue
        folder = work_folder_of(image, beside)
        if wf.is_work_folder(folder):
            return folder
    return None


@dataclass(eq=False)
class Track:
    """One mask layer and where it is saved."""

    mask: Any
    variance: Any
    folder: Path
    dirty: set[str] = field(default_factory=lambda: set(wf.ARRAYS))
    saved_once: bool = False
    proposal: np.ndarray | None = None  # the proposal as last saved (for corrected slices)
    snapshot: str | None = None  # reason of a snapshot to keep after the next save
    reason: str = "autosave"


class Autosaver(QObject):
    """Saves tracked masks a moment after each edit and on demand (run, fine-tune, export)."""

    saved = Signal(str)  # the work folder, after each successful save
    _finished = Signal(object, object)  # (track, error or None), from the worker thread

    def __init__(self, parent: QObject | None = None, delay_ms: int = AUTOSAVE_DELAY_MS) -> None:
        super().__init__(parent)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="medsegdiff-autosave")
        self._tracks: dict[int, Track] = {}
        self._busy: Track | None = None
        self._future: Future | None = None
        self._failing = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self._save_dirty)
        self._finished.connect(self._on_finished)
        self.errors: list[str] = []

    # ------------------------------------------------------------ tracking
    def track(self, mask: Any, variance: Any, folder: Path, saved: bool = False) -> Track:
        """Start saving ``mask`` (and ``variance``) into ``folder``; ``saved``: the folder
        already holds this state (a restore), so only edits need writing."""
        key = id(mask)
        old = self._tracks.get(key)
        if old is not None and old.folder == folder:
            return old
        track = Track(mask, variance, Path(folder))
        if saved:
            track.dirty.clear()
            track.saved_once = True
            track.proposal = np.array(mask.metadata.get(L.PROPOSAL), copy=True)
        self._tracks[key] = track
        ref = weakref.ref(self)
        for name in _EDIT_EVENTS:
            getattr(mask.events, name).connect(lambda _e=None, m=mask: _edited(ref, m))
        return track

    def track_of(self, mask: Any) -> Track | None:
        return self._tracks.get(id(mask))

    def edited(self, mask: Any) -> None:
        """The user changed the labels: save within the delay (not later, while painting on)."""
        track = self.track_of(mask)
        if track is None:
            return
        track.dirty.add("labels")
        if not self._timer.isActive():
            self._timer.start()

    def save_now(self, mask: Any, reason: str, snapshot: bool = False) -> None:
        """Save everything about ``mask`` now (after a run, a fine-tune, an export)."""
        track = self.track_of(mask)
        if track is None:
            return
        track.dirty |= set(wf.ARRAYS)
        track.reason = reason
        if snapshot:
            track.snapshot = reason
        self._save_dirty()

    def settle(self, timeout: float = 60.0) -> None:
        """Wait for the save in flight (a run calls this before writing into the layers)."""
        future, track = self._future, self._busy
        if future is not None and track is not None:
            try:
                future.result(timeout)
            except Exception:  # reported by _on_finished
                pass
            self._on_finished(track, future.exception(timeout=0))

    def wait(self, timeout: float = 30.0) -> None:
        """Finish the save in flight and write anything still unsaved (window closing)."""
        for _ in range(2 + len(self._tracks)):
            self.settle(timeout)
            if self._failing or not any(t.dirty for t in self._tracks.values()):
                return
            self._save_dirty()

    def close(self, *_: object) -> None:
        """Write what is unsaved, then stop the thread (connected to the dock's ``destroyed``)."""
        self.wait()
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------- saving
    def _save_dirty(self) -> None:
        if self._busy is not None:
            return  # _on_finished saves what is still dirty
        for track in list(self._tracks.values()):
            if track.dirty and _alive(track.mask):
                self._submit(track)
                return

    def _submit(self, track: Track) -> None:
        mask = track.mask
        meta = mask.metadata
        dirty = set(track.dirty) if track.saved_once else set(wf.ARRAYS)
        # the labels change under the brush: copied (one memcpy on this thread); the
        # proposal and variance change only in a run, which waits for this save (settle)
        labels = np.array(L.labels_of(mask), copy=True) if "labels" in dirty else None
        if "proposal" in dirty:
            track.proposal = np.asarray(meta.get(L.PROPOSAL))
        variance = None
        if "variance" in dirty and track.variance is not None and _alive(track.variance):
            variance = np.asarray(track.variance.data)
        state = wf.WorkState(
            labels=labels,
            proposal=track.proposal if "proposal" in dirty else None,
            variance=variance,
            segmented=list(meta.get(L.SEGMENTED, [])),
            reviewed=L.reviewed(mask),
            class_names=_class_names(mask),
            colors=_colors(mask),
            model=str(meta.get(L.MODEL, "")),
            scan=str(meta.get(L.SOURCE, "")),
            geometry=meta.get("medsegdiff_geometry"),
            reason=track.reason,
        )
        keep = set(wf.ARRAYS) - dirty
        track.dirty.clear()
        track.reason = "autosave"
        snap, track.snapshot = track.snapshot, None
        self._busy = track
        self._attempt = (dirty, snap)
        proposal = track.proposal
        future = self._pool.submit(_write, track.folder, state, keep, snap, proposal)
        self._future = future
        future.add_done_callback(lambda f, t=track: self._report(t, f))

    def _report(self, track: Track, future: Future) -> None:
        self._finished.emit(track, future.exception())  # queued: handled on the GUI thread

    def _on_finished(self, track: Track, error: BaseException | None) -> None:
        if self._busy is not track:
            return  # already handled (wait() ran it first)
        self._busy, self._future = None, None
        if error is None:
            track.saved_once = True
            if self._failing:
                notify_info(f"autosave works again: {short_path(track.folder)}")
            self._failing = False
            self.saved.emit(str(track.folder))
        else:
            dirty, snap = self._attempt
            track.dirty |= dirty
            track.snapshot = track.snapshot or snap
            message = f"autosave failed ({short_path(track.folder)}): {_reason(error)}"
            self.errors.append(message)
            log.warning(message)
            if not self._failing:
                notify_error(
                    f"{message}. Your layers are untouched; free space or fix the folder, "
                    "then keep working (the next edit saves again) or export the mask"
                )
            self._failing = True
            return  # no retry loop: the next edit or run tries again
        if any(t.dirty for t in self._tracks.values()) and not self._timer.isActive():
            self._timer.start()


def _edited(ref: weakref.ReferenceType, mask: Any) -> None:
    saver = ref()
    if saver is not None:
        saver.edited(mask)


def _write(
    folder: Path, state: wf.WorkState, keep: set[str], snap: str | None, proposal: Any
) -> None:
    """Worker thread: corrected slices, the atomic save, the snapshot."""
    if state.labels is not None and proposal is not None:
        if proposal.shape == state.labels.shape:
            state.corrected = corrected_slices(L.as_volume(state.labels), L.as_volume(proposal))
    else:  # labels unchanged: so are the corrected slices
        try:
            state.corrected = wf.read_summary(folder).get("corrected", [])
        except Exception:
            state.corrected = []
    wf.save(folder, state, keep)
    if snap:
        wf.snapshot(folder, snap)


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _alive(layer: Any) -> bool:
    try:
        return layer.data is not None
    except RuntimeError:
        return False


def _class_names(mask: Any) -> list[str]:
    features = mask.features
    return [str(n) for n in features["class"]] if "class" in features else []


def _colors(mask: Any) -> dict[str, list[float]]:
    count = max(len(_class_names(mask)), len(L.MASK_COLORS) - 1)
    return {str(v): [float(c) for c in mask.colormap.map(v)] for v in range(count)}
