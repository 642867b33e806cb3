#!/usr/bin/env python
"""Derive the bundled sample scan and tissue labels from the ICBM152 2009a template.

Source: the MNI ICBM152 2009a nonlinear symmetric T1 template and its GM/WM probability
maps as shipped inside the nilearn wheel (``nilearn/datasets/data/
mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``; 197x233x189, 1 mm).

Outputs (in ``napari_medsegdiff/sample_data/`` by default):
  icbm152_t1.nii.gz      uint8 T1, cropped to the head's bounding box (+ margin), 1 mm
  icbm152_tissue.nii.gz  uint8 labels, same geometry: 0 background, 1 GM, 2 WM, where a
                         voxel is tissue if P(GM) + P(WM) > 0.5, labelled by the larger
                         probability (ties -> GM)

Usage:
  python scripts/make_sample_data.py --nilearn-wheel nilearn-0.14.1-py3-none-any.whl
  python scripts/make_sample_data.py --source-dir /path/to/nilearn/datasets/data
  python scripts/make_sample_data.py            # pip-downloads the pinned nilearn wheel

Output bytes are deterministic (gzip mtime 0) and their SHA-256 are printed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import nibabel as nib
import numpy as np

NILEARN_VERSION = "0.14.1"
MEMBER = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
DEFAULT_OUT = pathlib.Path(__file__).resolve().parents[1] / "napari_medsegdiff" / "sample_data"
MARGIN = 2  # voxels kept around the head's bounding box


def _from_bytes(raw: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(raw))


def load_sources(args: argparse.Namespace) -> dict[str, nib.Nifti1Image]:
    """Return the T1, GM and WM template images keyed 't1', 'gm', 'wm'."""
    keys = ("t1", "gm", "wm")
    if args.source_dir:
        folder = pathlib.Path(args.source_dir)
        return {
            k: _from_bytes((folder / pathlib.Path(MEMBER.format(k)).name).read_bytes())
            for k in keys
        }
    wheel = pathlib.Path(args.nilearn_wheel) if args.nilearn_wheel else None
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    f"nilearn=={NILEARN_VERSION}",
                    "-d",
                    tmp,
                ],
                check=True,
            )
            wheel = next(pathlib.Path(tmp).glob("nilearn-*.whl"))
        print(f"reading {wheel.name}")
        with zipfile.ZipFile(wheel) as zf:
            return {k: _from_bytes(zf.read(MEMBER.format(k))) for k in keys}


def derive(src: dict[str, nib.Nifti1Image]) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Crop the T1 to the head and derive the GM/WM label map in the same geometry."""
    t1 = np.asanyarray(src["t1"].dataobj)
    gm = np.asarray(src["gm"].dataobj, dtype=np.float32)
    wm = np.asarray(src["wm"].dataobj, dtype=np.float32)
    if t1.dtype != np.uint8:
        raise SystemExit(f"expected a uint8 T1 template, got {t1.dtype}")
    for key in ("gm", "wm"):
        if not np.allclose(src[key].affine, src["t1"].affine) or src[key].shape != t1.shape:
            raise SystemExit(f"{key} map is not in the T1 template's grid")
    # The uint8 maps store probability * 255 (scl_slope unset).
    gm, wm = gm / 255.0, wm / 255.0
    tissue = np.zeros(t1.shape, dtype=np.uint8)
    inside = (gm + wm) > 0.5
    tissue[inside & (gm >= wm)] = 1
    tissue[inside & (wm > gm)] = 2

    nz = np.argwhere(t1 > 0)
    lo = np.maximum(nz.min(axis=0) - MARGIN, 0)
    hi = np.minimum(nz.max(axis=0) + 1 + MARGIN, t1.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    affine = src["t1"].affine.copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]

    out = []
    for arr, descrip in (
        (t1[crop], "ICBM152 2009a sym T1, cropped"),
        (tissue[crop], "ICBM152 2009a tissue: 1 GM, 2 WM"),
    ):
        img = nib.Nifti1Image(np.ascontiguousarray(arr, dtype=np.uint8), affine)
        hdr = img.header
        hdr.set_qform(affine, code="mni")
        hdr.set_sform(affine, code="mni")
        hdr.set_xyzt_units("mm")
        hdr.set_slope_inter(1.0, 0.0)
        hdr["descrip"] = descrip.encode()
        out.append(img)
    return out[0], out[1]


def save(img: nib.Nifti1Image, path: pathlib.Path) -> str:
    """Write deterministic gzip bytes; return the SHA-256."""
    data = gzip.compress(img.to_bytes(), compresslevel=9, mtime=0)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--nilearn-wheel", help="path to a nilearn-*.whl")
    source.add_argument("--source-dir", help="folder holding the three template .nii.gz")
    parser.add_argument("--out-dir", default=str(DEFAULT_OUT), help="output folder")
    args = parser.parse_args(argv)
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t1, tissue = derive(load_sources(args))
    for img, name in ((t1, "icbm152_t1.nii.gz"), (tissue, "icbm152_tissue.nii.gz")):
        digest = save(img, out_dir / name)
        size = (out_dir / name).stat().st_size
        labels = np.unique(np.asanyarray(img.dataobj))
        print(
            f"{name}: shape {img.shape} zooms {tuple(float(z) for z in img.header.get_zooms())} "
            f"{size} bytes sha256 {digest}"
            + (f" labels {labels.tolist()}" if "tissue" in name else "")
        )
    print(f"affine:\n{t1.affine}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
