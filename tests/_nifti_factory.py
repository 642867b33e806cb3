"""Small NIfTI files with known geometry for the I/O tests (import from test modules)."""

from __future__ import annotations

import pathlib

import nibabel as nib
import numpy as np

SHAPE = (6, 7, 5)


def rotation(axis: int, degrees: float) -> np.ndarray:
    """(3, 3) rotation about RAS axis ``axis``."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = [a for a in range(3) if a != axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


def affine_from(directions: np.ndarray, zooms=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    """(4, 4) affine whose voxel axis columns are ``directions`` scaled by ``zooms``."""
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(directions, dtype=float) * np.asarray(zooms, dtype=float)
    aff[:3, 3] = origin
    return aff


R, A, S = np.eye(3)
AFFINES = {
    "RAS": affine_from(np.column_stack([R, A, S]), (1.0, 1.0, 1.0), (-3.0, -4.0, 5.0)),
    "LPS": affine_from(np.column_stack([-R, -A, S]), (0.8, 0.8, 2.5), (10.0, 12.0, -7.0)),
    "PIR": affine_from(np.column_stack([-A, -S, R]), (1.2, 3.0, 0.7), (1.0, 2.0, 3.0)),
    "anisotropic": affine_from(np.column_stack([-R, A, -S]), (0.43, 0.43, 5.0), (7, -3, 60)),
    "oblique": affine_from(
        rotation(0, 17.0) @ rotation(2, -8.0) @ np.column_stack([R, A, S]),
        (1.0, 0.9, 2.0),
        (-20.0, 15.0, 4.0),
    ),
}


def label_array(shape=SHAPE, n_labels: int = 4, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """Random label volume (source order) with values 0..n_labels-1."""
    return np.random.default_rng(seed).integers(0, n_labels, shape).astype(dtype)


def make_nifti(
    path: str | pathlib.Path,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    qform_code: int = 1,
    sform_code: int = 2,
    units: tuple[str, str] = ("mm", "sec"),
    slope: float | None = None,
    inter: float | None = None,
    nifti2: bool = False,
    descrip: str = "test volume",
) -> pathlib.Path:
    """Write ``data`` (source order) with ``affine`` in both qform and sform."""
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = cls(data, affine)
    hdr = img.header
    hdr.set_qform(affine, code=qform_code)
    hdr.set_sform(affine, code=sform_code)
    hdr.set_xyzt_units(*units)
    hdr["descrip"] = descrip.encode()
    if slope is not None:
        hdr.set_slope_inter(slope, inter or 0.0)
    path = pathlib.Path(path)
    nib.save(img, path)
    return path


def world_coords(affine: np.ndarray, shape=SHAPE) -> np.ndarray:
    """(*shape, 3) RAS+ mm of every voxel of a source-order array."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return idx @ affine[:3, :3].T + affine[:3, 3]
