"""Work folders: one scan's annotation state on disk, saved atomically, resumable.

::

    <root>/<scan stem>-<key>/          key: hash of the scan's path and content
        current/                        the latest save, swapped in whole (a kill at any
            state.json                  moment leaves the previous save or the new one)
            labels.npy                  (z, y, x) the user's labels, the layer's dtype
            proposal.npy                (z, y, x) the model's proposal
            variance.npy                (z, y, x) float32 ensemble variance (if any)
        history/<UTC stamp>-<reason>/   snapshots (exports, fine-tunes): the same files

Arrays are stored in display order (napari's axes), exactly as the layers hold them, so a
restore is byte for byte; ``state.json`` keeps the source geometry, so the CLI reads a
work folder as ``--labels`` / ``--proposal`` (:func:`read_work_labels`). Arrays that did
not change since the last save are hard-linked, not rewritten: an autosave during
painting writes only the labels. No Qt here (the GUI's autosaver runs this in a thread).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medsegdiff.errors import InputError
from napari_medsegdiff.folder_io import fsync_files, swap_into_place, write_json_synced
from napari_medsegdiff.volume import Volume, VolumeGeometry

STATE = "state.json"
CURRENT = "current"
HISTORY = "history"
ARRAYS = ("labels", "proposal", "variance")
_FORMAT = 1
_HASH_SAMPLES = 1 << 22  # content hash reads at most ~4 M evenly spaced voxels


def default_root() -> Path:
    """``$MEDSEGDIFF_WORK``, else the user's data folder (``$XDG_DATA_HOME`` or
    ``~/.local/share``) ``/napari-medsegdiff/work``."""
    env = os.environ.get("MEDSEGDIFF_WORK")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "napari-medsegdiff" / "work"


def beside_root(scan_path: str | Path) -> Path:
    """The root for work folders kept beside a scan: ``<scan folder>/medsegdiff-work``."""
    return Path(scan_path).resolve().parent / "medsegdiff-work"


def scan_key(path: str | Path | None, data: np.ndarray) -> str:
    """16 hex digits from the scan's resolved path, shape, dtype and (sampled) voxels.

    Two scans with the same file name in different folders get different keys; so does a
    file replaced by other content at the same path.
    """
    digest = hashlib.blake2b(digest_size=8)
    digest.update(str(Path(path).resolve() if path else "").encode())
    arr = np.asarray(data)
    digest.update(f"{arr.shape}|{arr.dtype}".encode())
    flat = arr.reshape(-1)
    step = max(1, flat.size // _HASH_SAMPLES)
    digest.update(np.ascontiguousarray(flat[::step]).tobytes())
    return digest.hexdigest()


def folder_for(root: str | Path, name: str, key: str) -> Path:
    """``root/<name>-<key>`` with the name made safe for any file system."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "scan"
    return Path(root) / f"{stem[:60]}-{key}"


