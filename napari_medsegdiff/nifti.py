"""NIfTI reading and writing with exact geometry round trips and one-line errors.

``read_volume`` loads one file (3-D or 4-D) or several co-registered files (channels) into
a :class:`~napari_medsegdiff.volume.Volume` in napari order; ``write_labels`` and
``write_image`` undo the reorientation and write with the source affine and header, so the
output overlays the source scan voxel for voxel in any viewer. Writes are atomic.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import uuid
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import replace

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from napari_medsegdiff.errors import InputError
from napari_medsegdiff.paths import PathLike, is_nifti_input_path, is_nifti_path, nifti_stem
from napari_medsegdiff.volume import Volume, VolumeGeometry

__all__ = [
    "LABEL_TOLERANCE",
    "MAX_VOXELS",
    "is_nifti_input_path",
    "is_nifti_path",
    "nifti_stem",
    "read_labels",
    "read_volume",
    "whole_labels",
    "write_image",
    "write_labels",
]

MAX_VOXELS = 2**31
"""Refuse files that declare more voxels than this (before allocating anything)."""
LABEL_TOLERANCE = 1e-3
"""How far a stored label value may sit from a whole number (scaled integer files)."""
_MAX_GZIP_RATIO = 1100  # DEFLATE cannot expand more than ~1032:1
_READ_ERRORS = (
    ImageFileError,
    HeaderDataError,
    OSError,
    EOFError,
    zlib.error,
    ValueError,
    OverflowError,  # e.g. vox_offset = inf
)


def _spatial_shape(shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    """3-D or 4-D shape: trailing singleton dims dropped, a 2-D file is one slice."""
    if any(n < 0 for n in shape):
        raise InputError(f"{name}: negative dimension in shape {shape} (corrupt header)")
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) < 2 or len(shape) > 4:
        raise InputError(f"{name}: {len(shape)}-D image {shape}; need 2-D, 3-D or 4-D")
    return shape


def _load_one(path: pathlib.Path, dtype: np.dtype | None) -> tuple[np.ndarray, VolumeGeometry]:
    """Read one file -> (array in source order (i, j, k[, c]), geometry).

    ``dtype=None`` keeps an unscaled integer file's own integer dtype (label ids above
    2**24 stay exact); scaled or floating files are read as float32.
    """
    name = path.name
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a .nii or .nii.gz file")
    if not is_nifti_input_path(path):
        raise InputError(f"{name}: expected a .nii or .nii.gz file (or a .hdr/.img pair)")
    try:
        # nibabel logs each header fix-up (bad pixdim, codes...) on stderr; our error says it
        with nib.imageglobals.LoggingOutputSuppressor():
            img = nib.load(path)
    except _READ_ERRORS as exc:
        why = _sniff(path)
        if why is None:  # NIfTI magic and size, but fields nibabel cannot use
            raise InputError(
                f"{name}: unsupported or corrupt NIfTI header ({_short(exc)})"
            ) from exc
        raise InputError(f"{name}: not a NIfTI file ({why})") from exc
    if not isinstance(img, nib.Nifti1Pair | nib.Nifti2Pair):  # the Images subclass Pairs
        raise InputError(
            f"{name}: not a NIfTI-1/2 image ({type(img).__name__}; Analyze 7.5 has no "
            "reliable orientation)"
        )
    hdr = img.header
    shape = _spatial_shape(tuple(int(n) for n in img.shape), name)
    disk_dtype = hdr.get_data_dtype()
    if any(n == 0 for n in shape):
        raise InputError(f"{name}: zero-length dimension in shape {shape}")
    if disk_dtype.kind == "c":
        raise InputError(f"{name}: complex data ({disk_dtype}) is not supported")
    if disk_dtype.fields is not None or disk_dtype.kind not in "biuf":
        raise InputError(f"{name}: RGB/structured data ({disk_dtype}) is not supported")
    n_vox = int(np.prod(shape, dtype=np.int64))
    if n_vox > MAX_VOXELS:
        raise InputError(f"{name}: declares {n_vox} voxels {shape}; more than {MAX_VOXELS}")
    n_bytes = n_vox * disk_dtype.itemsize
    data_file = pathlib.Path(img.file_map["image"].filename or path)  # a pair's .img
    if not data_file.exists():
        raise InputError(f"{name}: its data file {data_file.name} is missing")
    file_size = data_file.stat().st_size
    if data_file.name.lower().endswith(".gz"):
        if n_bytes > _MAX_GZIP_RATIO * file_size + 65536:
            raise InputError(
                f"{name}: header declares {n_bytes} bytes of data but the {file_size}-byte "
                "file cannot hold that much (corrupt header or truncated file)"
            )
    else:
        needed = int(getattr(img.dataobj, "offset", hdr.get_data_offset())) + n_bytes
        if file_size < needed:
            raise InputError(f"{name}: truncated ({file_size} bytes, header needs {needed})")
    slope, inter = _scaling(img)
    header = hdr.copy()  # nibabel moved the scaling into dataobj: keep it on record
    header["scl_slope"], header["scl_inter"] = slope, inter
    geometry = VolumeGeometry.from_affine(
        img.affine, shape[:3], bytes(header.binaryblock), name=name
    )
    keep_int = dtype is None and disk_dtype.kind in "biu" and (slope, inter) == (1.0, 0.0)
    try:
        if keep_int:
            data = np.asarray(img.dataobj, dtype=disk_dtype.newbyteorder("="))
        else:
            data = np.asarray(img.dataobj, dtype=dtype or np.float32)
    except (*_READ_ERRORS, MemoryError) as exc:
        raise InputError(f"{name}: truncated or corrupt data ({_short(exc)})") from exc
    return data.reshape(shape), geometry


def _scaling(img: nib.Nifti1Pair) -> tuple[float, float]:
    """(slope, intercept) nibabel applies to the data (1, 0 when unscaled)."""
    slope = getattr(img.dataobj, "slope", 1.0)
    inter = getattr(img.dataobj, "inter", 0.0)
    slope = 1.0 if slope is None or not np.isfinite(slope) else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


def _sniff(path: pathlib.Path) -> str | None:
    """Why the first bytes are not a NIfTI-1/2 header (None if they look like one)."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(540)
    except (OSError, EOFError, zlib.error):
        return "not gzip data" if path.name.lower().endswith(".gz") else None
    if len(head) < 348:
        return f"only {len(head)} header bytes, need 348"
    size = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    if 348 in size:
        return None if head[344:348] in (b"n+1\0", b"ni1\0") else "bad magic"
    if 540 in size:
        return None if head[4:8] in (b"n+2\0", b"ni2\0") else "bad magic"
    return "bad header size"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _replace_nonfinite(data: np.ndarray, name: str) -> int:
    """Replace NaN/Inf in place by the finite minimum (0 if none); warn; return the count."""
    if data.dtype.kind != "f":
        return 0
    bad = ~np.isfinite(data)
    count = int(np.count_nonzero(bad))
    if count == data.size:
        raise InputError(f"{name}: no finite voxel (all {count} are NaN/Inf); nothing to show")
    if count:
        finite = data[~bad]
        fill = float(finite.min())
        data[bad] = fill
        warnings.warn(
            f"{name}: {count} NaN/Inf voxel(s) replaced by the finite minimum {fill:g}",
            UserWarning,
            stacklevel=3,
        )
    return count


