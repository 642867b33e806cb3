"""Safe model folders (``model.safetensors`` + ``config.json``) and the versioned model store.

A model is a folder. Loading builds the network from JSON and reads tensors with
safetensors: nothing is ever unpickled. A legacy ``.pt`` is only read through
``torch.load(weights_only=True)``. Folders are written atomically (a hidden temp folder
in the same parent, renamed into place), so a crash never leaves a half-written version.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from napari_medsegdiff import __version__
from napari_medsegdiff.config import ModelConfig
from napari_medsegdiff.errors import InputError, ModelError
from napari_medsegdiff.folder_io import (
    FolderExistsError,
    claim_and_fill,
    fsync_files,
    swap_into_place,
    write_json_synced,
)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
PROVENANCE = "provenance.json"
FORMAT = "napari-medsegdiff/1"
DEFAULT_MODEL = "default"


def default_model_path() -> Path:
    """The model shipped inside the package (found from a wheel install too)."""
    return Path(str(resources.files("napari_medsegdiff") / "models" / DEFAULT_MODEL))


def user_model_store() -> Path:
    """Per-user folder of fine-tuned versions (``MEDSEGDIFF_HOME`` overrides it)."""
    env = os.environ.get("MEDSEGDIFF_HOME")
    if env:
        return Path(env).expanduser() / "models"
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "napari-medsegdiff" / "models"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelEntry:
    """One model the user can pick: the shipped default, a folder, or a store version."""

    name: str
    path: Path
    created: str = ""
    is_default: bool = False
    partial: bool = False

    @property
    def label(self) -> str:
        tag = " (default)" if self.is_default else " (partial)" if self.partial else ""
        return f"{self.name}{tag}"


@dataclass
class ModelInfo:
    """What ``config.json`` says about a model folder."""

    path: Path
    config: ModelConfig
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.name)


def read_model_info(folder: str | Path) -> ModelInfo:
    """Parse ``config.json`` of a model folder (no weights read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        raise ModelError(f"{folder}: {CONFIG} is missing; not a napari-medsegdiff model folder")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cfg_path}: unreadable or corrupt JSON ({exc})") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise ModelError(f"{cfg_path}: no 'model' section; not a napari-medsegdiff config")
    try:
        config = ModelConfig.from_dict(meta["model"])
    except InputError as exc:
        raise ModelError(f"{cfg_path}: {exc}") from None
    return ModelInfo(path=folder, config=config, meta=meta)


def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    weights = folder / WEIGHTS
    if weights.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(weights))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"{weights}: corrupt safetensors file ({exc})") from None
    legacy = sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth"))
    if legacy:
        return load_pt_weights(legacy[0])
    raise ModelError(f"{folder}: {WEIGHTS} is missing")


