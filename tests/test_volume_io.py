"""Exact NIfTI round trips, display orientation and one-line errors (volume.py, nifti.py)."""

from __future__ import annotations

import gzip
import itertools
import warnings

import nibabel as nib
import numpy as np
import pytest
from _nifti_factory import AFFINES, SHAPE, label_array, make_nifti, world_coords
from nibabel.orientations import apply_orientation

from napari_medsegdiff.errors import InputError
from napari_medsegdiff.nifti import read_volume, write_image, write_labels
from napari_medsegdiff.volume import Volume, VolumeGeometry

HEADER_FIELDS = (
    "qform_code",
    "sform_code",
    "xyzt_units",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "descrip",
)


def _read(path, **kw) -> Volume:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_volume(path, **kw)


@pytest.mark.parametrize("case", sorted(AFFINES))
@pytest.mark.parametrize("nifti2", [False, True])
def test_label_round_trip_is_exact(tmp_path, case, nifti2):
    src = label_array()
    path = make_nifti(tmp_path / f"{case}.nii.gz", src, AFFINES[case], nifti2=nifti2)
    vol = _read(path)
    assert vol.data.dtype == np.float32 and vol.shape == vol.geometry.display_shape
    out = write_labels(vol.data, vol, tmp_path / "labels.nii.gz")
    back, orig = nib.load(out), nib.load(path)
    assert type(back) is type(orig)
    assert back.shape == SHAPE and back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), src)
    np.testing.assert_allclose(back.affine, orig.affine, atol=1e-6)
    for field in HEADER_FIELDS:
        np.testing.assert_array_equal(back.header[field], orig.header[field], err_msg=field)
    np.testing.assert_array_equal(back.header["pixdim"][:4], orig.header["pixdim"][:4])


def test_scaled_source_and_uint16_labels(tmp_path):
    raw = label_array(dtype=np.int16)
    path = make_nifti(tmp_path / "ct.nii", raw, AFFINES["LPS"], slope=2.0, inter=-10.0)
    vol = _read(path)
    np.testing.assert_array_equal(vol.geometry.to_source(vol.data), raw * 2.0 - 10.0)
    labels = np.zeros(vol.geometry.display_shape, dtype=np.int64)
    labels[0, 0, 0] = 300
    back = nib.load(write_labels(labels, vol, tmp_path / "big.nii"))
    assert back.get_data_dtype() == np.uint16
    assert back.header.get_slope_inter() == (None, None) or back.header["scl_slope"] == 1
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), vol.geometry.to_source(labels))


@pytest.mark.parametrize("case", ["RAS", "LPS", "PIR", "anisotropic", "oblique"])
def test_display_orientation_superior_posterior_left(tmp_path, case):
    """Axis 0 walks inferior->superior, axis 1 anterior->posterior, axis 2 right->left."""
    world = world_coords(AFFINES[case]).astype(np.float32)
    geom = VolumeGeometry.from_affine(AFFINES[case], SHAPE)
    x, y, z = (geom.to_display(world[..., a]) for a in range(3))
    assert np.all(np.diff(z, axis=0) > 0)  # superior at high z
    assert np.all(np.diff(y, axis=1) < 0)  # anterior at low y (top of the screen)
    assert np.all(np.diff(x, axis=2) < 0)  # patient right at low x (screen left)
    assert geom.is_oblique == (case == "oblique")
    if case != "oblique":  # napari world (S, P, L) = translate + scale * index
        idx = np.array([2, 3, 1])
        spl = np.array(geom.translate) + np.array(geom.scale) * idx
        np.testing.assert_allclose(spl, [z[tuple(idx)], -y[tuple(idx)], -x[tuple(idx)]], atol=1e-4)


