"""Volumes in napari order and the exact geometry needed to write results back.

Display convention (the one place it is decided): napari axes ``(z, y, x)`` point to the
anatomical directions ``('S', 'P', 'L')``. Axis 0 (the slider) walks axial slices from
inferior to superior; in the 2-D view anterior is at the top and the patient's right is
on the screen's left (radiological convention). World coordinates shown by napari are
millimetres in that same ``(S, P, L)`` frame, i.e. ``(S, -A, -R)`` of RAS+, so layers from
the same scanner space overlay.

A :class:`VolumeGeometry` records the source affine, the source array shape, the nibabel
orientation transform source -> display and the full source header, so
:meth:`VolumeGeometry.to_source` undoes the display transform exactly (only transposes and
flips) and writers can restore every header code.
"""

from __future__ import annotations

import base64
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from napari_medsegdiff.errors import InputError

__all__ = [
    "AFFINE_ATOL_MM",
    "DISPLAY_AXCODES",
    "OBLIQUE_TOL",
    "Volume",
    "VolumeGeometry",
]

DISPLAY_AXCODES: tuple[str, str, str] = ("S", "P", "L")
"""Anatomical direction each napari axis (z, y, x) points to."""

OBLIQUE_TOL = 1e-3
"""Largest off-axis component of a normalized direction cosine still called axis-aligned."""

AFFINE_ATOL_MM = 1e-3
"""Affines of co-registered files (channels) must agree within this many mm."""