@dataclass
class WorkState:
    """What a work folder holds. Arrays are (z, y, x) (or (y, x)) in display order."""

    labels: np.ndarray | None
    proposal: np.ndarray | None
    variance: np.ndarray | None = None
    segmented: list[int] = field(default_factory=list)
    reviewed: list[int] = field(default_factory=list)
    corrected: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    colors: dict[str, list[float]] = field(default_factory=dict)
    model: str = ""
    scan: str = ""
    geometry: dict[str, Any] | None = None
    reason: str = "autosave"
    saved_at: str = ""

    def summary(self) -> dict[str, Any]:
        """The JSON part (everything but the arrays)."""
        return {
            "format": _FORMAT,
            "saved_at": self.saved_at,
            "reason": self.reason,
            "scan": self.scan,
            "model": self.model,
            "segmented": [int(i) for i in self.segmented],
            "reviewed": [int(i) for i in self.reviewed],
            "corrected": [int(i) for i in self.corrected],
            "class_names": list(self.class_names),
            "colors": {str(k): [float(c) for c in v] for k, v in self.colors.items()},
            "geometry": self.geometry,
        }


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def save(folder: str | Path, state: WorkState, keep: Collection[str] = ()) -> Path:
    """Write ``state`` as ``folder/current`` atomically; returns the current/ path.

    Arrays named in ``keep`` are taken from the previous save (hard links) instead of
    ``state``; an array that is None is not stored. Raises OSError (disk full, read-only)
    with the previous save intact.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    current = folder / CURRENT
    for stale in folder.glob(f".{CURRENT}.tmp-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder / f".{CURRENT}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        for name in ARRAYS:
            target = tmp / f"{name}.npy"
            if name in keep and (current / f"{name}.npy").exists():
                _link_or_copy(current / f"{name}.npy", target)
                continue
            arr = getattr(state, name)
            if arr is not None:
                with open(target, "wb") as fh:
                    np.save(fh, np.asarray(arr), allow_pickle=False)
        state.saved_at = _now()
        fsync_files(tmp)
        write_json_synced(tmp / STATE, state.summary())  # last: its presence marks a whole save
        if current.exists():
            swap_into_place(tmp, current)
        else:
            os.replace(tmp, current)
        _fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return current


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_summary(save_dir: str | Path) -> dict[str, Any]:
    """``state.json`` of a save (a work folder means its current/ save)."""
    save_dir = _save_dir(save_dir)
    try:
        return json.loads((save_dir / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{save_dir}: not a readable work-folder save ({exc})") from None


def load(save_dir: str | Path) -> WorkState:
    """The state of a save (``folder`` = its current/ save, or a history/ snapshot)."""
    save_dir = _save_dir(save_dir)
    meta = read_summary(save_dir)
    arrays: dict[str, np.ndarray | None] = {}
    for name in ARRAYS:
        path = save_dir / f"{name}.npy"
        arrays[name] = np.load(path, allow_pickle=False) if path.exists() else None
    return WorkState(
        labels=arrays["labels"],
        proposal=arrays["proposal"],
        variance=arrays["variance"],
        segmented=list(meta.get("segmented", [])),
        reviewed=list(meta.get("reviewed", [])),
        corrected=list(meta.get("corrected", [])),
        class_names=list(meta.get("class_names", [])),
        colors=dict(meta.get("colors", {})),
        model=str(meta.get("model", "")),
        scan=str(meta.get("scan", "")),
        geometry=meta.get("geometry"),
        reason=str(meta.get("reason", "")),
        saved_at=str(meta.get("saved_at", "")),
    )


def _save_dir(path: str | Path) -> Path:
    path = Path(path)
    return path / CURRENT if (path / CURRENT / STATE).exists() else path


def is_work_folder(path: str | Path) -> bool:
    """True for a work folder (or one of its saves)."""
    return (_save_dir(path) / STATE).is_file()


def snapshot(folder: str | Path, reason: str) -> Path:
    """Keep the current save as ``history/<UTC stamp>-<reason>`` (hard links)."""
    folder = Path(folder)
    current = folder / CURRENT
    if not (current / STATE).exists():
        raise InputError(f"{folder}: nothing saved yet to keep a snapshot of")
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    slug = re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-") or "snapshot"
    target = folder / HISTORY / f"{stamp}-{slug}"
    tmp = folder / HISTORY / f".{target.name}.tmp"
    tmp.mkdir(parents=True)
    for child in current.iterdir():
        _link_or_copy(child, tmp / child.name)
    os.replace(tmp, target)
    return target


def history(folder: str | Path) -> list[Path]:
    """Snapshots, newest first."""
    base = Path(folder) / HISTORY
    if not base.is_dir():
        return []
    saves = [p for p in base.iterdir() if not p.name.startswith(".") and (p / STATE).exists()]
    return sorted(saves, key=lambda p: p.name, reverse=True)


def describe(summary: dict[str, Any]) -> str:
    """``"saved 2026-12-07 14:02 (export): 5 corrected, 2 reviewed, 181 segmented slices"``."""
    when = summary.get("saved_at", "")
    try:
        local = _dt.datetime.fromisoformat(when).astimezone()
        when = local.strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        pass
    counts = ", ".join(
        f"{len(summary.get(key, []))} {key}" for key in ("corrected", "reviewed", "segmented")
    )
    return f"saved {when} ({summary.get('reason', '?')}): {counts} slices"


def read_work_labels(path: str | Path, which: str = "labels") -> Volume:
    """A work folder's labels or proposal as a labels :class:`Volume` (for the CLI)."""
    if which not in ("labels", "proposal"):
        raise ValueError(which)
    state = load(path)
    arr = getattr(state, which)
    if arr is None or arr.ndim != 3:
        raise InputError(f"{path}: the work folder holds no 3-D {which}")
    geometry = VolumeGeometry.from_metadata(state.geometry)
    if tuple(arr.shape) != tuple(geometry.display_shape):
        raise InputError(f"{path}: {which} shape {arr.shape} does not match its scan geometry")
    return Volume(data=np.asarray(arr, dtype=np.int64), geometry=geometry, paths=(Path(path),))


def read_labels_input(path: str | Path, which: str = "labels") -> Volume:
    """``--labels`` / ``--proposal``: a labels NIfTI, or a work folder's ``which`` array."""
    from napari_medsegdiff.nifti import read_labels

    if Path(path).is_dir() and is_work_folder(path):
        return read_work_labels(path, which)
    return read_labels(path)
