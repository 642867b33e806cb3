"""Fill between slices: labels painted on some slices, interpolated onto the slices between.

Shape-based, per label, with ITK's ``MorphologicalContourInterpolator`` (Zukić et al.,
"ND morphological contour interpolation", the algorithm behind ITK-SNAP's and 3D Slicer's
"Fill between slices"; PyPI ``itk-morphologicalcontourinterpolation``). Slices are along
display axis 0. The painted slices are never changed; only slices strictly between two
painted slices of a label receive it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from napari_medsegdiff.errors import InputError

INSTALL_HINT = "pip install itk-morphologicalcontourinterpolation"


@dataclass(frozen=True)
class Fill:
    """What fill-between produced.

    Attributes:
        labels: (z, y, x) the input labels with the filled slices replaced.
        filled: slices that received interpolated labels (never a painted slice).
        painted: the painted slices the fill started from.
    """

    labels: np.ndarray
    filled: tuple[int, ...]
    painted: tuple[int, ...]


_POOL: ProcessPoolExecutor | None = None


def _contour_interpolation(sparse: np.ndarray) -> np.ndarray | str:
    """ITK's filter on (z, y, x) labels (runs in the helper process); a message if no ITK."""
    try:
        import itk

        mci = itk.MorphologicalContourInterpolator
    except (ImportError, AttributeError):
        return f"fill between slices needs ITK: {INSTALL_HINT}"
    interp = mci.New(itk.image_from_array(np.ascontiguousarray(sparse)))
    interp.SetAxis(2)  # ITK's axis order is (x, y, z): numpy's axis 0
    interp.SetUseDistanceTransform(True)
    interp.Update()
    return np.asarray(itk.array_from_image(interp.GetOutput()))


def _isolated(sparse: np.ndarray) -> np.ndarray:
    """Run ITK in one long-lived helper process (spawned on first use, reused after).

    ITK's SWIG modules take ~10 s to load and, loaded beside Qt, have crashed the
    interpreter at exit (glibc heap abort), so they never enter this process.
    """
    global _POOL
    for attempt in (0, 1):
        if _POOL is None:
            _POOL = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            out = _POOL.submit(_contour_interpolation, sparse).result()
            break
        except BrokenProcessPool:
            _POOL = None
            if attempt:
                raise InputError("fill between slices: the ITK helper process died") from None
    if isinstance(out, str):
        raise InputError(out)
    return out


def interpolate_slices(labels: np.ndarray, painted: Sequence[int]) -> np.ndarray:
    """(z, y, x) labels of the painted slices -> the shape-based fill of every slice between.

    Only the ``painted`` slices of ``labels`` are read. Returns a (z, y, x) array of the
    same dtype holding the interpolation on all slices (painted ones as given).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"fill between slices needs a volume (z, y, x), got {labels.shape}")
    picks = sorted({int(s) for s in painted})
    if any(not 0 <= s < labels.shape[0] for s in picks):
        raise InputError(f"slices {picks} outside 0..{labels.shape[0] - 1}", argument="slices")
    if len(picks) < 2:
        raise InputError(
            "fill between slices needs labels painted on at least two slices", argument="slices"
        )
    if labels.size and labels.min() < 0:
        raise InputError("labels must be 0 (background), 1, 2, ...")
    sparse = np.zeros(labels.shape, np.uint16 if labels.max(initial=0) > 255 else np.uint8)
    sparse[picks] = labels[picks]
    out = _isolated(sparse)
    return out.astype(labels.dtype, copy=False)


def fill_between(labels: np.ndarray, painted: Sequence[int]) -> Fill:
    """Interpolate the ``painted`` slices' labels onto the slices between them.

    A slice between the first and last painted slice that is not painted gets the
    interpolation (replacing what it held); the painted slices and the slices outside
    their span are returned unchanged.
    """
    labels = np.asarray(labels)
    picks = sorted({int(s) for s in painted})
    interp = interpolate_slices(labels, picks)
    between = [z for z in range(picks[0] + 1, picks[-1]) if z not in set(picks)]
    out = labels.copy()
    out[between] = interp[between]
    return Fill(out, tuple(between), tuple(picks))
