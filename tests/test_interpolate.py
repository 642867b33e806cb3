"""Fill between slices (engine and `medsegdiff interpolate`): a known answer, painted slices
untouched, one-line refusals."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("itk") is None:  # not imported here: ITK runs in a helper
    pytest.skip("itk-morphologicalcontourinterpolation is not installed", allow_module_level=True)

from _nifti_factory import AFFINES, make_nifti

from napari_medsegdiff.errors import InputError
from napari_medsegdiff.interpolate import fill_between


def two_ellipsoids(depth=40, size=64) -> np.ndarray:
    z, y, x = np.mgrid[:depth, :size, :size]
    big = ((z - 20) / 15) ** 2 + ((y - 32) / 20) ** 2 + ((x - 30) / 12) ** 2 <= 1
    small = ((z - 20) / 12) ** 2 + ((y - 30) / 7) ** 2 + ((x - 52) / 5) ** 2 <= 1
    out = np.zeros(z.shape, np.uint8)
    out[big] = 1
    out[small] = 2
    return out


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_an_ellipsoid_painted_on_every_fourth_slice_comes_back_between():
    truth = two_ellipsoids()
    painted = list(range(6, 36, 4))
    sparse = np.zeros_like(truth)
    sparse[painted] = truth[painted]
    sparse[0] = 7  # outside the span: never touched
    fill = fill_between(sparse, painted)
    between = [z for z in range(7, 34) if z not in painted]
    assert list(fill.filled) == between
    for c in (1, 2):
        assert dice(fill.labels[between] == c, truth[between] == c) > 0.9, c
    assert np.array_equal(fill.labels[painted], truth[painted])
    assert np.all(fill.labels[0] == 7) and not fill.labels[36:].any()
    assert fill.labels.dtype == sparse.dtype


def test_one_painted_slice_is_refused():
    labels = np.zeros((5, 8, 8), np.uint8)
    labels[2, 2:5, 2:5] = 1
    with pytest.raises(InputError, match="at least two slices"):
        fill_between(labels, [2])
    with pytest.raises(InputError, match="outside"):
        fill_between(labels, [2, 9])


def test_the_cli_fills_between_and_keeps_the_geometry(tmp_path, capsys):
    import nibabel as nib

    from napari_medsegdiff.cli import main
    from napari_medsegdiff.nifti import read_labels

    truth = two_ellipsoids(depth=24, size=32)
    painted = [4, 10, 16]
    sparse = np.zeros_like(truth)
    sparse[painted] = truth[painted]
    # display (z, y, x) = (S, P, L); a RAS file stores (x, y, z) = (L->R, P->A, I->S)
    src = np.flip(np.flip(sparse.transpose(2, 1, 0), 0), 1)
    path = make_nifti(tmp_path / "painted.nii.gz", src.astype(np.uint8), AFFINES["RAS"])
    assert np.array_equal(read_labels(path).data, sparse)
    out = tmp_path / "filled.nii.gz"
    assert main(["interpolate", "--labels", str(path), "--slices", "4,10,16", "-o", str(out)]) == 0
    assert "filled 10 slice(s) between painted slices 4..16" in capsys.readouterr().out
    filled = read_labels(out)
    assert np.allclose(nib.load(out).affine, nib.load(path).affine)
    assert np.array_equal(filled.data[painted], sparse[painted])
    assert dice(filled.data[5:16] == 1, truth[5:16] == 1) > 0.85
    assert main(["interpolate", "--labels", str(path), "--slices", "4", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--slices" in err[0] and "at least two" in err[0], err
