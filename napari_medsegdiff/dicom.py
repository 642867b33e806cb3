"""DICOM series (CT, MR) read into the same :class:`~napari_medsegdiff.volume.Volume` as NIfTI.

Geometry follows the standard, not file names: slices are sorted by ImagePositionPatient
along the slice normal (row x column cosine of ImageOrientationPatient), the voxel size is
PixelSpacing and the step between positions (never SliceThickness), RescaleSlope /
RescaleIntercept are applied (CT in HU). DICOM's LPS patient coordinates become the NIfTI
RAS+ affine (first two rows negated), so labels written with
:func:`~napari_medsegdiff.nifti.write_labels` overlay the series voxel for voxel.

A path may be a folder (searched recursively), a ``DICOMDIR`` (its folder is searched) or
one file of a series (that series is read). Several image series need ``series=UID``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pathlib
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from napari_medsegdiff.errors import InputError
from napari_medsegdiff.volume import Volume, VolumeGeometry

__all__ = [
    "ORIENTATION_TOL",
    "SPACING_TOL",
    "SeriesInfo",
    "find_series",
    "is_dicom_file",
    "is_dicom_input",
    "read_dicom",
]

PathLike = str | os.PathLike[str]
SPACING_TOL = 0.01
"""Largest relative deviation of a slice step from the median step (1 %, at least 0.01 mm)."""
ORIENTATION_TOL = 1e-4
"""Largest difference between two slices' direction cosines still called one orientation."""
_LINE_TOL_MM = 0.01  # slice positions must lie on one line within this (or 1 % of the step)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_MAX_FILES = 100_000
_SNIFF_FILES = 2_000


