"""NIfTI as other tools write it: scaled BIDS maps, big label ids, SPM pairs, ANTs' 5-D
singleton dims, 2-D files, fMRI/DWI series (reader + read_volume + writer)."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from _nifti_factory import AFFINES, SHAPE, label_array, make_nifti

from napari_medsegdiff._reader import napari_get_reader
from napari_medsegdiff._writer import write_labels_layer
from napari_medsegdiff.nifti import read_volume, write_labels
from napari_medsegdiff.volume import VolumeGeometry


def _layers(path):
    paths = [str(p) for p in path] if isinstance(path, list) else str(path)
    reader = napari_get_reader(paths)
    assert callable(reader)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reader(paths)


def test_bids_probseg_uint8_with_slope_opens_as_probabilities(tmp_path):
    """uint8 on disk, scl_slope 1/255: values are probabilities, not label ids."""
    prob = np.random.default_rng(0).random(SHAPE)
    raw = np.round(prob * 255).astype(np.uint8)
    path = tmp_path / "sub-01_label-GM_probseg.nii.gz"
    img = nib.Nifti1Image(raw, AFFINES["LPS"])
    img.header.set_slope_inter(1 / 255, 0.0)
    nib.save(img, path)
    [(data, kwargs, kind)] = _layers(path)
    assert kind == "image"
    header = kwargs["metadata"]["header"]
    assert header["scl_slope"] == pytest.approx(1 / 255) and header["scl_inter"] == 0.0
    geom = VolumeGeometry.from_metadata(kwargs["metadata"])
    np.testing.assert_allclose(geom.to_source(data), raw / 255, atol=1e-6)
    assert 0.9 < float(data.max()) <= 1.0


def test_scaled_seg_file_with_fractions_is_not_labels(tmp_path):
    raw = label_array(n_labels=5)
    path = make_nifti(tmp_path / "lesion_seg.nii.gz", raw, AFFINES["RAS"], slope=0.5, inter=0.0)
    [(data, _, kind)] = _layers(path)
    assert kind == "image" and set(np.unique(data)) == {0.0, 0.5, 1.0, 1.5, 2.0}


def test_fsl_seg_with_unit_slope_is_labels(tmp_path):
    """FSL writes scl_slope = 1, scl_inter = 0 explicitly: still unscaled labels."""
    raw = label_array(dtype=np.int16)
    path = make_nifti(tmp_path / "T1_fast_seg.nii.gz", raw, AFFINES["PIR"], slope=1.0, inter=0.0)
    [(data, kwargs, kind)] = _layers(path)
    assert kind == "labels"
    np.testing.assert_array_equal(
        VolumeGeometry.from_metadata(kwargs["metadata"]).to_source(data), raw
    )


def test_label_ids_above_2_to_24_stay_distinct(tmp_path):
    """float32 has 24 bits of mantissa: 2**24 and 2**24 + 1 would merge."""
    raw = label_array(dtype=np.int32)
    raw[raw == 2] = 2**24
    raw[raw == 3] = 2**24 + 1
    path = make_nifti(tmp_path / "aparc_seg.nii.gz", raw, AFFINES["LPS"])
    [(data, kwargs, kind)] = _layers(path)
    assert kind == "labels" and data.dtype == np.int32
    assert set(np.unique(data)) == {0, 1, 2**24, 2**24 + 1}
    [out] = write_labels_layer(str(tmp_path / "saved.nii.gz"), data, kwargs)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), raw)
    assert read_volume(path, dtype=None).data.dtype == np.int32


def test_spm_hdr_img_pair_opens_once_and_exports(tmp_path):
    src = np.random.default_rng(1).normal(100, 10, SHAPE).astype(np.float32)
    pair = nib.Nifti1Pair(src, AFFINES["anisotropic"])
    nib.save(pair, tmp_path / "rT1.img")
    assert (tmp_path / "rT1.hdr").is_file()
    layers = _layers([tmp_path / "rT1.hdr", tmp_path / "rT1.img"])  # both dropped together
    assert len(layers) == 1 and layers[0][1]["name"] == "rT1"
    vol = read_volume(tmp_path / "rT1.img")
    np.testing.assert_array_equal(vol.geometry.to_source(vol.data), src)
    out = nib.load(write_labels(np.ones(vol.shape, np.uint8), vol, tmp_path / "m.nii.gz"))
    assert isinstance(out, nib.Nifti1Image) and out.header["magic"] == b"n+1"
    np.testing.assert_allclose(out.affine, AFFINES["anisotropic"], atol=1e-5)


def test_trailing_singleton_dims_are_a_3d_volume(tmp_path):
    """ANTs / ITK write (x, y, z, 1, 1) (dim[0] = 5)."""
    raw = label_array(dtype=np.float32)
    path = make_nifti(tmp_path / "warped.nii.gz", raw[..., None, None], AFFINES["LPS"])
    assert nib.load(path).header["dim"][0] == 5
    vol = read_volume(path)
    assert vol.data.ndim == 3 and vol.geometry.source_shape == SHAPE
    back = nib.load(write_labels(vol.data.astype(np.uint8), vol, tmp_path / "m.nii.gz"))
    assert back.shape == SHAPE
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), raw)


def test_two_d_file_is_one_slice(tmp_path):
    raw = np.arange(20, dtype=np.int16).reshape(4, 5)
    path = tmp_path / "slice.nii"
    nib.save(nib.Nifti1Image(raw, AFFINES["RAS"]), path)
    assert nib.load(path).header["dim"][0] == 2
    vol = read_volume(path)
    assert vol.data.shape == (1, 5, 4)  # (S, P, L): one axial slice
    assert vol.geometry.source_shape == (4, 5, 1)
    back = nib.load(write_labels(np.ones((1, 5, 4), np.uint8), vol, tmp_path / "m.nii.gz"))
    assert back.shape == (4, 5, 1)
    [(data, _, kind)] = _layers(path)
    assert data.shape == (1, 5, 4) and kind == "image"


def test_fmri_series_is_one_layer_with_a_volume_slider(tmp_path):
    raw = np.random.default_rng(2).random((*SHAPE, 30)).astype(np.float32)
    path = make_nifti(tmp_path / "bold.nii.gz", raw, AFFINES["oblique"])
    [(data, kwargs, kind)] = _layers(path)
    assert kind == "image" and kwargs["name"] == "bold"
    geom = VolumeGeometry.from_metadata(kwargs["metadata"])
    assert data.shape == (30, *geom.display_shape) and kwargs["metadata"]["volumes"] == 30
    assert len(kwargs["scale"]) == 4 and kwargs["scale"][0] == 1.0
    assert np.asarray(kwargs["affine"]).shape == (5, 5)
    np.testing.assert_array_equal(data[7], geom.to_display(raw[..., 7]))
