"""napari reader contribution: NIfTI (``.nii``, ``.nii.gz``, ``.hdr``/``.img``) and DICOM
series (a folder, a DICOMDIR or one ``.dcm`` file) in true geometry.

Layers come in millimetres in the display convention of :mod:`napari_medsegdiff.volume`
(axes (z, y, x) = (S, P, L)); an oblique scan also gets the residual rotation as the layer
``affine``, so napari's world coordinates equal the scanner's for every voxel. Their
metadata carries the source geometry so labels drawn on them can be exported voxel for
voxel (:mod:`napari_medsegdiff._writer`). No napari import: the functions return plain
layer-data tuples.
"""

from __future__ import annotations

import os
import pathlib
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from napari_medsegdiff.dicom import find_series, is_dicom_input, read_dicom
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.nifti import read_volume
from napari_medsegdiff.paths import is_nifti_input_path, nifti_stem
from napari_medsegdiff.volume import Volume, VolumeGeometry

__all__ = [
    "layer_data_from_volume",
    "napari_get_reader",
    "read_dicom_layers",
    "read_nifti_layers",
    "world_kwargs",
]

LayerData = tuple[np.ndarray, dict[str, Any], str]
_LABEL_NAME = re.compile(r"(label|seg|mask|parc)", re.IGNORECASE)
_PERCENTILES = (0.5, 99.5)
MAX_CHANNEL_LAYERS = 4
"""A 4-D file with more volumes (fMRI, DWI) opens as one layer with a volume slider."""


def napari_get_reader(path: str | Sequence[str]) -> Callable[..., list[LayerData]] | None:
    """:func:`read_nifti_layers` if ``path`` (or every path in a list) is NIfTI;
    :func:`read_dicom_layers` for one DICOM folder, DICOMDIR or file; else None."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if paths and all(is_nifti_input_path(p) for p in paths):
        return read_nifti_layers
    if len(paths) == 1 and is_dicom_input(paths[0]):
        return read_dicom_layers
    return None


def _read_noting(read: Callable[[], Volume]) -> tuple[Volume, list[str]]:
    """Run ``read`` and return its warnings as notes (re-emitted for napari to show)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = read()
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return volume, [str(w.message) for w in caught]


def read_nifti_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Read each file into layer tuples (one Image per channel, or one Labels layer).

    A list of paths is read file by file (as napari does for several dropped files); use
    :func:`napari_medsegdiff.nifti.read_volume` to stack co-registered files as channels.
    The two halves of a ``.hdr``/``.img`` pair dropped together open once.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    seen: set[tuple[pathlib.Path, str]] = set()
    layers: list[LayerData] = []
    for p in paths:
        key = (pathlib.Path(p).resolve().parent, nifti_stem(p))
        if key in seen:
            continue
        seen.add(key)
        volume, notes = _read_noting(lambda p=p: read_volume(p, dtype=None))
        layers.extend(layer_data_from_volume(volume, notes=notes, as_labels=None))
    return layers


def read_dicom_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Read a DICOM folder / DICOMDIR / file: one Image layer per image series.

    Several series in a folder each become a layer named by their description, to be
    chosen in the Segment dock's image list (a series that cannot be opened is skipped
    with a warning); one file opens only its own series.
    """
    p = pathlib.Path(path if isinstance(path, str | os.PathLike) else path[0])
    found = find_series(p)
    if p.is_file() and p.name.upper() != "DICOMDIR":
        series: list[str | None] = [None]
    else:
        series = [s.uid for s in found if s.is_image] or [None]
    layers: list[LayerData] = []
    refused: list[InputError] = []
    for uid in series:
        try:
            volume, notes = _read_noting(lambda uid=uid: read_dicom(p, series=uid, found=found))
        except InputError as exc:  # e.g. a localizer next to the scan: open the others
            refused.append(exc)
            continue
        name = _dicom_name(volume, p) if len(series) > 1 else None
        if uid is not None and len(series) > 1:
            notes.append(f"{p.name}: series {uid}")
        layers.extend(layer_data_from_volume(volume, name=name, notes=notes, as_labels=False))
    if refused and not layers:
        raise refused[0]
    for exc in refused:
        warnings.warn(f"skipped: {exc}", UserWarning, stacklevel=2)
    return layers


def _dicom_name(volume: Volume, path: pathlib.Path) -> str:
    summary = _header_summary(volume).get("descrip", "")
    return f"{path.name} {summary.removeprefix('DICOM ').strip()}".strip()


def _header_summary(volume: Volume) -> dict[str, Any]:
    import nibabel as nib

    blk = volume.geometry.header_bytes
    if len(blk) not in (348, 540):
        return {}
    cls = nib.Nifti2Header if len(blk) == 540 else nib.Nifti1Header
    hdr = cls(binaryblock=blk, check=False)
    slope, inter = hdr.get_slope_inter()  # the reader recorded the dataobj's scaling here
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
    if dtype.kind not in "biu" or scaled or volume.data.size == 0:
        return False
    data = volume.data
    whole = data.dtype.kind in "biu" or bool(np.all(data == np.round(data)))
    return whole and float(data.min()) >= 0


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
    """Smallest integer dtype holding the labels (exact: integer input stays integer)."""
    hi = int(data.max()) if data.size else 0
    for dtype in (np.uint8, np.uint16, np.int32, np.int64):
        if hi <= np.iinfo(dtype).max:
            return data.astype(dtype, copy=False)
    raise ValueError(f"label value {hi} does not fit int64")


def world_kwargs(geometry: VolumeGeometry) -> dict[str, Any]:
    """napari ``scale`` / ``translate`` (+ ``affine`` for an oblique scan) of a volume.

    ``affine @ (translate + scale * index)`` equals :attr:`VolumeGeometry.world_affine`
    for every display voxel, so world coordinates are the scanner's (S, P, L) mm exactly;
    the array stays in the closest canonical orientation, so slicing is along its axes.
    """
    kwargs: dict[str, Any] = {"scale": geometry.scale, "translate": geometry.translate}
    if geometry.is_oblique:
        base = np.eye(4)
        base[:3, :3] = np.diag(geometry.scale)
        base[:3, 3] = geometry.translate
        kwargs["affine"] = geometry.world_affine @ np.linalg.inv(base)
    return kwargs


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
    common = world_kwargs(geometry)
    if as_labels:
        data = volume.data if volume.data.ndim == 3 else volume.data[..., 0]
        kwargs = {"name": name, **common, "metadata": metadata}
        return [(_as_label_array(data), kwargs, "labels")]
    if volume.n_channels > MAX_CHANNEL_LAYERS:
        return [_series_layer(volume, name, common, metadata)]
    layers: list[LayerData] = []
    channels = [volume.data] if volume.data.ndim == 3 else list(np.moveaxis(volume.data, 3, 0))
    for c, chan in enumerate(channels):
        chan = np.ascontiguousarray(chan, dtype=np.float32)
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


def _series_layer(
    volume: Volume, name: str, common: dict[str, Any], metadata: dict[str, Any]
) -> LayerData:
    """One Image layer (t, z, y, x) for a 4-D time series / many-volume file."""
    data = np.ascontiguousarray(np.moveaxis(volume.data, 3, 0), dtype=np.float32)
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": (1.0, *common["scale"]),
        "translate": (0.0, *common["translate"]),
        "metadata": {**metadata, "volumes": int(data.shape[0])},
        "contrast_limits": _contrast_limits(data[0]),
        "colormap": "gray",
    }
    if "affine" in common:
        affine = np.eye(5)
        affine[1:, 1:] = common["affine"]
        kwargs["affine"] = affine
    return (data, kwargs, "image")