def read_volume(
    path_or_paths: PathLike | Sequence[PathLike],
    *,
    dtype: np.typing.DTypeLike | None = np.float32,
) -> Volume:
    """Read one NIfTI (2-D, 3-D or 4-D) or several co-registered ones into napari order.

    Args:
        path_or_paths: a ``.nii``/``.nii.gz`` path (or a NIfTI-1 ``.hdr``/``.img`` pair),
            or a sequence of them (channels, e.g. BraTS T1/T1ce/T2/FLAIR). All files must
            share spatial shape and affine. Trailing singleton dimensions are dropped; a
            2-D file is one slice.
        dtype: floating dtype of the returned data; None keeps an unscaled integer file
            integer (float32 otherwise).

    Returns:
        Volume with data (z, y, x) for one 3-D file, else (z, y, x, c); 4-D files
        contribute their 4th axis as channels.

    Raises:
        InputError: unreadable/truncated file, unsupported shape or dtype, mismatched
            channels (naming both files).
    """
    if isinstance(path_or_paths, str | os.PathLike):
        paths = [pathlib.Path(path_or_paths)]
    else:
        paths = [pathlib.Path(p) for p in path_or_paths]
    if not paths:
        raise InputError("read_volume: no file given")
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise InputError(f"read_volume: dtype must be floating, got {dtype}")
    arrays: list[np.ndarray] = []
    geometry: VolumeGeometry | None = None
    nonfinite = 0
    for path in paths:
        data, geom = _load_one(path, dtype)
        if geometry is None:
            geometry = geom
        elif geom.source_shape != geometry.source_shape:
            raise InputError(
                f"{paths[0].name} and {path.name}: spatial shapes differ "
                f"({geometry.source_shape} vs {geom.source_shape}); channels must be "
                "co-registered"
            )
        elif not geometry.same_space(geom):
            raise InputError(
                f"{paths[0].name} and {path.name}: affines differ by more than 1e-3 mm; "
                "channels must be co-registered (resample one onto the other first)"
            )
        nonfinite += _replace_nonfinite(data, path.name)
        arrays.append(data if data.ndim == 4 else data[..., None])
    assert geometry is not None  # paths is non-empty
    if len(arrays) > 1 and len({a.dtype for a in arrays}) > 1:
        arrays = [a.astype(np.float32) for a in arrays]
    if len(arrays) == 1 and arrays[0].shape[3] == 1:
        source = arrays[0][..., 0]
    else:
        source = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=3)
    return Volume(geometry.to_display(source), geometry, tuple(paths), nonfinite)