def test_marker_at_superior_anterior_right_end(tmp_path):
    src = np.zeros(SHAPE, np.uint8)
    src[:, :, -1] = 1  # LPS: last k is superior
    src[0, 0, 0] = 2  # most right (L is +i) & anterior (P is +j) & inferior corner
    vol = _read(make_nifti(tmp_path / "m.nii.gz", src, AFFINES["LPS"]))
    assert np.all(vol.data[-1] >= 1) and not np.any(vol.data[:-1] == 1)
    assert vol.data[0, 0, 0] == 2


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
def test_to_display_to_source_inverse_all_48_orientations(perm):
    src_shape = (3, 4, 5)
    arr = np.arange(np.prod(src_shape) * 2).reshape(*src_shape, 2)
    for flips in itertools.product([1, -1], repeat=3):
        aff = np.eye(4)
        aff[:3, :3] = np.eye(3)[:, perm] * flips
        geom = VolumeGeometry.from_affine(aff, src_shape)
        disp = geom.to_display(arr)
        assert disp.shape[:3] == geom.display_shape
        np.testing.assert_array_equal(geom.to_source(disp), arr)
        np.testing.assert_array_equal(disp, apply_orientation(arr, geom.ornt))
        assert geom.spacing == (1.0, 1.0, 1.0)


def test_oblique_reads_without_warning(tmp_path):
    """Placement is exact in napari now (layer affine): nothing to warn about."""
    path = make_nifti(tmp_path / "tilted.nii.gz", label_array(), AFFINES["oblique"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = read_volume(path)
    assert vol.geometry.is_oblique


def test_four_d_becomes_channels_and_labels_are_3d(tmp_path):
    src = np.stack([label_array(seed=s) for s in range(3)], axis=-1).astype(np.float32)
    path = make_nifti(tmp_path / "multi.nii.gz", src, AFFINES["PIR"])
    vol = _read(path)
    assert vol.n_channels == 3 and vol.shape == (*vol.geometry.display_shape, 3)
    for c in range(3):
        np.testing.assert_array_equal(vol.data[..., c], vol.geometry.to_display(src[..., c]))
    back = nib.load(write_labels(vol.data[..., 1], vol, tmp_path / "seg.nii.gz"))
    assert back.shape == SHAPE and back.header["dim"][0] == 3
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), src[..., 1])
    np.testing.assert_allclose(back.affine, AFFINES["PIR"], atol=1e-6)


def test_several_files_are_channels(tmp_path):
    a = make_nifti(tmp_path / "t1.nii.gz", label_array(seed=1), AFFINES["LPS"])
    b = make_nifti(tmp_path / "flair.nii", label_array(seed=2), AFFINES["LPS"] + 1e-5)
    vol = _read([a, b])
    assert vol.n_channels == 2 and vol.paths == (a, b)
    np.testing.assert_array_equal(vol.geometry.to_source(vol.data[..., 1]), label_array(seed=2))


def test_mismatched_channels_name_both_files(tmp_path):
    a = make_nifti(tmp_path / "t1.nii.gz", label_array(), AFFINES["LPS"])
    b = make_nifti(tmp_path / "t2.nii.gz", label_array(shape=(6, 7, 4)), AFFINES["LPS"])
    moved = AFFINES["LPS"].copy()
    moved[0, 3] += 0.01
    c = make_nifti(tmp_path / "flair.nii.gz", label_array(), moved)
    with pytest.raises(InputError, match=r"t1\.nii\.gz and t2\.nii\.gz: spatial shapes"):
        read_volume([a, b])
    with pytest.raises(InputError, match=r"t1\.nii\.gz and flair\.nii\.gz: affines differ"):
        read_volume([a, c])


def test_nan_voxels_are_reported_and_replaced(tmp_path):
    src = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) + 5
    src[1, 2, 3], src[0, 0, 0], src[2, 2, 2] = np.nan, np.inf, -np.inf
    path = make_nifti(tmp_path / "holes.nii.gz", src, AFFINES["RAS"])
    with pytest.warns(UserWarning, match=r"holes\.nii\.gz: 3 NaN/Inf"):
        vol = read_volume(path)
    assert vol.nonfinite == 3 and np.all(np.isfinite(vol.data))
    assert vol.geometry.to_source(vol.data)[1, 2, 3] == 6.0  # finite minimum