_GEOMETRY_KEY = "medsegdiff_geometry"
_GEOMETRY_VERSION = 1
# RAS+ world (x, y, z) -> napari world (S, P, L) = (z, -y, -x).
_RAS_TO_SPL = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, dtype=np.float64, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class VolumeGeometry:
    """Where a volume's voxels are in space and how its array was reordered for display.

    Attributes:
        affine: (4, 4) source affine as in the file (sform if its code > 0, else qform,
            else the pixdim-only base affine), source voxel (i, j, k) -> RAS+ mm.
        source_shape: spatial shape (3,) of the file's array.
        ornt: (3, 2) nibabel orientation transform source -> display (``ornt_transform``).
        header_bytes: the full NIfTI-1/2 header block (348 or 540 bytes; may be empty for
            geometries built without a file) so writers restore header codes exactly.
        is_oblique: True when the direction cosines are not a permutation (within
            :data:`OBLIQUE_TOL`); the display is then the closest axis-aligned one.
    """

    affine: np.ndarray
    source_shape: tuple[int, ...]
    ornt: np.ndarray
    header_bytes: bytes = b""
    is_oblique: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "affine", _readonly(self.affine))
        object.__setattr__(self, "ornt", _readonly(self.ornt))
        object.__setattr__(self, "source_shape", tuple(int(n) for n in self.source_shape))
        object.__setattr__(self, "header_bytes", bytes(self.header_bytes))
        if self.affine.shape != (4, 4) or self.ornt.shape != (3, 2) or len(self.source_shape) != 3:
            raise InputError(
                "geometry: need a 4x4 affine, a (3, 2) orientation and a 3-D source shape, "
                f"got {self.affine.shape}, {self.ornt.shape}, {self.source_shape}"
            )

    @classmethod
    def from_affine(
        cls,
        affine: np.ndarray,
        source_shape: tuple[int, ...],
        header_bytes: bytes = b"",
        *,
        name: str = "volume",
    ) -> VolumeGeometry:
        """Build the geometry of a 3-D array of ``source_shape`` with this (4, 4) affine."""
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise InputError(f"{name}: affine must be a finite 4x4 matrix")
        rzs = affine[:3, :3]
        norms = np.linalg.norm(rzs, axis=0)
        if np.any(norms < 1e-8) or abs(np.linalg.det(rzs)) < 1e-12:
            raise InputError(f"{name}: degenerate affine (zero voxel size or collinear axes)")
        src = io_orientation(affine)
        if np.isnan(src).any():  # axes so unequal in scale that one is numerically lost
            raise InputError(f"{name}: degenerate affine (voxel sizes differ by > 1e15)")
        ornt = ornt_transform(src, axcodes2ornt(DISPLAY_AXCODES))
        cosines = np.abs(rzs / norms)
        nearest = np.zeros_like(cosines)
        nearest[src[:, 0].astype(int), np.arange(3)] = 1.0
        oblique = bool(np.max(np.abs(cosines - nearest)) > OBLIQUE_TOL)
        return cls(affine, tuple(source_shape[:3]), ornt, header_bytes, oblique)

    # --- display properties -------------------------------------------------------------
    @property
    def _display_to_source(self) -> np.ndarray:
        """(4, 4) display voxel index -> source voxel index."""
        mat = np.zeros((4, 4))
        mat[3, 3] = 1.0
        for src_axis, (disp_axis, flip) in enumerate(self.ornt):
            d = int(disp_axis)
            if flip < 0:
                mat[src_axis, d] = -1.0
                mat[src_axis, 3] = self.source_shape[src_axis] - 1
            else:
                mat[src_axis, d] = 1.0
        return mat

    @property
    def display_affine(self) -> np.ndarray:
        """(4, 4) display voxel (z, y, x) -> RAS+ mm."""
        return self.affine @ self._display_to_source

    @property
    def world_affine(self) -> np.ndarray:
        """(4, 4) display voxel (z, y, x) -> napari world (S, P, L) mm, rotation included."""
        out = np.eye(4)
        disp = self.display_affine
        out[:3, :3] = _RAS_TO_SPL @ disp[:3, :3]
        out[:3, 3] = _RAS_TO_SPL @ disp[:3, 3]
        return out

    @property
    def display_shape(self) -> tuple[int, int, int]:
        """Shape (3,) of the array in napari order (z, y, x)."""
        shape = [0, 0, 0]
        for src_axis, (disp_axis, _) in enumerate(self.ornt):
            shape[int(disp_axis)] = self.source_shape[src_axis]
        return (shape[0], shape[1], shape[2])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along napari axes (z, y, x)."""
        norms = np.linalg.norm(self.display_affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def scale(self) -> tuple[float, float, float]:
        """napari layer ``scale`` (same as :attr:`spacing`)."""
        return self.spacing

    @property
    def translate(self) -> tuple[float, float, float]:
        """napari layer ``translate``: (S, P, L) mm of display voxel (0, 0, 0)."""
        t = self.world_affine[:3, 3]
        return (float(t[0]), float(t[1]), float(t[2]))

    # --- array reordering ----------------------------------------------------------------
    def _check_spatial(self, arr: np.ndarray, shape: tuple[int, ...], what: str) -> None:
        if arr.ndim not in (3, 4) or tuple(arr.shape[:3]) != tuple(shape):
            raise InputError(
                f"{what}: expected shape {tuple(shape)} (+ optional channels), "
                f"got {tuple(arr.shape)}"
            )

    def to_display(self, arr: np.ndarray) -> np.ndarray:
        """Source order (i, j, k[, c]) -> napari order (z, y, x[, c]); exact."""
        arr = np.asanyarray(arr)
        self._check_spatial(arr, self.source_shape, "source array")
        return np.ascontiguousarray(apply_orientation(arr, self.ornt))

    def to_source(self, arr: np.ndarray) -> np.ndarray:
        """napari order (z, y, x[, c]) -> source order (i, j, k[, c]); exact inverse."""
        arr = np.asanyarray(arr)
        self._check_spatial(arr, self.display_shape, "display array")
        inverse = np.zeros((3, 2))
        for src_axis, (disp_axis, flip) in enumerate(self.ornt):
            inverse[int(disp_axis)] = (src_axis, flip)
        return np.ascontiguousarray(apply_orientation(arr, inverse))

    def same_space(self, other: VolumeGeometry, atol: float = AFFINE_ATOL_MM) -> bool:
        """True when both have the same source shape and affines within ``atol`` mm."""
        return self.source_shape == other.source_shape and bool(
            np.allclose(self.affine, other.affine, rtol=0.0, atol=atol)
        )

    # --- metadata ------------------------------------------------------------------------
    def to_metadata(self) -> dict[str, Any]:
        """JSON-friendly dict (stored in napari layer metadata under ``medsegdiff_geometry``)."""
        return {
            "version": _GEOMETRY_VERSION,
            "affine": self.affine.tolist(),
            "source_shape": list(self.source_shape),
            "ornt": self.ornt.tolist(),
            "header_b64": base64.b64encode(self.header_bytes).decode("ascii"),
            "is_oblique": self.is_oblique,
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any] | None) -> VolumeGeometry:
        """Inverse of :meth:`to_metadata`; also accepts a whole layer-metadata dict."""
        if isinstance(metadata, dict) and isinstance(metadata.get(_GEOMETRY_KEY), dict):
            metadata = metadata[_GEOMETRY_KEY]
        needed = ("affine", "source_shape", "ornt")
        if not isinstance(metadata, dict) or any(k not in metadata for k in needed):
            raise InputError(
                "layer metadata has no source geometry ('medsegdiff_geometry'): which image "
                "does it belong to? Create it from an image opened with napari-medsegdiff"
            )
        try:
            return cls(
                np.asarray(metadata["affine"], dtype=np.float64),
                tuple(metadata["source_shape"]),
                np.asarray(metadata["ornt"], dtype=np.float64),
                base64.b64decode(metadata.get("header_b64", "")),
                bool(metadata.get("is_oblique", False)),
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"layer metadata: corrupt 'medsegdiff_geometry' ({exc})") from exc


@dataclass
class Volume:
    """A scan in napari order.

    Attributes:
        data: float32 (z, y, x) or (z, y, x, c), slope/intercept applied, NaN/Inf replaced.
        geometry: how ``data`` maps to the source file(s).
        paths: the file(s) read; several files are channels in this order.
        nonfinite: number of NaN/Inf voxels found (replaced by the finite minimum).
    """

    data: np.ndarray
    geometry: VolumeGeometry
    paths: tuple[pathlib.Path, ...] = ()
    nonfinite: int = 0

    @property
    def n_channels(self) -> int:
        """1 for (z, y, x) data, else the size of the channel axis."""
        return 1 if self.data.ndim == 3 else int(self.data.shape[3])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`data`."""
        return tuple(self.data.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (z, y, x)."""
        return self.geometry.spacing
