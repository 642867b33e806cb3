"""napari reader contribution: NIfTI (``.nii``, ``.nii.gz``) in true geometry.

Layers come in millimetres in the display convention of :mod:`napari_medsegdiff.volume`
(axes (z, y, x) = (S, P, L)); their metadata carries the source geometry so labels drawn
on them can be exported voxel for voxel (:mod:`napari_medsegdiff._writer`). No napari
import: the functions return plain layer-data tuples.
"""

from __future__ import annotations

import os
import pathlib
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from napari_medsegdiff.nifti import is_nifti_path, nifti_stem, oblique_message, read_volume
from napari_medsegdiff.volume import Volume

__all__ = ["layer_data_from_volume", "napari_get_reader", "read_nifti_layers"]

LayerData = tuple[np.ndarray, dict[str, Any], str]
_LABEL_NAME = re.compile(r"(label|seg|mask|parc)", re.IGNORECASE)
_PERCENTILES = (0.5, 99.5)


def napari_get_reader(path: str | Sequence[str]) -> Callable[..., list[LayerData]] | None:
    """Return :func:`read_nifti_layers` if ``path`` (or every path in a list) is NIfTI."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths or not all(is_nifti_path(p) for p in paths):
        return None
    return read_nifti_layers


def read_nifti_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Read each file into layer tuples (one Image per channel, or one Labels layer).

    A list of paths is read file by file (as napari does for several dropped files); use
    :func:`napari_medsegdiff.nifti.read_volume` to stack co-registered files as channels.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            volume = read_volume(p)
        notes = [str(w.message) for w in caught]
        for w in caught:  # re-emit so napari shows them as notifications
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        layers.extend(layer_data_from_volume(volume, notes=notes, as_labels=None))
    return layers


def _header_summary(volume: Volume) -> dict[str, Any]:
    import nibabel as nib

    blk = volume.geometry.header_bytes
    if len(blk) not in (348, 540):
        return {}
    cls = nib.Nifti2Header if len(blk) == 540 else nib.Nifti1Header
    hdr = cls(binaryblock=blk, check=False)
    slope, inter = hdr.get_slope_inter()
    units = hdr.get_xyzt_units()
    return {
        "sizeof_hdr": len(blk),
        "dim": [int(d) for d in hdr["dim"][: int(hdr["dim"][0]) + 1]],
        "pixdim": [float(d) for d in hdr["pixdim"][: int(hdr["dim"][0]) + 1]],
        "datatype": str(hdr.get_data_dtype()),
        "scl_slope": None if slope is None else float(slope),
        "scl_inter": None if inter is None else float(inter),
        "qform_code": int(hdr["qform_code"]),
        "sform_code": int(hdr["sform_code"]),
        "xyzt_units": [units[0], units[1]],
        "descrip": hdr["descrip"].item().decode("latin-1").rstrip("\x00"),
    }


def _is_label_map(volume: Volume, header: dict[str, Any], name: str) -> bool:
    """Integer on disk, unscaled, non-negative whole values and a label-like name."""
    if not _LABEL_NAME.search(name) or volume.n_channels != 1:
        return False
    dtype = np.dtype(header.get("datatype", "float32"))
    scaled = header.get("scl_slope") not in (None, 1.0) or header.get("scl_inter") not in (
        None,
        0.0,
    )
    return dtype.kind in "biu" and not scaled and float(volume.data.min()) >= 0


def _contrast_limits(data: np.ndarray) -> tuple[float, float]:
    """Robust (0.5, 99.5) percentile window from a strided subsample."""
    step = max(1, round((data.size / 2_000_000) ** (1 / 3)))
    sample = data[::step, ::step, ::step]
    lo, hi = (float(v) for v in np.percentile(sample, _PERCENTILES))
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _as_label_array(data: np.ndarray) -> np.ndarray:
    hi = float(data.max()) if data.size else 0.0
    dtype = np.uint8 if hi <= 255 else np.uint16 if hi <= 65535 else np.int32
    return data.astype(dtype)


def layer_data_from_volume(
    volume: Volume,
    *,
    name: str | None = None,
    notes: Sequence[str] = (),
    as_labels: bool | None = False,
) -> list[LayerData]:
    """Layer tuples for a volume: Image per channel (``<name> [c0]``...) or one Labels.

    Args:
        volume: the scan (data (z, y, x) or (z, y, x, c)).
        name: layer name (default: the first file's name without extension).
        notes: warnings to record in metadata ``"medsegdiff_warning"``.
        as_labels: True/False forces the layer type; None guesses from dtype and name.
    """
    geometry = volume.geometry
    source = volume.paths[0] if volume.paths else None
    name = name or (nifti_stem(source) if source else "volume")
    header = _header_summary(volume)
    if as_labels is None:
        as_labels = _is_label_map(volume, header, name)
    notes = list(notes)
    if geometry.is_oblique and not any("oblique" in n for n in notes):
        notes.append(oblique_message(source.name if source else name))
    metadata: dict[str, Any] = {
        "affine": geometry.affine.tolist(),
        "spacing": list(geometry.spacing),
        "header": header,
        "medsegdiff_geometry": geometry.to_metadata(),
        "source_path": str(pathlib.Path(source).resolve()) if source else None,
        "source_paths": [str(pathlib.Path(p).resolve()) for p in volume.paths],
    }
    if notes:
        metadata["medsegdiff_warning"] = "; ".join(notes)
    common = {"scale": geometry.scale, "translate": geometry.translate}
    if as_labels:
        data = volume.data if volume.data.ndim == 3 else volume.data[..., 0]
        kwargs = {"name": name, **common, "metadata": metadata}
        return [(_as_label_array(data), kwargs, "labels")]
    layers: list[LayerData] = []
    channels = [volume.data] if volume.data.ndim == 3 else list(np.moveaxis(volume.data, 3, 0))
    for c, chan in enumerate(channels):
        chan = np.ascontiguousarray(chan)
        layer_name = name if len(channels) == 1 else f"{name} [c{c}]"
        kwargs = {
            "name": layer_name,
            **common,
            "metadata": {**metadata, "channel": c},
            "contrast_limits": _contrast_limits(chan),
            "colormap": "gray",
            "visible": c == 0,  # one modality at a time; toggle the others in the list
        }
        layers.append((chan, kwargs, "image"))
    return layers