def _raw_header(path, dims, dtype=np.int16):
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(dims)
    with open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 64)
    return path


def _bad_files(tmp_path):
    noisy = label_array(shape=(20, 20, 20), n_labels=250)
    good = make_nifti(tmp_path / "good.nii.gz", noisy, AFFINES["RAS"]).read_bytes()
    (tmp_path / "notes.nii").write_text("this is not a NIfTI file at all " * 20)
    (tmp_path / "plain.nii.gz").write_bytes(b"\0" * 600)
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"\x01" * 2000))
    (tmp_path / "cut.nii.gz").write_bytes(good[: len(good) // 2])
    nib.save(nib.Nifti1Image(label_array(), np.eye(4)), tmp_path / "short.nii")
    raw = (tmp_path / "short.nii").read_bytes()
    (tmp_path / "short.nii").write_bytes(raw[:-50])
    bad_magic = bytearray(nib.Nifti1Image(label_array(), np.eye(4)).to_bytes())
    bad_magic[344:348] = b"xyz\0"
    (tmp_path / "magic.nii").write_bytes(bytes(bad_magic))
    nib.save(nib.Nifti1Image(np.zeros((4, 0, 3), np.uint8), np.eye(4)), tmp_path / "empty.nii")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2, 2), np.uint8), np.eye(4)), tmp_path / "five.nii")
    nib.save(nib.Nifti1Image(np.zeros((4,), np.uint8), np.eye(4)), tmp_path / "line.nii")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.complex64), np.eye(4)), tmp_path / "cplx.nii")
    rgb = np.zeros((2, 2, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii")
    _raw_header(tmp_path / "huge.nii", (2000, 2000, 2000))
    gz_huge = tmp_path / "gzhuge.nii.gz"
    gz_huge.write_bytes(gzip.compress((tmp_path / "huge.nii").read_bytes()))
    _raw_header(tmp_path / "lies.nii", (40, 40, 40))
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    return tmp_path


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("notes.nii", r"not a NIfTI file \(bad header size\)"),
        ("junk.nii.gz", r"not a NIfTI file \(bad header size\)"),
        ("magic.nii", r"not a NIfTI file \(bad magic\)"),
        ("plain.nii.gz", r"not a NIfTI file \(not gzip data\)"),
        ("cut.nii.gz", "truncated or corrupt"),
        ("short.nii", r"truncated \(512 bytes, header needs 562\)"),
        ("empty.nii", "zero-length dimension"),
        ("five.nii", "5-D image"),
        ("line.nii", "1-D image"),
        ("cplx.nii", "complex"),
        ("rgb.nii", "RGB/structured"),
        ("huge.nii", "voxels"),
        ("gzhuge.nii.gz", "voxels"),
        ("lies.nii", "truncated"),
        ("scan.png", "expected a .nii"),
        ("missing.nii.gz", "not found"),
    ],
)
def test_unreadable_inputs_raise_input_error_naming_the_file(tmp_path, name, problem):
    folder = _bad_files(tmp_path)
    with pytest.raises(InputError, match=problem) as info:
        read_volume(folder / name)
    assert name in str(info.value) and "\n" not in str(info.value)


def test_declared_size_larger_than_gzip_could_hold(tmp_path):
    path = tmp_path / "bomb.nii.gz"
    _raw_header(tmp_path / "raw.nii", (1000, 1000, 1000), dtype=np.uint8)
    path.write_bytes(gzip.compress((tmp_path / "raw.nii").read_bytes()))
    with pytest.raises(InputError, match=r"bomb\.nii\.gz: header declares"):
        read_volume(path)


@pytest.fixture
def vol(tmp_path):
    return _read(make_nifti(tmp_path / "src.nii.gz", label_array(), AFFINES["PIR"]))