def _unpickle_reason(exc: BaseException) -> str:
    """The useful part of torch's long weights-only refusal."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it would call {found.group(1)}"
    found = re.search(r"Unsupported operand \d+", text)
    if found:
        return found.group(0)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:120]


def load_pt_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a legacy ``.pt`` state dict without executing code (``weights_only=True``)."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": not for users
            warnings.simplefilter("ignore")
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(
            f"{path}: refusing to load: not a plain tensor checkpoint (unpickling it could run "
            f"code; convert it to model.safetensors) [{_unpickle_reason(exc)}]"
        ) from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelError(f"{path}: not a state dict of tensors")
    return dict(state)


def load_model(folder: str | Path, device: torch.device | str = "cpu") -> tuple[Any, ModelInfo]:
    """Build the network from ``config.json`` and load its safetensors weights (eval mode)."""
    from napari_medsegdiff.model import build_model

    info = read_model_info(folder)
    state = _read_state(info.path)
    try:  # shapes first, on the meta device: nothing allocated until the weights match
        with torch.device("meta"):
            expected = build_model(info.config).state_dict()
    except (ValueError, TypeError, RuntimeError, AssertionError, IndexError) as exc:
        raise ModelError(
            f"{info.path / CONFIG}: describes a network that cannot be built ({exc})"
        ) from None
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        names = (missing or unexpected)[:3]
        raise ModelError(
            f"{info.path}: weights do not match config.json "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors, e.g. {names})"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelError(
                f"{info.path}: tensor {key!r} has shape {tuple(tensor.shape)}, "
                f"config.json expects {tuple(expected[key].shape)}"
            )
    model = build_model(info.config)
    model.load_state_dict(state)
    model.to(device).eval()
    return model, info


def _clean_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_model(
    folder: str | Path,
    state: Mapping[str, torch.Tensor],
    config: ModelConfig,
    *,
    meta: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model folder atomically; refuses an existing folder unless ``overwrite``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FolderExistsError(
            f"{folder}: already exists; allow overwriting or choose another folder"
        )
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder")
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=parent))
    except OSError as exc:
        raise InputError(f"{parent}: cannot write a model here ({exc.strerror or exc})") from None
    try:
        save_file(_clean_state(state), str(tmp / WEIGHTS), metadata={"format": FORMAT})
        info = {
            "format": FORMAT,
            "name": folder.name,
            "package_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **dict(meta or {}),
            "model": config.to_dict(),
        }
        write_json_synced(tmp / CONFIG, info)
        if provenance is not None:
            write_json_synced(tmp / PROVENANCE, dict(provenance))
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        fsync_files(tmp)
        if overwrite and folder.exists():
            swap_into_place(tmp, folder)
        else:
            claim_and_fill(tmp, folder)
    except FolderExistsError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as exc:  # disk full, permissions: one clear line, no half version
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"{folder}: cannot write the model ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


class ModelStore:
    """The folder of fine-tuned versions; lists only complete versions, newest first."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else user_model_store()

    def versions(self) -> list[ModelEntry]:
        if not self.root.is_dir():
            return []
        entries = []
        for child in self.root.iterdir():
            if child.name.startswith(".") or not child.is_dir():
                continue
            if not (child / WEIGHTS).is_file() or not (child / CONFIG).is_file():
                continue
            try:
                meta = json.loads((child / CONFIG).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            entries.append(
                ModelEntry(
                    name=child.name,
                    path=child,
                    created=str(meta.get("created", "")),
                    partial=bool(meta.get("partial", False)),
                )
            )
        return sorted(entries, key=lambda e: (e.created, e.name), reverse=True)

    def new_version_path(self, base_name: str) -> Path:
        """A fresh, readable version folder name: ``<base>-ft-YYYYmmdd-HHMMSS[-n]``."""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", base_name).strip("._") or "model"
        stem = re.sub(r"-ft-\d{8}-\d{6}(-\d+)?$", "", stem)
        stamp = _version_stamp()
        candidate = self.root / f"{stem}-ft-{stamp}"
        n = 1
        while candidate.exists():
            n += 1
            candidate = self.root / f"{stem}-ft-{stamp}-{n}"
        return candidate

    def save_version(
        self,
        base_name: str,
        state: Mapping[str, torch.Tensor],
        config: ModelConfig,
        **kwargs: Any,
    ) -> Path:
        """Save a new version under a fresh name; never replaces another writer's version.

        Two saves that pick the same name (same second) both succeed: the loser of the
        exclusive claim takes the next free suffix.
        """
        for _ in range(100):
            try:
                return save_model(self.new_version_path(base_name), state, config, **kwargs)
            except FolderExistsError:
                continue
        raise InputError(f"{self.root}: could not find a free version name")


def _version_stamp() -> str:
    """Local time to the second, the readable part of a version name."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def list_models(store: ModelStore | None = None) -> list[ModelEntry]:
    """The shipped default (if present) followed by store versions, newest first."""
    entries = []
    default = default_model_path()
    if (default / CONFIG).is_file():
        entries.append(ModelEntry(name=DEFAULT_MODEL, path=default, is_default=True))
    entries.extend((store or ModelStore()).versions())
    return entries


def training_run_model(folder: str | Path) -> tuple[Path, str | None]:
    """A model folder itself, or for a training run (``best/``, ``last/``) its best model.

    Returns ``(model folder, note)``; ``note`` says which sub-folder was taken (None when
    ``folder`` is a model folder or neither sub-folder holds one).
    """
    folder = Path(folder)
    if (folder / CONFIG).is_file():
        return folder, None
    for sub in ("best", "last"):
        if (folder / sub / CONFIG).is_file():
            return folder / sub, f"{folder} is a training run: using its {sub}/ model"
    return folder, None


def recommended_sampler(meta: Mapping[str, Any]) -> dict[str, int]:
    """The ``sampler`` section of a model's config.json: ensemble / steps / seed, if given."""
    section = meta.get("sampler")
    if not isinstance(section, Mapping):
        return {}
    return {k: section[k] for k in ("ensemble", "steps", "seed") if isinstance(section.get(k), int)}


def class_names(meta: Mapping[str, Any], classes: int) -> list[str]:
    """Names for label values ``0..classes-1`` from a model's config.json contents.

    ``class_names`` (list, index = label value) wins, then a ``classes`` mapping
    (``{"1": "grey matter"}``); anything unnamed is ``"class N"`` (0 is background).
    """
    names = [("background" if k == 0 else f"class {k}") for k in range(max(2, classes))]
    listed = meta.get("class_names")
    mapped = meta.get("classes")
    if isinstance(listed, list):
        mapped = dict(enumerate(listed))
    if isinstance(mapped, Mapping):
        for key, value in mapped.items():
            try:
                k = int(key)
            except (TypeError, ValueError):
                continue
            if 0 <= k < len(names) and isinstance(value, str) and value.strip():
                names[k] = value.strip()
    return names


def resolve_model(name_or_path: str | Path | None, store: ModelStore | None = None) -> Path:
    """``None``/'default' -> shipped model; an existing folder; or a store version name."""
    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        path = default_model_path()
        if not (path / CONFIG).is_file():
            raise ModelError(
                "the default model is not installed; train one (medsegdiff train) or choose a model"
            )
        return path
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return training_run_model(path)[0]
    if path.is_file():
        raise InputError(f"{path} is a file; pass the model folder that holds it", argument="model")
    candidate = (store or ModelStore()).root / str(name_or_path)
    if candidate.is_dir():
        return candidate
    raise InputError(
        f"{name_or_path!r} is neither a model folder nor a stored version", argument="model"
    )