def whole_labels(data: np.ndarray, name: str) -> np.ndarray:
    """Label values as int64. Refuses values that are not whole numbers (a probability
    map, or a mask resampled with interpolation) and NaN/Inf, naming ``name``."""
    arr = np.asarray(data)
    if arr.dtype.kind != "f":
        return arr.astype(np.int64)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: label volume contains NaN or Inf")
    rounded = np.rint(arr)
    off = np.abs(arr - rounded) > LABEL_TOLERANCE
    if off.any():
        raise InputError(
            f"{name}: label values must be whole numbers (0 background, 1, 2, ...), found "
            f"{arr[off].flat[0]:.3g}; is it a probability map or an interpolated mask?"
        )
    return rounded.astype(np.int64)


def read_labels(path: PathLike) -> Volume:
    """Read a label file like :func:`read_volume`; ``data`` is int64 (z, y, x[, c])."""
    volume = read_volume(path)
    return replace(volume, data=whole_labels(volume.data, pathlib.Path(path).name))


# --- writing ---------------------------------------------------------------------------
def _geometry(like: Volume | VolumeGeometry) -> VolumeGeometry:
    if isinstance(like, Volume):
        return like.geometry
    if isinstance(like, VolumeGeometry):
        return like
    raise InputError(
        f"like: expected a Volume or VolumeGeometry, got {type(like).__name__}; which image "
        "do these labels belong to?"
    )


def _label_dtype(labels: np.ndarray, what: str) -> np.ndarray:
    """Check label values and cast to uint8 / uint16 / int32 (smallest that fits)."""
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise InputError(f"{what}: labels must be whole numbers (got non-integer floats)")
    elif labels.dtype.kind not in "iu":
        raise InputError(f"{what}: labels must be integers, got dtype {labels.dtype}")
    if labels.size == 0:
        return labels.astype(np.uint8)
    lo, hi = labels.min(), labels.max()
    if lo < 0:
        raise InputError(f"{what}: negative label value {lo}")
    for out in (np.uint8, np.uint16, np.int32):
        if hi <= np.iinfo(out).max:
            return labels.astype(out)
    raise InputError(f"{what}: label value {hi} too large (max {np.iinfo(np.int32).max})")