def is_dicom_file(path: PathLike) -> bool:
    """True for a file with the DICOM preamble magic (``DICM`` at byte 128) or ``.dcm``."""
    p = pathlib.Path(path)
    if not p.is_file():
        return False
    if p.name.lower().endswith(".dcm") or p.name.upper() == "DICOMDIR":
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _files_under(folder: pathlib.Path) -> Iterable[pathlib.Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield pathlib.Path(root) / name


def is_dicom_input(path: PathLike) -> bool:
    """True when ``path`` is a DICOM file, a DICOMDIR, or a folder holding DICOM files.

    A folder that holds NIfTI files is a cohort, not a series, even if DICOM files lie in
    its sub-folders: only its top level is looked at for that decision.
    """
    p = pathlib.Path(path)
    if p.is_file():
        return is_dicom_file(p)
    if not p.is_dir():
        return False
    from napari_medsegdiff.paths import is_nifti_input_path

    top = [c for c in sorted(p.iterdir()) if c.is_file() and not c.name.startswith(".")]
    if any(is_nifti_input_path(c) for c in top):
        return False
    if any(is_dicom_file(c) for c in top[:50]):
        return True
    # sub-folders (PACS media layout): look at a bounded number of files, never a whole disk
    return any(is_dicom_file(c) for c in itertools.islice(_files_under(p), _SNIFF_FILES))


@dataclass(frozen=True)
class SeriesInfo:
    """One series found under a path: its UID, what it is and its files."""

    uid: str
    description: str
    modality: str
    files: tuple[pathlib.Path, ...]
    is_image: bool = True

    def describe(self) -> str:
        """``UID (MR, 24 slices, 'T1 axial')`` for listings."""
        what = "slices" if self.is_image else "object(s), not an image"
        return (
            f"{self.uid} ({self.modality or '?'}, {len(self.files)} {what}, '{self.description}')"
        )


_NON_IMAGE = {"SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "PR", "KO", "SEG", "REG", "DOC", "ECG"}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence pydicom's warnings and log lines about odd files: our errors say it once."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _read_header(path: pathlib.Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with _quiet():
            return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise InputError(f"{path.name}: not a DICOM file ({_first_line(exc)})") from exc
    except Exception as exc:  # pydicom raises many types for corrupt files
        raise InputError(f"{path.name}: not a readable DICOM file ({type(exc).__name__})") from exc


def _series_key(ds, path: pathlib.Path) -> str:
    return str(ds.get("SeriesInstanceUID", "")) or f"(no SeriesInstanceUID: {path.name})"


def find_series(path: PathLike) -> list[SeriesInfo]:
    """Every series under a folder / DICOMDIR / beside one file, image series first.

    Raises:
        InputError: the path is missing or holds no DICOM file.
    """
    p = pathlib.Path(path)
    if not p.exists():
        raise InputError(f"{p}: not found")
    folder = p if p.is_dir() else p.parent
    groups: dict[str, list[pathlib.Path]] = defaultdict(list)
    meta: dict[str, tuple[str, str, bool]] = {}
    for n, f in enumerate(_files_under(folder)):
        if n >= _MAX_FILES:
            raise InputError(f"{folder}: more than {_MAX_FILES} files; point at one series")
        if not is_dicom_file(f) or f.name.upper() == "DICOMDIR":
            continue
        try:
            ds = _read_header(f)
        except InputError:
            continue  # stray files (thumbnails, notes) next to a series
        uid = _series_key(ds, f)
        groups[uid].append(f)
        if uid not in meta:
            modality = str(ds.get("Modality", ""))
            # headers are read without pixels: an image has a matrix size
            is_image = "Rows" in ds and "Columns" in ds and modality not in _NON_IMAGE
            meta[uid] = (str(ds.get("SeriesDescription", "")), modality, is_image)
    if not groups:
        raise InputError(f"{p}: no DICOM files found")
    series = [
        SeriesInfo(uid, *meta[uid][:2], tuple(fs), meta[uid][2]) for uid, fs in groups.items()
    ]
    return sorted(series, key=lambda s: (not s.is_image, s.description, s.uid))


def _choose(path: pathlib.Path, series: list[SeriesInfo], uid: str | None) -> SeriesInfo:
    images = [s for s in series if s.is_image]
    if uid is None and path.is_file() and path.name.upper() != "DICOMDIR":
        uid = _series_key(_read_header(path), path)
    if uid is not None:
        for s in series:
            if s.uid == uid:
                if not s.is_image:
                    raise InputError(f"{path}: series {s.describe()} is not an image series")
                return s
        listing = "; ".join(s.describe() for s in images) or "none"
        raise InputError(f"{path}: no series {uid}; image series here: {listing}")
    if not images:
        found = "; ".join(s.describe() for s in series)
        raise InputError(f"{path}: no image series, only non-image DICOM objects ({found})")
    if len(images) > 1:
        listing = "; ".join(s.describe() for s in images)
        raise InputError(
            f"{path}: {len(images)} image series; choose one by its series UID: {listing}",
            argument="series",
        )
    return images[0]


def _floats(ds, keyword: str, n: int, name: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise InputError(
            f"{name}: no usable {keyword} (a 2-D image such as an X-ray, screenshot or "
            "secondary capture, which has no 3-D position, is not supported)"
        )
    return out


def _number(ds, keyword: str, default: float, name: str) -> float:
    """A numeric element (``default`` when absent or empty)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not np.isfinite(out):
        raise InputError(f"{name}: {keyword} is not a number ({value!r})")
    return out


def _check_frame(ds, name: str) -> None:
    if _number(ds, "NumberOfFrames", 1, name) > 1:
        raise InputError(
            f"{name}: multi-frame DICOM ({ds.NumberOfFrames} frames in one file) is not "
            "supported; convert it to NIfTI (e.g. dcm2niix)"
        )
    if _number(ds, "SamplesPerPixel", 1, name) != 1:
        raise InputError(
            f"{name}: colour DICOM (SamplesPerPixel {ds.SamplesPerPixel}) is not supported"
        )


def _pixels(ds, name: str) -> np.ndarray:
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing codecs / bad data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        what = f" ({syntax.name})" if syntax is not None else ""
        raise InputError(
            f"{name}: cannot decode the pixel data{what}: {_first_line(exc)} (compressed "
            "DICOM: pip install 'napari-medsegdiff[dicom-compressed]')"
        ) from exc
    slope = _number(ds, "RescaleSlope", 1.0, name)
    inter = _number(ds, "RescaleIntercept", 0.0, name)
    out = arr.astype(np.float64)
    if slope != 1.0 or inter != 0.0:
        out = out * slope + inter
    return out


def _geometry_from(
    datasets: list, files: list[pathlib.Path], label: str
) -> tuple[list[int], np.ndarray]:
    """Slice order (sorted along the normal) and the (4, 4) LPS affine of voxel (i, j, k)."""
    first = datasets[0]
    iop = _floats(first, "ImageOrientationPatient", 6, files[0].name)
    row, col = iop[:3], iop[3:]
    for ds, f in zip(datasets, files, strict=True):
        other = _floats(ds, "ImageOrientationPatient", 6, f.name)
        if np.max(np.abs(other - iop)) > ORIENTATION_TOL:
            raise InputError(
                f"{label}: mixed slice orientations ({files[0].name} and {f.name}); a series "
                "must be one stack (localizers / several stacks: choose another series)"
            )
        if (ds.get("Rows"), ds.get("Columns")) != (first.get("Rows"), first.get("Columns")):
            raise InputError(f"{label}: slices differ in size ({files[0].name} and {f.name})")
    spacing = _floats(first, "PixelSpacing", 2, files[0].name)  # (row step, column step)
    if np.any(spacing <= 0):
        raise InputError(f"{files[0].name}: PixelSpacing must be positive, got {spacing.tolist()}")
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 0.5:
        raise InputError(f"{files[0].name}: ImageOrientationPatient axes are not orthogonal")
    normal /= np.linalg.norm(normal)
    positions = np.array(
        [
            _floats(ds, "ImagePositionPatient", 3, f.name)
            for ds, f in zip(datasets, files, strict=True)
        ]
    )
    dist = positions @ normal
    order = [int(i) for i in np.argsort(dist, kind="stable")]
    positions, dist = positions[order], dist[order]
    n = len(order)
    if n > 1:
        steps = np.diff(dist)
        dup = int(np.argmin(steps))
        if steps[dup] < 1e-3:
            raise InputError(
                f"{label}: two slices at the same position ({files[order[dup]].name}, "
                f"{files[order[dup + 1]].name}): several acquisitions, echoes or time points "
                "in one series are not supported"
            )
        median = float(np.median(steps))
        tol = max(0.01, SPACING_TOL * median)
        worst = int(np.argmax(np.abs(steps - median)))
        if abs(steps[worst] - median) > tol:
            raise InputError(
                f"{label}: uneven slice spacing ({steps[worst]:.3f} mm between "
                f"{files[order[worst]].name} and {files[order[worst + 1]].name}, "
                f"{median:.3f} mm elsewhere; missing slices?)"
            )
        step = (positions[-1] - positions[0]) / (n - 1)
        line = positions[0] + np.arange(n)[:, None] * step
        if np.max(np.linalg.norm(positions - line, axis=1)) > max(_LINE_TOL_MM, 0.01 * median):
            raise InputError(f"{label}: slice positions do not lie on one line")
    else:
        name = files[0].name
        thickness = _number(first, "SpacingBetweenSlices", 0.0, name) or _number(
            first, "SliceThickness", 1.0, name
        )
        step = normal * (abs(thickness) or 1.0)  # one slice: only its own thickness
    affine = np.eye(4)
    affine[:3, 0] = row * spacing[1]  # i: along a row (column index grows)
    affine[:3, 1] = col * spacing[0]  # j: down a column (row index grows)
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]
    return order, affine


def _header_bytes(affine: np.ndarray, shape: tuple[int, int, int], descrip: str) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr.set_qform(affine, code="scanner")
    hdr.set_sform(affine, code="scanner")
    hdr.set_xyzt_units("mm", "sec")
    hdr["descrip"] = descrip.encode("ascii", "replace")[:79]
    return bytes(hdr.binaryblock)


def read_dicom(
    path: PathLike,
    *,
    series: str | None = None,
    dtype: np.typing.DTypeLike = np.float32,
    found: Sequence[SeriesInfo] | None = None,
) -> Volume:
    """Read one DICOM series into napari order (z, y, x), rescale applied.

    Args:
        path: a folder, a DICOMDIR or one file of the series.
        series: SeriesInstanceUID to read when several image series are present.
        dtype: floating dtype of the returned data.
        found: :func:`find_series` of ``path`` when already known (reading several).

    Raises:
        InputError: no or several image series (listed), a non-image or multi-frame
            object, mixed orientations, uneven or duplicate slice positions.
    """
    import pydicom

    p = pathlib.Path(path)
    chosen = _choose(p, list(found) if found is not None else find_series(p), series)
    label = f"{p.name or p} series {chosen.uid}"
    files = list(chosen.files)
    datasets = []
    for f in files:
        try:
            with _quiet():
                datasets.append(pydicom.dcmread(f))
        except Exception as exc:  # truncated or corrupt file inside the series
            raise InputError(f"{f.name}: not a readable DICOM file ({type(exc).__name__})") from exc
        _check_frame(datasets[-1], f.name)
        if "PixelData" not in datasets[-1]:
            raise InputError(f"{f.name}: no pixel data (not an image)")
    order, lps = _geometry_from(datasets, files, label)
    with _quiet():
        slices = [_pixels(datasets[i], files[i].name) for i in order]
    source = np.stack([s.T for s in slices], axis=2).astype(np.dtype(dtype))  # (i, j, k)
    affine = _LPS_TO_RAS @ lps
    first = datasets[0]
    descrip = f"DICOM {first.get('Modality', '')} {first.get('SeriesDescription', '')}".strip()
    geometry = VolumeGeometry.from_affine(
        affine, source.shape, _header_bytes(affine, source.shape, descrip), name=label
    )
    return Volume(geometry.to_display(source), geometry, (p,), 0)
