"""Slice datasets for training and fine-tuning.

Every source ends as a :class:`SliceSet`: images (N, C, S, S) normalised to [-1, 1] and
labels (N, S, S) int64 at the model size S (longer side scaled to S, aspect kept, padded).
Layouts: NIfTI folders (``images/`` + ``labels/``), ISIC (image files + masks), BraTS
(per-case folders with t1/t1ce/t2/flair/seg), and in-memory volumes (corrections).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_medsegdiff.errors import InputError
from napari_medsegdiff.paths import NIFTI_SUFFIXES, list_nifti_files, strip_suffix
from napari_medsegdiff.preprocessing import (
    normalize_intensity,
    resize_slices,
    square_canvas,
    with_context,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")


@dataclass
class SliceSet(torch.utils.data.Dataset):
    """Model-sized training slices: images (N, C, S, S) float32, labels (N, S, S) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    source: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def subset(self, idx: Sequence[int]) -> SliceSet:
        index = torch.as_tensor(list(idx), dtype=torch.long)
        return SliceSet(self.images[index], self.labels[index], [self.source[i] for i in idx])

    @staticmethod
    def concat(sets: Sequence[SliceSet]) -> SliceSet:
        sets = [s for s in sets if len(s)]
        if not sets:
            raise InputError("no training slices found")
        return SliceSet(
            torch.cat([s.images for s in sets]),
            torch.cat([s.labels for s in sets]),
            [n for s in sets for n in s.source],
        )


def name_stem(path: Path) -> str:
    """File name without its NIfTI or image extension."""
    return strip_suffix(path.name, (*NIFTI_SUFFIXES, *IMAGE_SUFFIXES)) or path.stem