def _header_for(geometry: VolumeGeometry, source_data: np.ndarray) -> nib.Nifti1Header:
    """Copy of the source header with the new data shape/dtype and no intensity scaling."""
    blk = geometry.header_bytes
    if len(blk) == 540:
        hdr = nib.Nifti2Header(binaryblock=blk, check=False)
    elif len(blk) == 348:
        hdr = nib.Nifti1Header(binaryblock=blk, check=False)
    else:
        hdr = nib.Nifti1Header()
        hdr.set_qform(geometry.affine, code="scanner")
        hdr.set_sform(geometry.affine, code="scanner")
        hdr.set_xyzt_units("mm")
    if int(hdr["dim"][0]) > 3 or int(hdr["intent_code"]) != 0:
        hdr.set_intent("none")
    hdr.set_data_shape(source_data.shape)
    hdr.set_data_dtype(source_data.dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"] = 0.0
    hdr["cal_max"] = 0.0
    return hdr


def _atomic_write(img: nib.Nifti1Image, path: pathlib.Path, overwrite: bool) -> pathlib.Path:
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}"
    try:
        img.to_filename(tmp)
        if not overwrite and path.exists():
            raise InputError(f"{path}: exists; allow overwriting to replace it")
        os.replace(tmp, path)
    except InputError:
        raise
    except (OSError, ValueError, HeaderDataError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else _short(exc)
        raise InputError(f"{path}: cannot write ({why})") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _check_out_path(path: PathLike, overwrite: bool) -> pathlib.Path:
    path = pathlib.Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a .nii or .nii.gz file name")
    if not is_nifti_path(path):
        raise InputError(f"{path}: output name must end in .nii or .nii.gz")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{path}: cannot write, {parent} is not a folder")
    if not parent.exists():
        raise InputError(f"{path}: cannot write, folder {parent} does not exist")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: exists; allow overwriting to replace it")
    return path


def _write(
    data: np.ndarray, geometry: VolumeGeometry, path: PathLike, overwrite: bool, what: str
) -> pathlib.Path:
    out = _check_out_path(path, overwrite)
    if data.ndim != 3 or tuple(data.shape) != geometry.display_shape:
        raise InputError(
            f"{out.name}: {what} shape {tuple(data.shape)} does not match the source scan "
            f"(expected {geometry.display_shape} in (z, y, x))"
        )
    source = geometry.to_source(data)
    hdr = _header_for(geometry, source)
    cls = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    img = cls(source, geometry.affine, header=hdr)
    # Keep the copied header's qform/sform codes and matrices (the affine is the same).
    img.header.set_slope_inter(1.0, 0.0)
    return _atomic_write(img, out, overwrite)


def write_labels(
    labels: np.ndarray,
    like: Volume | VolumeGeometry,
    path: PathLike,
    *,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write (z, y, x) integer labels as NIfTI aligned voxel for voxel with the source scan.

    The reorientation is undone exactly; the source affine and header (qform/sform codes,
    xyzt units, pixdim, descrip) are kept; data are uint8 (uint16 / int32 when values
    exceed 255 / 65535) with no scaling. Written atomically (temp file + ``os.replace``).

    Raises:
        InputError: wrong shape, negative or non-integer values, existing file without
            ``overwrite``, output is a folder, folder missing or not writable.
    """
    geometry = _geometry(like)
    arr = np.asarray(labels)
    return _write(_label_dtype(arr, pathlib.Path(path).name), geometry, path, overwrite, "labels")


def write_image(
    data: np.ndarray,
    like: Volume | VolumeGeometry,
    path: PathLike,
    *,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write a (z, y, x) float map (variance, probability) as float32 NIfTI aligned like
    :func:`write_labels`."""
    geometry = _geometry(like)
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{pathlib.Path(path).name}: image must be numeric, got {arr.dtype}")
    return _write(arr.astype(np.float32, copy=False), geometry, path, overwrite, "image")
