"""DICOM series: every voxel's position and value agree with SimpleITK's ImageSeriesReader;
several series, refusals and the CLI / napari entry points."""

from __future__ import annotations

import random

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from _dicom_factory import (
    AXIAL,
    CORONAL,
    HEAD_FIRST,
    OBLIQUE,
    SAGITTAL,
    series_image,
    sitk_lps_affine,
    sitk_series,
    write_series,
)

from napari_medsegdiff.dicom import find_series, is_dicom_input, read_dicom
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.inputs import read_scan
from napari_medsegdiff.nifti import write_labels

UID = "1.2.826.0.1.3680043.2.1125.7.1"  # write_series' default SeriesInstanceUID
CASES = {
    "axial": {"direction": AXIAL},
    "coronal": {"direction": CORONAL, "spacing": (0.9, 0.6, 1.5)},
    "sagittal": {"direction": SAGITTAL},
    "head_first": {"direction": HEAD_FIRST},
    "oblique": {"direction": OBLIQUE, "spacing": (0.75, 0.75, 3.0)},
}


def _display_voxels_lps(volume) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) display indices (z, y, x) and their LPS positions from our geometry."""
    shape = volume.data.shape[:3]
    idx = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, 3)
    aff = volume.geometry.display_affine
    ras = idx @ aff[:3, :3].T + aff[:3, 3]
    return idx, ras * np.array([-1.0, -1.0, 1.0])


def assert_matches_sitk(volume, ref: sitk.Image) -> None:
    """Every voxel sits where SimpleITK puts it (<= 0.01 mm) and has its value."""
    idx, lps = _display_voxels_lps(volume)
    aff = sitk_lps_affine(ref)
    cont = np.linalg.solve(aff[:3, :3], (lps - aff[:3, 3]).T).T  # sitk (i, j, k)
    nearest = np.rint(cont)
    back = nearest @ aff[:3, :3].T + aff[:3, 3]
    assert np.max(np.linalg.norm(back - lps, axis=1)) <= 0.01
    ijk = nearest.astype(int)
    size = np.array(ref.GetSize())
    assert np.all(ijk >= 0) and np.all(ijk < size)
    assert len({tuple(v) for v in ijk}) == len(ijk) == int(np.prod(size))  # a bijection
    ref_arr = sitk.GetArrayFromImage(ref)  # (k, j, i)
    ours = volume.data[tuple(idx.T)]
    np.testing.assert_array_equal(ours, ref_arr[ijk[:, 2], ijk[:, 1], ijk[:, 0]])


@pytest.mark.parametrize("case", sorted(CASES))
def test_series_agrees_with_image_series_reader(tmp_path, case):
    write_series(tmp_path / "s", series_image(**CASES[case], seed=1))
    volume = read_dicom(tmp_path / "s")
    assert volume.data.dtype == np.float32 and volume.data.ndim == 3
    assert volume.geometry.is_oblique == (case == "oblique")
    assert_matches_sitk(volume, sitk_series(tmp_path / "s"))


def test_file_order_and_instance_numbers_do_not_matter(tmp_path):
    img = series_image((9, 6, 7), direction=OBLIQUE, seed=2)
    names = [f"{random.Random(k).getrandbits(40):x}" for k in range(9)]  # no extension
    numbers = list(range(1, 10))
    random.Random(0).shuffle(names)
    random.Random(1).shuffle(numbers)
    write_series(tmp_path / "s", img, names=names, instance_order=numbers)
    assert_matches_sitk(read_dicom(tmp_path / "s"), sitk_series(tmp_path / "s"))


def test_ct_rescale_gives_hounsfield_units(tmp_path):
    img = series_image((4, 8, 8), seed=3, low=-512, high=750) * 2  # even: slope 2 is exact
    write_series(tmp_path / "ct", img, modality="CT", rescale=(2.0, -1024.0))
    raw = pydicom.dcmread(tmp_path / "ct" / "IM0000.dcm")
    assert float(raw.RescaleSlope) == 2.0 and float(raw.RescaleIntercept) == -1024.0
    volume = read_dicom(tmp_path / "ct")
    assert_matches_sitk(volume, sitk_series(tmp_path / "ct"))
    expected = sitk.GetArrayFromImage(img).astype(np.float32)  # (k, j, i), axial LPS
    np.testing.assert_array_equal(volume.data, expected)  # LPS axial: (k, j, i) = (S, P, L)
    assert raw.pixel_array.min() >= 0  # stored values are not HU: the rescale matters


def test_ct_window_is_applied_from_hu(tmp_path):
    from napari_medsegdiff.preprocessing import normalize_intensity

    img = series_image((2, 8, 8), seed=4, low=-1024, high=1500)
    write_series(tmp_path / "ct", img, modality="CT", rescale=(1.0, -1024.0))
    volume = read_dicom(tmp_path / "ct")
    norm = normalize_intensity(volume.data, method="ct", window=(40.0, 400.0))
    hu = volume.data
    assert np.all(norm[hu <= -160] == -1.0) and np.all(norm[hu >= 240] == 1.0)


def test_labels_written_for_a_series_overlay_it(tmp_path):
    write_series(tmp_path / "s", series_image(direction=OBLIQUE, seed=5))
    volume = read_dicom(tmp_path / "s")
    mask = (volume.data > 0).astype(np.uint8)
    out = write_labels(mask, volume, tmp_path / "mask.nii.gz")
    ref, written = sitk_series(tmp_path / "s"), sitk.ReadImage(str(out))
    np.testing.assert_allclose(sitk_lps_affine(written), sitk_lps_affine(ref), atol=1e-3)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(written), (sitk.GetArrayFromImage(ref) > 0).astype(np.uint8)
    )


def test_one_file_or_dicomdir_opens_the_series(tmp_path):
    files = write_series(tmp_path / "s", series_image(seed=6))
    write_series(
        tmp_path / "s", series_image(seed=7), uid="1.2.3.4.2", names=["b0", "b1", "b2", "b3", "b4"]
    )
    one = read_dicom(files[2])
    assert one.data.shape[0] == 5
    assert_matches_sitk(one, sitk_series(tmp_path / "s", UID))
    assert is_dicom_input(files[2]) and is_dicom_input(tmp_path / "s")
    # a DICOMDIR (PACS media layout: PT000000/ST000000/SE000000/IM000000, no extensions)
    from pydicom.fileset import FileSet

    media = FileSet()
    for f in files:
        media.add(pydicom.dcmread(f))
    media.write(tmp_path / "cd")
    assert is_dicom_input(tmp_path / "cd" / "DICOMDIR")
    assert_matches_sitk(read_dicom(tmp_path / "cd" / "DICOMDIR"), sitk_series(tmp_path / "s", UID))


def test_two_series_listed_unless_one_is_chosen(tmp_path):
    write_series(tmp_path / "s", series_image(seed=8), uid="1.2.3.1", description="T1 axial")
    write_series(
        tmp_path / "s",
        series_image((3, 6, 7), seed=9),
        uid="1.2.3.2",
        description="FLAIR",
        names=["f0", "f1", "f2"],
    )
    with pytest.raises(InputError) as info:
        read_scan(tmp_path / "s")
    message = str(info.value)
    assert "\n" not in message and "series UID" in message
    for part in ("1.2.3.1", "1.2.3.2", "T1 axial", "FLAIR", "5 slices", "3 slices", "MR"):
        assert part in message
    picked = read_scan(tmp_path / "s", series="1.2.3.2")
    assert picked.data.shape[0] == 3
    assert_matches_sitk(picked, sitk_series(tmp_path / "s", "1.2.3.2"))
    with pytest.raises(InputError, match=r"no series 9\.9.*1\.2\.3\.1"):
        read_scan(tmp_path / "s", series="9.9")
    assert [s.uid for s in find_series(tmp_path / "s")] == ["1.2.3.2", "1.2.3.1"]


def _edit(path, **values):
    ds = pydicom.dcmread(path)
    for key, value in values.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_uneven_spacing_is_refused(tmp_path):
    files = write_series(tmp_path / "s", series_image((6, 6, 7), seed=10))
    files[3].unlink()  # a missing slice
    with pytest.raises(
        InputError,
        match=r"uneven slice spacing \(5\.000 mm between IM0002\.dcm and IM0004\.dcm, 2\.500 mm",
    ):
        read_dicom(tmp_path / "s")


def test_mixed_orientation_is_refused(tmp_path):
    files = write_series(tmp_path / "s", series_image(seed=11))
    _edit(files[1], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.raises(
        InputError, match=r"mixed slice orientations \(IM0000\.dcm and IM0001\.dcm\)"
    ):
        read_dicom(tmp_path / "s")


def test_duplicate_positions_are_refused(tmp_path):
    files = write_series(tmp_path / "s", series_image(seed=12))
    _edit(files[1], ImagePositionPatient=pydicom.dcmread(files[0]).ImagePositionPatient)
    with pytest.raises(InputError, match="two slices at the same position"):
        read_dicom(tmp_path / "s")


def test_multi_frame_is_refused(tmp_path):
    files = write_series(tmp_path / "s", series_image(seed=13))
    _edit(files[0], NumberOfFrames=5)
    with pytest.raises(InputError, match=r"IM0000\.dcm: multi-frame DICOM"):
        read_dicom(tmp_path / "s")


def test_two_d_image_without_position_is_refused(tmp_path):
    files = write_series(tmp_path / "s", series_image((1, 6, 7), seed=14))
    ds = pydicom.dcmread(files[0])
    del ds.ImagePositionPatient
    ds.save_as(files[0])
    with pytest.raises(
        InputError, match=r"IM0000\.dcm: no usable ImagePositionPatient \(a 2-D image"
    ):
        read_dicom(tmp_path / "s")


def _structured_report(path) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = "1.2.3.9.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = "1.2.3.9"
    ds.Modality = "SR"
    ds.SeriesDescription = "report"
    ds.save_as(path, enforce_file_format=True)


def test_non_image_objects_are_refused_or_skipped(tmp_path):
    (tmp_path / "sr").mkdir()
    _structured_report(tmp_path / "sr" / "report.dcm")
    with pytest.raises(InputError, match=r"no image series, only non-image DICOM objects .*SR"):
        read_dicom(tmp_path / "sr")
    write_series(tmp_path / "sr", series_image(seed=15))
    assert read_dicom(tmp_path / "sr").data.shape[0] == 5  # the report is not a choice
    with pytest.raises(InputError, match="is not an image series"):
        read_dicom(tmp_path / "sr", series="1.2.3.9")


def test_nifti_cohort_folder_is_not_a_series(tmp_path):
    from _nifti_factory import AFFINES, label_array, make_nifti

    make_nifti(tmp_path / "a.nii.gz", label_array(), AFFINES["RAS"])
    write_series(tmp_path / "sub", series_image(seed=16))
    assert not is_dicom_input(tmp_path)
    assert is_dicom_input(tmp_path / "sub")
    with pytest.raises(InputError, match=r"series 1\.2: only for a DICOM input"):
        read_scan(tmp_path / "a.nii.gz", series="1.2")


def test_napari_reader_opens_a_folder(tmp_path):
    from napari_medsegdiff._reader import napari_get_reader
    from napari_medsegdiff.volume import VolumeGeometry

    write_series(tmp_path / "scan", series_image(direction=CORONAL, seed=17), modality="CT")
    reader = napari_get_reader(str(tmp_path / "scan"))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(tmp_path / "scan"))
    assert kind == "image" and kwargs["name"] == "scan"
    geom = VolumeGeometry.from_metadata(kwargs["metadata"])
    ref = sitk_series(tmp_path / "scan")
    np.testing.assert_allclose(
        np.diag([-1, -1, 1, 1]) @ geom.affine, sitk_lps_affine(ref), atol=1e-6
    )
    assert data.shape == geom.display_shape
    # two series: one layer each, named by description
    write_series(
        tmp_path / "scan",
        series_image(seed=18),
        uid="1.2.5",
        description="late",
        names=list("abcde"),
    )
    layers = reader(str(tmp_path / "scan"))
    assert sorted(k["name"] for _, k, _ in layers) == ["scan CT T1 test", "scan MR late"]
    # a localizer with mixed orientations next to them is skipped with a warning
    loc = write_series(
        tmp_path / "scan", series_image((3, 6, 7), seed=24), uid="1.2.6", names=list("xyz")
    )
    _edit(loc[1], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.warns(UserWarning, match=r"skipped: .*series 1\.2\.6: mixed slice orientations"):
        layers = reader(str(tmp_path / "scan"))
    assert len(layers) == 2
    assert napari_get_reader(str(tmp_path / "nothing_here")) is None


def test_segment_cli_writes_a_mask_aligned_with_the_series(tmp_path, capsys):
    from napari_medsegdiff.checkpoints import save_model
    from napari_medsegdiff.cli import main
    from napari_medsegdiff.config import preset
    from napari_medsegdiff.model import build_model

    cfg = preset("tiny")
    model = save_model(tmp_path / "tiny", build_model(cfg).state_dict(), cfg)
    write_series(tmp_path / "dcm", series_image((3, 12, 10), direction=OBLIQUE, seed=19))
    quick = ["--ensemble", "1", "--steps", "1", "--device", "cpu", "--model", str(model)]
    out = tmp_path / "m.nii.gz"
    assert main(["segment", str(tmp_path / "dcm"), "-o", str(out), *quick]) == 0
    ref, mask = sitk_series(tmp_path / "dcm"), sitk.ReadImage(str(out))
    assert mask.GetSize() == ref.GetSize()
    np.testing.assert_allclose(sitk_lps_affine(mask), sitk_lps_affine(ref), atol=1e-3)
    assert nib.load(out).get_data_dtype() == np.uint8
    # a second series: one line listing both, unless --series picks one
    write_series(
        tmp_path / "dcm", series_image((2, 12, 10), seed=20), uid="1.2.7", names=["x", "y"]
    )
    capsys.readouterr()
    assert main(["segment", str(tmp_path / "dcm"), "-o", str(tmp_path / "n.nii.gz"), *quick]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1.2.7" in err and "Traceback" not in err
    assert (
        main(
            [
                "segment",
                str(tmp_path / "dcm"),
                "--series",
                "1.2.7",
                "-o",
                str(tmp_path / "n.nii.gz"),
                *quick,
            ]
        )
        == 0
    )
    assert sitk.ReadImage(str(tmp_path / "n.nii.gz")).GetSize() == (10, 12, 2)


def test_finetune_reads_a_dicom_series(tmp_path, capsys):
    from napari_medsegdiff.checkpoints import save_model
    from napari_medsegdiff.cli import main
    from napari_medsegdiff.config import preset
    from napari_medsegdiff.model import build_model

    cfg = preset("tiny")
    model = save_model(tmp_path / "tiny", build_model(cfg).state_dict(), cfg)
    write_series(tmp_path / "dcm", series_image((3, 12, 10), direction=CORONAL, seed=21))
    volume = read_dicom(tmp_path / "dcm")
    labels = write_labels((volume.data > 500).astype(np.uint8), volume, tmp_path / "fix.nii.gz")
    args = ["finetune", "--image", str(tmp_path / "dcm"), "--labels", str(labels)]
    args += ["--slices", "0:2", "--steps", "1", "--batch-size", "2", "--device", "cpu"]
    args += ["--model", str(model), "--out", str(tmp_path / "store")]
    assert main(args) == 0, capsys.readouterr().err
    provenance = next((tmp_path / "store").rglob("provenance.json")).read_text(encoding="utf-8")
    assert str(tmp_path / "dcm") in provenance


def test_single_slice_series_is_one_slice(tmp_path):
    write_series(tmp_path / "s", series_image((1, 6, 7), direction=CORONAL, seed=22))
    volume = read_dicom(tmp_path / "s")
    assert volume.data.shape == (6, 1, 7)  # (S, P, L): one coronal slice
    assert_matches_sitk(volume, sitk_series(tmp_path / "s"))


def test_rle_compressed_slices_read_and_undecodable_ones_refused(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1, RLELossless

    files = write_series(tmp_path / "s", series_image(seed=23))
    ref = sitk_series(tmp_path / "s")  # before: GDCM here cannot read pydicom's RLE
    ds = pydicom.dcmread(files[0])
    ds.compress(RLELossless)  # decoded by pydicom + numpy alone
    ds.save_as(files[0])
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == RLELossless
    assert_matches_sitk(read_dicom(tmp_path / "s"), ref)
    ds = pydicom.dcmread(files[1])
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg \xff\xd9"])
    ds.save_as(files[1], enforce_file_format=True)
    with pytest.raises(InputError, match=r"IM0001\.dcm: cannot decode the pixel data \(JPEG"):
        read_dicom(tmp_path / "s")