def test_write_refusals(tmp_path, vol):
    ok = np.zeros(vol.geometry.display_shape, np.uint8)
    with pytest.raises(InputError, match=r"out\.nii\.gz: labels shape \(5, 7, 6\).*expected"):
        write_labels(np.zeros((5, 7, 6), np.uint8), vol, tmp_path / "out.nii.gz")
    with pytest.raises(InputError, match="negative label value -1"):
        write_labels(ok.astype(int) - 1, vol, tmp_path / "neg.nii.gz")
    with pytest.raises(InputError, match="whole numbers"):
        write_labels(ok + 0.5, vol, tmp_path / "frac.nii.gz")
    with pytest.raises(InputError, match="is a folder"):
        write_labels(ok, vol, tmp_path)
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    with pytest.raises(InputError, match=r"plain\.txt is not a folder"):
        write_labels(ok, vol, a_file / "labels.nii.gz")
    with pytest.raises(InputError, match="does not exist"):
        write_labels(ok, vol, tmp_path / "nope" / "labels.nii.gz")
    with pytest.raises(InputError, match=r"\.nii or \.nii\.gz"):
        write_labels(ok, vol, tmp_path / "labels.png")
    with pytest.raises(InputError, match="which image"):
        write_labels(ok, None, tmp_path / "orphan.nii.gz")  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "src.nii.gz"]


def test_existing_file_needs_overwrite_and_no_temp_files_remain(tmp_path, vol):
    ok = np.ones(vol.geometry.display_shape, bool)
    target = write_labels(ok, vol, tmp_path / "seg.nii")
    with pytest.raises(InputError, match=r"seg\.nii: exists; allow overwriting"):
        write_labels(ok, vol, target)
    write_labels(ok.astype(np.uint8) * 2, vol, target, overwrite=True)
    assert np.asanyarray(nib.load(target).dataobj).max() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii", "src.nii.gz"]


def test_write_image_float_map(tmp_path, vol):
    var = np.random.default_rng(0).random(vol.geometry.display_shape).astype(np.float32)
    back = nib.load(write_image(var, vol.geometry, tmp_path / "variance.nii.gz"))
    assert back.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), vol.geometry.to_source(var))


def test_geometry_metadata_round_trip_and_missing(vol):
    meta = vol.geometry.to_metadata()
    import json

    geom = VolumeGeometry.from_metadata(json.loads(json.dumps({"medsegdiff_geometry": meta})))
    assert geom.same_space(vol.geometry) and geom.header_bytes == vol.geometry.header_bytes
    assert (
        geom.ornt.tolist() == vol.geometry.ornt.tolist()
        and geom.translate == vol.geometry.translate
    )
    with pytest.raises(InputError, match="which image"):
        VolumeGeometry.from_metadata({"name": "labels"})


@pytest.mark.parametrize("case", ["PIR", "oblique"])
def test_simpleitk_sees_the_same_grid(tmp_path, case):
    sitk = pytest.importorskip("SimpleITK")
    path = make_nifti(tmp_path / f"{case}.nii.gz", label_array(), AFFINES[case])
    vol = _read(path)
    out = write_labels(vol.data, vol, tmp_path / "labels.nii.gz")
    src, lab = sitk.ReadImage(str(path)), sitk.ReadImage(str(out))
    assert lab.GetSize() == src.GetSize()
    np.testing.assert_allclose(lab.GetSpacing(), src.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(lab.GetOrigin(), src.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(lab.GetDirection(), src.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), sitk.GetArrayFromImage(src))


def test_big_endian_qform_only_source(tmp_path):
    src = label_array(dtype=np.int16)
    hdr = nib.Nifti1Header(endianness=">")
    hdr.set_data_dtype(">i2")
    img = nib.Nifti1Image(src, AFFINES["PIR"], header=hdr)
    img.header.set_qform(AFFINES["PIR"], code=1)
    img.header.set_sform(None, code=0)
    nib.save(img, tmp_path / "be.nii")
    vol = _read(tmp_path / "be.nii")
    back = nib.load(write_labels(vol.data, vol, tmp_path / "out.nii"))
    assert back.header.endianness == ">"
    assert (back.header["qform_code"], back.header["sform_code"]) == (1, 0)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), src)
    np.testing.assert_allclose(back.affine, AFFINES["PIR"], atol=1e-5)