def fit_to_square(
    images: np.ndarray, labels: np.ndarray, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize (N, C, H, W) / (N, H, W) keeping aspect (longer side = size), pad to size x size."""
    n, _, h, w = images.shape
    canvas = square_canvas(h, w, size)
    hw = (canvas.height, canvas.width)
    img = torch.as_tensor(resize_slices(images.astype(np.float32), hw))
    onehot = np.zeros((n, int(labels.max()) + 1, h, w), dtype=np.float32)
    for k in range(onehot.shape[1]):
        onehot[:, k] = labels == k
    lab = torch.as_tensor(resize_slices(onehot, hw)).argmax(1)
    return canvas.place(img), canvas.place(lab[:, None], 0)[:, 0]


def image_and_labels(
    image: np.ndarray, labels: np.ndarray, name: str = "volume"
) -> tuple[np.ndarray, np.ndarray]:
    """image (z, y, x[, c]) as float32 (z, y, x, c) and labels (z, y, x) of the same shape."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[..., None]
    lab = np.asarray(labels)
    if img.shape[:3] != lab.shape:
        raise InputError(f"{name}: labels shape {lab.shape} does not match image {img.shape[:3]}")
    return img, lab


def slices_from_volume(
    image: np.ndarray,
    labels: np.ndarray,
    size: int,
    indices: Sequence[int] | None = None,
    *,
    normalized: bool = False,
    empty_fraction: float = 0.2,
    name: str = "volume",
    seed: int = 0,
    context: int = 0,
) -> SliceSet:
    """Axial slices (axis 0) of image (z, y, x[, c]) and labels (z, y, x) as a SliceSet.

    Without explicit ``indices`` the set is foreground-aware: slices without labels are
    kept only up to ``empty_fraction`` of the foreground slice count. ``context`` k > 0
    stacks each slice's k neighbours on each side as channels (C * (2k + 1), 2.5-D).
    """
    img, lab = image_and_labels(image, labels, name)
    if lab.min() < 0:
        raise InputError(f"{name}: labels contain negative values")
    if not normalized:
        img = normalize_intensity(img)
    if indices is None:
        fg = [i for i in range(lab.shape[0]) if lab[i].any()]
        bg = [i for i in range(lab.shape[0]) if not lab[i].any()]
        rng = np.random.default_rng(seed)
        keep = rng.permutation(bg)[: round(empty_fraction * len(fg))].tolist()
        indices = sorted(fg + keep)
    indices = list(indices)
    if not indices:
        return SliceSet(
            torch.zeros(0, img.shape[-1] * (2 * context + 1), size, size),
            torch.zeros(0, size, size, dtype=torch.long),
            [],
        )
    chosen = with_context(np.moveaxis(img, -1, 1), indices, context)
    images_t, labels_t = fit_to_square(chosen, lab[indices].astype(np.int64), size)
    return SliceSet(images_t, labels_t, [f"{name}[{i}]" for i in indices])


def _find_partner(
    folder: Path, stem: str, suffixes: Sequence[str], extra: Sequence[str] = ()
) -> Path | None:
    for tail in ("", *extra):
        for suffix in suffixes:
            candidate = folder / f"{stem}{tail}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def load_nifti_folder(root: Path, size: int, context: int = 0) -> SliceSet:
    """``root/images/*.nii.gz`` with ``root/labels/<same name>``."""
    from napari_medsegdiff.nifti import read_labels, read_volume

    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise InputError(
            f"{root}: expected images/ and labels/ folders (layout nifti)", argument="data"
        )
    sets = []
    files = list_nifti_files(img_dir)
    if not files:
        raise InputError(f"{root}: no .nii/.nii.gz files in images/", argument="data")
    for path in files:
        partner = _find_partner(lab_dir, name_stem(path), NIFTI_SUFFIXES)
        if partner is None:
            raise InputError(f"{path}: no label file with the same name in {lab_dir}")
        vol, lab = read_volume(path), read_labels(partner)
        sets.append(
            slices_from_volume(
                vol.data,
                lab.data,
                size,
                name=path.name,
                context=context,
            )
        )
    return SliceSet.concat(sets)


def load_isic_folder(root: Path, size: int, context: int = 0) -> SliceSet:
    """ISIC-style 2-D images with binary masks (``images/`` + ``masks/``, or ISIC names).

    A 2-D image is its own neighbourhood: a 2.5-D model (``context`` k) sees it 2k + 1 times.
    """
    from skimage import io

    img_dir = next((d for d in (root / "images", root / "training", root) if d.is_dir()), root)
    mask_dirs = [
        d
        for d in (root / "masks", root / "groundtruth", root / "GroundTruth", img_dir)
        if d.is_dir()
    ]
    files = sorted(
        p
        for p in img_dir.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES
        and "_segmentation" not in p.stem.lower()
        and "_mask" not in p.stem.lower()
    )
    images, labels, names = [], [], []
    for path in files:
        partner = None
        for d in mask_dirs:
            partner = _find_partner(
                d, path.stem, (".png", ".jpg", ".tif"), ("_Segmentation", "_segmentation", "_mask")
            )
            if partner is not None and partner != path:
                break
            partner = None
        if partner is None:
            continue
        try:
            img = io.imread(path).astype(np.float32)
            mask = io.imread(partner)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read image ({exc})") from None
        if img.ndim == 2:
            img = img[..., None]
        img = img[..., :3]
        mask = mask[..., 0] if mask.ndim == 3 else mask
        norm = normalize_intensity(img[None])[0]
        im_t, lab_t = fit_to_square(
            with_context(np.moveaxis(norm, -1, 0)[None], [0], context),
            (mask > 0).astype(np.int64)[None],
            size,
        )
        images.append(im_t)
        labels.append(lab_t)
        names.append(path.name)
    if not images:
        raise InputError(f"{root}: no image/mask pairs found (layout isic)", argument="data")
    channels = {t.shape[1] for t in images}
    if len(channels) > 1:
        raise InputError(f"{root}: images mix channel counts {sorted(channels)}", argument="data")
    return SliceSet(torch.cat(images), torch.cat(labels), names)


def load_brats_folder(
    root: Path, size: int, multiclass: bool = False, context: int = 0
) -> SliceSet:
    """BraTS cases: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``; 4 channels."""
    from napari_medsegdiff.nifti import read_labels, read_volume

    cases = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    sets = []
    for case in cases:
        paths = []
        for mod in (*BRATS_MODALITIES, "seg"):
            found = sorted(
                p
                for p in case.iterdir()
                if p.name.lower().endswith(tuple(f"_{mod}{s}" for s in NIFTI_SUFFIXES))
            )
            if not found:
                raise InputError(f"{case}: missing the {mod} file (layout brats)")
            paths.append(found[0])
        vol = read_volume(paths[:4])
        seg = read_labels(paths[4]).data
        if multiclass:
            seg = np.select([seg == 1, seg == 2, seg == 4, seg == 3], [1, 2, 3, 3], 0)
        else:
            seg = (seg > 0).astype(np.int64)
        sets.append(slices_from_volume(vol.data, seg, size, name=case.name, context=context))
    if not sets:
        raise InputError(f"{root}: no case folders found (layout brats)", argument="data")
    return SliceSet.concat(sets)


def load_layout(
    root: str | Path, layout: str, size: int, classes: int = 2, context: int = 0
) -> SliceSet:
    """Dispatch on ``--layout nifti|isic|brats``; ``context``: 2.5-D neighbours per side."""
    path = Path(root)
    if not path.is_dir():
        raise InputError(f"{path}: folder not found", argument="data")
    if layout == "nifti":
        return load_nifti_folder(path, size, context)
    if layout == "isic":
        return load_isic_folder(path, size, context)
    if layout == "brats":
        return load_brats_folder(path, size, multiclass=classes > 2, context=context)
    raise InputError(
        f"layout: unknown layout {layout!r}; choose nifti, isic or brats", argument="layout"
    )


def split_holdout(
    n: int, fraction: float, seed: int = 0, contiguous: bool = False
) -> tuple[list[int], list[int]]:
    """(train, held-out) index lists; held-out empty when fewer than 3 items."""
    if n < 3 or fraction <= 0:
        return list(range(n)), []
    k = max(1, round(n * fraction))
    if contiguous:
        held = list(range(n - k, n))
    else:
        held = sorted(np.random.default_rng(seed).permutation(n)[:k].tolist())
    train = [i for i in range(n) if i not in set(held)]
    return train, held


def replay_slices(
    size: int, channels: int, classes: int, count: int = 16, seed: int = 0, context: int = 0
) -> SliceSet:
    """Slices of the shipped sample scan (the default model's training data) for replay."""
    from napari_medsegdiff.nifti import read_labels, read_volume
    from napari_medsegdiff.sample import sample_paths

    if channels != 1:
        raise InputError(
            f"replay: the sample data has 1 channel but the model expects {channels}",
            argument="replay",
        )
    t1, tissue = sample_paths()
    image, labels = read_volume(t1), read_labels(tissue).data
    if classes == 2:
        labels = (labels > 0).astype(np.int64)
    fg = [i for i in range(labels.shape[0]) if labels[i].any()]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.permutation(fg)[:count].tolist())
    return slices_from_volume(image.data, labels, size, pick, name="sample", context=context)
