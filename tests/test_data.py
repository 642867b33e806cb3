"""Data layouts (NIfTI folders, ISIC, BraTS), slice sets and augmentations."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from skimage import io

from napari_medsegdiff.augment import AugmentConfig, augment_batch
from napari_medsegdiff.data import fit_to_square, load_layout, slices_from_volume, split_holdout
from napari_medsegdiff.errors import InputError


def _disc(h, w, r):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < r**2


def test_isic_layout(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        mask = _disc(40, 60, 10 + i)
        img = np.stack([mask * 200 + 20] * 3, -1).astype(np.uint8)
        io.imsave(tmp_path / "images" / f"ISIC_{i:07d}.jpg", img, check_contrast=False)
        io.imsave(
            tmp_path / "masks" / f"ISIC_{i:07d}_Segmentation.png",
            (mask * 255).astype(np.uint8),
            check_contrast=False,
        )
    data = load_layout(tmp_path, "isic", 32)
    assert data.images.shape == (3, 3, 32, 32) and data.labels.shape == (3, 32, 32)
    assert set(data.labels.unique().tolist()) == {0, 1}
    # Foreground sits where the bright disc was (aspect kept, padded).
    assert (
        data.images[0][:, data.labels[0] == 1].mean()
        > data.images[0][:, data.labels[0] == 0].mean()
    )


def test_brats_layout_whole_tumour_and_multiclass(tmp_path):
    for case in ("BraTS_001", "BraTS_002"):
        folder = tmp_path / case
        folder.mkdir()
        seg = np.zeros((24, 24, 4), np.uint8)
        seg[8:16, 8:16, 1:3] = 2
        seg[10:14, 10:14, 1:3] = 4
        seg[11:13, 11:13, 2] = 1
        for k, mod in enumerate(("t1", "t1ce", "t2", "flair")):
            vol = (np.random.default_rng(k).normal(size=seg.shape) + seg).astype(np.float32)
            nib.save(nib.Nifti1Image(vol, np.eye(4)), folder / f"{case}_{mod}.nii.gz")
        nib.save(nib.Nifti1Image(seg, np.eye(4)), folder / f"{case}_seg.nii.gz")
    whole = load_layout(tmp_path, "brats", 16)
    assert whole.images.shape[1] == 4 and set(whole.labels.unique().tolist()) == {0, 1}
    multi = load_layout(tmp_path, "brats", 16, classes=4)
    assert set(multi.labels.unique().tolist()) <= {0, 1, 2, 3} and multi.labels.max() == 3
    (tmp_path / "BraTS_002" / "BraTS_002_t2.nii.gz").unlink()
    with pytest.raises(InputError, match="t2"):
        load_layout(tmp_path, "brats", 16)


def test_nifti_layout_needs_partners(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    nib.save(
        nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)),
        tmp_path / "images" / "a.nii.gz",
    )
    with pytest.raises(InputError, match=r"a\.nii\.gz"):
        load_layout(tmp_path, "nifti", 8)
    with pytest.raises(InputError, match="layout: unknown layout"):
        load_layout(tmp_path, "coco", 8)


def test_foreground_aware_slices_and_holdout():
    labels = np.zeros((20, 16, 16), np.int64)
    labels[5:10, 4:8, 4:8] = 1
    image = np.random.default_rng(0).normal(size=labels.shape).astype(np.float32)
    data = slices_from_volume(image, labels, 16, empty_fraction=0.2)
    assert len(data) == 6  # 5 foreground slices + 1 empty one (20%)
    train, held = split_holdout(10, 0.2, contiguous=True)
    assert held == [8, 9] and train == list(range(8))
    assert split_holdout(2, 0.5) == ([0, 1], [])


def test_fit_to_square_keeps_aspect():
    labels = np.zeros((1, 20, 40), np.int64)
    labels[0, :, :20] = 1
    img, lab = fit_to_square(np.zeros((1, 1, 20, 40), np.float32), labels, 32)
    assert img.shape == (1, 1, 32, 32)
    assert lab[0, 0].sum() == 0 and lab[0, 16, :16].all() and not lab[0, 16, 16:].any()


def test_augmentations_keep_labels_valid_and_are_seeded():
    img = torch.rand(4, 1, 32, 32) * 2 - 1
    lab = (img[:, 0] > 0).long() * 2
    cfg = AugmentConfig(elastic=0.03, bias=0.3, scale=(0.7, 1.5), rotate_deg=15)
    a1, l1 = augment_batch(img, lab, torch.Generator().manual_seed(3), cfg)
    a2, l2 = augment_batch(img, lab, torch.Generator().manual_seed(3), cfg)
    assert torch.equal(a1, a2) and torch.equal(l1, l2)
    assert set(l1.unique().tolist()) <= {0, 2}
    assert not torch.equal(a1, img)
