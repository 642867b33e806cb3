"""Folders written so that no reader ever sees half of one and no writer replaces another's.

* :func:`claim_and_fill` publishes a finished temporary folder under a new name, claimed
  with an exclusive ``os.mkdir`` (two writers racing for one name: exactly one wins).
* :func:`swap_into_place` replaces an existing folder so that a kill at any moment leaves
  one complete folder (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames with a
  restore).
* :func:`write_json_synced` / :func:`fsync_files` flush what was written to disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from napari_medsegdiff.errors import InputError


class FolderExistsError(InputError):
    """The folder a writer wanted to create is there already (another writer took it)."""


def claim_and_fill(tmp: Path, folder: Path) -> None:
    """Move the finished ``tmp`` to ``folder`` only if nobody else has that name.

    ``os.mkdir`` is the exclusive claim: of two writers racing for one name exactly one
    creates the (empty) folder; the winner then renames its finished folder onto its own
    empty claim (POSIX rename replaces an empty directory atomically). A folder this call
    did not create is never replaced.
    """
    try:
        os.mkdir(folder)
    except FileExistsError:
        raise FolderExistsError(f"{folder}: already exists; choose another folder") from None
    try:
        os.replace(tmp, folder)
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # give the name back
        raise


def swap_into_place(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by ``tmp`` so that a kill at any moment leaves one complete folder.

    Linux: one ``renameat2(RENAME_EXCHANGE)`` swaps the two folders atomically, then the
    old contents (now in ``tmp``) are deleted. Elsewhere: two renames, with the old
    folder restored if the second fails.
    """
    if _exchange(tmp, folder):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = folder.parent / f".{folder.name}.old-{os.getpid()}"
    os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except OSError:
        os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False  # filesystem or kernel without RENAME_EXCHANGE
    raise OSError(err, os.strerror(err), str(b))


def write_json_synced(path: Path, data: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def fsync_files(path: Path) -> None:
    for child in path.iterdir():
        with open(child, "rb") as fh:
            os.fsync(fh.fileno())
