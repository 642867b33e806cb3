"""DICOM series written by SimpleITK (GDCM), the way a scanner export is laid out.

``write_series`` writes one file per slice with ImagePositionPatient /
ImageOrientationPatient from a SimpleITK image (LPS, like DICOM), so
``SimpleITK.ImageSeriesReader`` is an independent reference for every voxel's position.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
_ROOT = "1.2.826.0.1.3680043.2.1125.7"


def rotation(axis: int, degrees: float) -> np.ndarray:
    """(3, 3) rotation about LPS axis ``axis``."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = [a for a in range(3) if a != axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


AXIAL = np.eye(3)
CORONAL = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # i -> L, j -> S, slices -> A
SAGITTAL = np.array([[0.0, 0, -1], [1, 0, 0], [0, -1, 0]])  # i -> P, j -> I, slices -> R
HEAD_FIRST = np.diag([1.0, 1.0, -1.0])  # axial, slices written superior to inferior
OBLIQUE = rotation(0, 35.0) @ rotation(2, -12.0)


def series_image(
    shape: tuple[int, int, int] = (5, 6, 7),
    *,
    spacing: Sequence[float] = (0.7, 0.8, 2.5),
    origin: Sequence[float] = (10.0, -20.0, 30.0),
    direction: np.ndarray = AXIAL,
    seed: int = 0,
    low: int = -1000,
    high: int = 2000,
) -> sitk.Image:
    """int16 SimpleITK image, array shape (slices, rows, columns)."""
    arr = np.random.default_rng(seed).integers(low, high, shape).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([float(v) for v in spacing])
    img.SetOrigin([float(v) for v in origin])
    img.SetDirection(np.asarray(direction, dtype=float).flatten().tolist())
    return img


def write_series(
    folder: str | pathlib.Path,
    img: sitk.Image,
    *,
    uid: str = f"{_ROOT}.1",
    modality: str = "MR",
    description: str = "T1 test",
    rescale: tuple[float, float] | None = None,
    names: Sequence[str] | None = None,
    instance_order: Sequence[int] | None = None,
) -> list[pathlib.Path]:
    """Write ``img`` as one DICOM file per slice; returns the files in slice order.

    Args:
        rescale: (slope, intercept): GDCM stores (value - intercept) / slope.
        names: file names per slice (default ``IM{k:04d}.dcm``); shuffle them to test
            that order comes from positions, not names.
        instance_order: InstanceNumber per slice (default 1..n).
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")  # names without .dcm, as PACS exports them
    writer.KeepOriginalImageUIDOn()
    d = img.GetDirection()
    iop = "\\".join(repr(float(v)) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    n = img.GetDepth()
    names = list(names) if names is not None else [f"IM{k:04d}.dcm" for k in range(n)]
    numbers = list(instance_order) if instance_order is not None else list(range(1, n + 1))
    out = []
    for k in range(n):
        sl = img[:, :, k]
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0016": CT_IMAGE if modality == "CT" else MR_IMAGE,
            "0008|0018": f"{uid}.{k + 1}",
            "0008|0060": modality,
            "0008|103e": description,
            "0010|0010": "Test^Patient",
            "0010|0020": "TEST",
            "0008|0020": "20260101",
            "0008|0030": "120000",
            "0020|0010": "1",
            "0020|0011": "1",
            "0020|000d": f"{_ROOT}.99",
            "0020|000e": uid,
            "0020|0013": str(numbers[k]),
            "0020|0032": "\\".join(repr(float(v)) for v in pos),
            "0020|0037": iop,
        }
        if rescale is not None:
            tags["0028|1053"] = repr(float(rescale[0]))
            tags["0028|1052"] = repr(float(rescale[1]))
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        path = folder / names[k]
        writer.SetFileName(str(path))
        writer.Execute(sl)
        out.append(path)
    return out


def sitk_series(folder: str | pathlib.Path, uid: str | None = None) -> sitk.Image:
    """The reference: SimpleITK's ImageSeriesReader on the folder (one series)."""
    reader = sitk.ImageSeriesReader()
    args = (str(folder), uid) if uid else (str(folder),)
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(*args))
    return reader.Execute()


def sitk_lps_affine(img: sitk.Image) -> np.ndarray:
    """(4, 4) SimpleITK index (i, j, k) -> LPS mm."""
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    aff[:3, 3] = img.GetOrigin()
    return aff
