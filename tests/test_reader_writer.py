"""napari reader / writer contributions: plain layer tuples in, aligned NIfTI out."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
from _nifti_factory import AFFINES, SHAPE, label_array, make_nifti

from napari_medsegdiff._reader import napari_get_reader, read_nifti_layers
from napari_medsegdiff._writer import write_labels_layer
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.volume import VolumeGeometry


def _layers(path):
    reader = napari_get_reader(str(path))
    assert callable(reader)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reader(str(path))


def test_get_reader_accepts_only_nifti():
    assert napari_get_reader("scan.nii") is not None
    assert napari_get_reader("scan.NII.GZ") is not None
    assert napari_get_reader(["a.nii.gz", "b.nii"]) is not None
    assert napari_get_reader("scan.png") is None
    assert napari_get_reader("scan.nii.zip") is None
    assert napari_get_reader(["a.nii.gz", "b.tif"]) is None
    assert napari_get_reader([]) is None


def test_image_layer_tuple(tmp_path):
    src = np.random.default_rng(0).normal(100, 20, SHAPE).astype(np.float32)
    path = make_nifti(tmp_path / "brain_T1w.nii.gz", src, AFFINES["anisotropic"])
    [(data, kwargs, kind)] = _layers(path)
    geom = VolumeGeometry.from_metadata(kwargs["metadata"])
    assert kind == "image" and kwargs["name"] == "brain_T1w" and kwargs["colormap"] == "gray"
    assert data.shape == geom.display_shape and data.dtype == np.float32
    assert kwargs["scale"] == pytest.approx((5.0, 0.43, 0.43))
    assert kwargs["translate"] == geom.translate
    lo, hi = kwargs["contrast_limits"]
    assert src.min() <= lo < hi <= src.max()
    meta = kwargs["metadata"]
    np.testing.assert_allclose(meta["affine"], AFFINES["anisotropic"], atol=1e-6)
    assert meta["spacing"] == list(kwargs["scale"])
    assert meta["header"]["qform_code"] == 1 and meta["header"]["sform_code"] == 2
    assert meta["header"]["xyzt_units"] == ["mm", "sec"]
    assert meta["source_path"].endswith("brain_T1w.nii.gz")
    assert "medsegdiff_warning" not in meta
    json.dumps(meta)  # JSON-friendly


def test_integer_seg_file_opens_as_labels(tmp_path):
    src = label_array(dtype=np.int16)
    [(data, kwargs, kind)] = _layers(make_nifti(tmp_path / "case_seg.nii.gz", src, AFFINES["LPS"]))
    assert kind == "labels" and data.dtype == np.uint8
    assert "contrast_limits" not in kwargs
    geom = VolumeGeometry.from_metadata(kwargs["metadata"])
    np.testing.assert_array_equal(geom.to_source(data), src)
    # a float map called "seg" is a probability map, not labels
    prob = make_nifti(tmp_path / "seg_prob.nii", src.astype(np.float32) / 4, AFFINES["LPS"])
    assert _layers(prob)[0][2] == "image"


def test_four_d_gives_one_image_per_channel(tmp_path):
    src = np.stack([label_array(seed=s) for s in range(3)], axis=-1)
    layers = _layers(make_nifti(tmp_path / "brats.nii.gz", src, AFFINES["RAS"]))
    assert [k["name"] for _, k, _ in layers] == ["brats [c0]", "brats [c1]", "brats [c2]"]
    assert [t for *_, t in layers] == ["image"] * 3
    assert [k["metadata"]["channel"] for _, k, _ in layers] == [0, 1, 2]
    assert all(d.shape == (5, 7, 6) for d, _, _ in layers)


@pytest.mark.parametrize("case", ["LPS", "oblique"])
def test_layer_world_position_is_the_file_affine(tmp_path, case):
    """affine @ (translate + scale * index) = (S, P, L) of the file's affine, every voxel."""
    path = make_nifti(tmp_path / "tilt.nii.gz", label_array(), AFFINES[case])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "oblique, approximate" warning any more
        [(data, kwargs, _)] = read_nifti_layers(str(path))
    assert "medsegdiff_warning" not in kwargs["metadata"]
    assert ("affine" in kwargs) == (case == "oblique")
    geom = VolumeGeometry.from_metadata(kwargs["metadata"])
    idx = np.stack(np.meshgrid(*map(np.arange, data.shape), indexing="ij"), -1).reshape(-1, 3)
    world = np.asarray(kwargs["translate"]) + idx * np.asarray(kwargs["scale"])
    affine = np.asarray(kwargs.get("affine", np.eye(4)))
    world = world @ affine[:3, :3].T + affine[:3, 3]
    source = (geom._display_to_source @ np.c_[idx, np.ones(len(idx))].T).T[:, :3]
    ras = source @ AFFINES[case][:3, :3].T + AFFINES[case][:3, 3]
    spl = np.c_[ras[:, 2], -ras[:, 1], -ras[:, 0]]
    np.testing.assert_allclose(world, spl, atol=1e-6)


def test_reader_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match=r"broken\.nii\.gz"):
        napari_get_reader(str(bad))(str(bad))


@pytest.mark.parametrize("case", ["PIR", "oblique"])
def test_writer_uses_layer_metadata_exact_round_trip(tmp_path, case):
    src = label_array(seed=3)
    path = make_nifti(tmp_path / f"{case}.nii.gz", src, AFFINES[case])
    data, kwargs, _ = _layers(path)[0]
    labels = np.rint(data).astype(np.int32)  # what a Labels layer drawn on it holds
    meta = {"name": "mask", "metadata": kwargs["metadata"], "scale": kwargs["scale"]}
    [written] = write_labels_layer(str(tmp_path / "mask"), labels, meta)
    assert written.endswith("mask.nii.gz")
    back, orig = nib.load(written), nib.load(path)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), src)
    np.testing.assert_allclose(back.affine, orig.affine, atol=1e-6)
    assert (back.header["qform_code"], back.header["sform_code"]) == (1, 2)
    # napari's save dialog already confirmed: the writer replaces the file
    write_labels_layer(written, np.zeros_like(labels), meta)
    assert not np.any(np.asanyarray(nib.load(written).dataobj))


def test_writer_refuses_without_geometry(tmp_path):
    with pytest.raises(InputError, match=r"'drawn': no source geometry.*which image"):
        write_labels_layer(
            str(tmp_path / "x.nii.gz"), np.zeros(SHAPE, np.uint8), {"name": "drawn", "metadata": {}}
        )
    assert not list(tmp_path.iterdir())


def test_writer_wrong_shape_names_expected(tmp_path):
    path = make_nifti(tmp_path / "ras.nii.gz", label_array(), AFFINES["RAS"])
    _, kwargs, _ = _layers(path)[0]
    with pytest.raises(InputError, match=r"expected \(5, 7, 6\)"):
        write_labels_layer(str(tmp_path / "x.nii.gz"), np.zeros(SHAPE, np.uint8), kwargs)
