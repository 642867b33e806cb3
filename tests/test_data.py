"""Data layouts (NIfTI folders, ISIC, BraTS), slice sets and augmentations."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch
from skimage import io

from napari_medsegdiff.augment import AugmentConfig, augment_batch, invert_contrast, random_window
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


def _head(n: int = 2, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic T1-like slices (n, 1, S, S): background -1, bright 'white matter' disc with
    a dark 'ventricle' in the middle and a mid-grey rim; and where the ventricle is."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).sqrt()
    img = torch.full((size, size), -1.0)
    img[r < 18] = 0.0  # grey rim
    img[r < 14] = 0.9  # white matter
    ventricle = r < 3
    img[ventricle] = -0.95  # CSF: nearly as dark as the background
    return img.expand(n, 1, size, size).clone(), ventricle


def test_contrast_inversion_is_t2_like_inside_the_head_only():
    img, ventricle = _head()
    g = torch.Generator().manual_seed(0)
    chosen = torch.tensor([True, False])
    out = invert_contrast(img, chosen, g)
    assert torch.equal(out[1], img[1])  # not chosen: untouched
    inv = out[0, 0]
    assert (inv[img[0, 0] == -1.0] == -1.0).all()  # background stays dark
    # ventricle (closed into the head) becomes the brightest, white matter the darkest
    assert inv[ventricle].min() > inv[(img[0, 0] == 0.0)].max() > inv[img[0, 0] == 0.9].max()
    assert inv[img[0, 0] == 0.9].min() > -1.0  # tissue stays above the background


def test_random_window_saturates_and_keeps_order():
    img = torch.linspace(-1, 1, 200).view(1, 1, 10, 20).expand(6, 1, 10, 20)
    out = random_window(img, torch.ones(6, dtype=torch.bool), torch.Generator().manual_seed(1))
    assert out.min() >= -1 and out.max() <= 1
    flat = out.flatten(1)
    assert (flat[:, 1:] >= flat[:, :-1]).all()  # a window never reorders intensities
    assert ((flat == -1).sum(1) > 1).any() or ((flat == 1).sum(1) > 1).any()  # saturates


def test_inversion_and_window_in_augment_batch_are_seeded_and_off_by_default():
    img, _ = _head(4)
    lab = (img[:, 0] > -0.5).long()
    plain = AugmentConfig(
        flip=False,
        rotate_deg=0,
        scale=(1, 1),
        translate=0,
        gamma=(1, 1),
        contrast=0,
        brightness=0,
        noise=0,
    )
    same, _ = augment_batch(img, lab, torch.Generator().manual_seed(0), plain)
    assert torch.equal(same, img)  # off by default
    cfg = dataclasses.replace(plain, invert=1.0, window=0.0)
    a1, _ = augment_batch(img, lab, torch.Generator().manual_seed(5), cfg)
    a2, _ = augment_batch(img, lab, torch.Generator().manual_seed(5), cfg)
    assert torch.equal(a1, a2)
    wm = img[:, 0] == 0.9
    assert (a1[:, 0][wm] < 0).all()  # every slice inverted: white matter now dark
