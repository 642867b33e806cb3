"""Oblique scans in napari: the world position of every voxel is the file's (<= 0.5 mm)
for the image layer and for the mask / variance layers made from it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("napari")

from _dicom_factory import OBLIQUE, series_image, write_series
from _nifti_factory import affine_from, make_nifti, rotation

from napari_medsegdiff.gui import layers as L
from napari_medsegdiff.volume import VolumeGeometry

R, A, S = np.eye(3)
TILT_35 = affine_from(
    rotation(0, 35.0) @ np.column_stack([R, A, S]), (0.9, 0.9, 3.0), (-90, -120, -60)
)
SHEARED = TILT_35.copy()
SHEARED[:3, 2] += (0.0, 1.2, 0.0)  # gantry tilt: slices shifted in-plane as they advance


def _open(viewer, path):
    from napari_medsegdiff._reader import napari_get_reader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data, kwargs, _ = napari_get_reader(str(path))(str(path))[0]
    return viewer.add_image(data, **kwargs)


def _expected_world(geom: VolumeGeometry, idx: np.ndarray) -> np.ndarray:
    """(S, P, L) mm of display voxels from the file's affine, independent of napari."""
    source = (geom._display_to_source @ np.c_[idx, np.ones(len(idx))].T).T[:, :3]
    ras = source @ geom.affine[:3, :3].T + geom.affine[:3, 3]
    return np.c_[ras[:, 2], -ras[:, 1], -ras[:, 0]]


def _check_layers(viewer, image) -> float:
    """Max error (mm) of image, mask and variance against the file; returns the error a
    scale + translate placement (the old one) would have had."""
    mask, variance = L.ensure_result_layers(viewer, image, "model")
    geom = VolumeGeometry.from_metadata(image.metadata)
    shape = np.array(image.data.shape)
    rng = np.random.default_rng(0)
    idx = np.vstack(
        [
            rng.integers(0, shape, (200, 3)),
            (shape - 1) * np.array(np.meshgrid([0, 1], [0, 1], [0, 1])).reshape(3, -1).T,
        ]
    )
    expected = _expected_world(geom, idx)
    for layer in (image, mask, variance):
        world = np.array([layer.data_to_world(i) for i in idx])
        assert np.max(np.linalg.norm(world - expected, axis=1)) <= 0.5, layer.name
    old = np.asarray(image.translate) + idx * np.asarray(image.scale)
    return float(np.max(np.linalg.norm(old - expected, axis=1)))


@pytest.mark.parametrize("affine", [TILT_35, SHEARED], ids=["tilt35", "sheared"])
def test_oblique_nifti_layers_are_placed_exactly(make_napari_viewer, tmp_path, affine):
    data = np.random.default_rng(1).random((64, 64, 20)).astype(np.float32)
    path = make_nifti(tmp_path / "tilted.nii.gz", data, affine)
    viewer = make_napari_viewer()
    image = _open(viewer, path)
    assert "medsegdiff_warning" not in image.metadata
    old_error = _check_layers(viewer, image)
    assert old_error > 20  # what scale + translate alone got wrong (mm)


def test_oblique_dicom_series_layers_are_placed_exactly(make_napari_viewer, tmp_path):
    write_series(tmp_path / "dcm", series_image((6, 16, 12), direction=OBLIQUE, seed=2))
    viewer = make_napari_viewer()
    [image] = viewer.open(str(tmp_path / "dcm"), plugin="napari-medsegdiff")  # Open Folder
    assert image.name == "dcm"
    _check_layers(viewer, image)
