"""Fuzzing ``read_volume``: corrupted headers and bytes either read or raise MedSegDiffError.

Never another exception type, never a hang, never a crash. The budget is small here
(``FUZZ_EXAMPLES``, default 200 per test); RELIABILITY.md records a larger run, e.g.::

    FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz_nifti.py -p no:randomly
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from napari_medsegdiff.errors import MedSegDiffError
from napari_medsegdiff.nifti import read_volume

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=5000,  # ms per example: a hang or a huge allocation fails the test
    derandomize="FUZZ_EXAMPLES" not in os.environ,  # fixed examples in the normal suite
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def _seed_files() -> dict[str, bytes]:
    """Small valid files: NIfTI-1 int16, NIfTI-2 float32 4-D, NIfTI-1 scaled uint8."""
    rng = np.random.default_rng(0)
    affine = np.array([[-0.9, 0, 0, 10], [0, 0.8, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    one = nib.Nifti1Image(rng.integers(-100, 100, (6, 5, 4)).astype(np.int16), affine)
    two = nib.Nifti2Image(rng.random((4, 3, 3, 2)).astype(np.float32), affine)
    scaled = nib.Nifti1Image(rng.integers(0, 255, (5, 4, 3)).astype(np.uint8), affine)
    scaled.header.set_slope_inter(0.5, -3.0)
    return {"n1": one.to_bytes(), "n2": two.to_bytes(), "scaled": scaled.to_bytes()}


SEEDS = _seed_files()
# (offset, struct format) of NIfTI-1 header fields worth corrupting.
N1_FIELDS = {
    "sizeof_hdr": (0, "<i"),
    "dim": (40, "<8h"),
    "intent_code": (68, "<h"),
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    "pixdim": (76, "<8f"),
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "xyzt_units": (123, "<B"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    "quatern": (256, "<6f"),
    "srow": (280, "<12f"),
    "magic": (344, "<4s"),
}
NIFTI_DTYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304]
floats = st.one_of(
    st.sampled_from([0.0, -1.0, 1.0, 1e-38, 1e38, -1e38, np.nan, np.inf, -np.inf, 352.0, 3e9]),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)
shorts = st.one_of(
    st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 7, 8, 9, 32767, -32768]),
    st.integers(-32768, 32767),
)


@st.composite
def header_edit(draw) -> tuple[int, bytes]:
    """(offset, bytes) overwriting one NIfTI-1 header field with a hostile value."""
    name = draw(st.sampled_from(sorted(N1_FIELDS)))
    offset, fmt = N1_FIELDS[name]
    count = struct.calcsize(fmt) // struct.calcsize("<" + fmt[-1])
    if name == "datatype":
        values = [draw(st.one_of(st.sampled_from(NIFTI_DTYPES), shorts))]
    elif name == "magic":
        values = [draw(st.sampled_from([b"n+1\0", b"ni1\0", b"n+2\0", b"xxxx", b"\0\0\0\0"]))]
    elif name == "dim":
        ndim = draw(st.integers(-2, 9))
        sizes = draw(st.lists(shorts | st.integers(0, 10), min_size=7, max_size=7))
        values = [ndim, *sizes]
    elif fmt[-1] == "f":
        values = draw(st.lists(floats, min_size=count, max_size=count))
    elif fmt[-1] == "B":
        values = [draw(st.integers(0, 255))]
    elif fmt[-1] == "i":
        values = [draw(st.sampled_from([348, 540, 0, -1, 2**31 - 1, 1 << 24]))]
    else:
        values = draw(st.lists(shorts, min_size=count, max_size=count))
    return offset, struct.pack(fmt, *values)


@st.composite
def corrupted(draw) -> tuple[str, bytes]:
    """(suffix, file bytes): a seed file with header edits, byte flips and truncation."""
    seed = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[seed])
    if seed != "n2":  # field offsets are NIfTI-1's
        for offset, blob in draw(st.lists(header_edit(), max_size=3)):
            data[offset : offset + len(blob)] = blob
    header_only = draw(st.booleans())
    span = 540 if header_only else len(data)
    flips = draw(st.lists(st.tuples(st.integers(0, span - 1), st.integers(0, 255)), max_size=6))
    for offset, value in flips:
        if offset < len(data):
            data[offset] = value
    if draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    gz = draw(st.booleans())
    if gz:
        data = bytearray(gzip.compress(bytes(data), mtime=0))
        mode = draw(st.sampled_from(["ok", "flip", "cut", "append"]))
        if mode == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        elif mode == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif mode == "append":
            data += draw(st.binary(min_size=1, max_size=64))
    return (".nii.gz" if gz else ".nii"), bytes(data)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _kind(message: str) -> str:
    """The kind of refusal, for the statistics (file name and numbers dropped)."""
    text = re.sub(r"\d+(\.\d+)?", "N", message.split(": ", 1)[-1])
    return re.split(r"[;\[:]", text.replace(": ", " ", 1) if "(" in text else text)[0][:60]


def _check_one(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            vol = read_volume(path)
        except MedSegDiffError as exc:
            message = str(exc)
            assert path.name in message and "\n" not in message, message
            event("refused: " + _kind(message))
            return
    event("read")
    assert vol.data.ndim in (3, 4) and vol.data.dtype == np.float32
    assert np.isfinite(vol.data).all()


@FUZZ
@given(case=corrupted())
def test_corrupted_files_read_or_raise_medsegdiff_error(case, scratch):
    suffix, blob = case
    path = scratch / f"fuzz{suffix}"
    path.write_bytes(blob)
    _check_one(path)


@FUZZ
@given(
    dims=st.lists(st.integers(0, 9) | st.integers(0, 40_000), min_size=3, max_size=5),
    datatype=st.sampled_from(NIFTI_DTYPES),
    pixdim=st.lists(floats, min_size=3, max_size=3),
    vox_offset=st.sampled_from([352.0, 352.0, 368.0, 0.0, 4e9]) | floats,
    payload=st.integers(0, 4096),
    gz=st.booleans(),
)
def test_random_headers_over_random_payloads(
    dims, datatype, pixdim, vox_offset, payload, gz, scratch
):
    """A header with random dims/datatype/pixdim/vox_offset over too little data."""
    hdr = bytearray(SEEDS["n1"][:352])
    struct.pack_into(
        "<8h", hdr, 40, len(dims), *[min(d, 32767) for d in dims], *[1] * (7 - len(dims))
    )
    struct.pack_into("<h", hdr, 70, datatype)
    struct.pack_into("<3f", hdr, 80, *pixdim)
    struct.pack_into("<f", hdr, 108, vox_offset)
    blob = bytes(hdr) + bytes(range(256)) * (payload // 256)
    path = scratch / ("hdr.nii.gz" if gz else "hdr.nii")
    path.write_bytes(gzip.compress(blob, mtime=0) if gz else blob)
    _check_one(path)


PATHOLOGICAL = textwrap.dedent(
    """
    import gzip, struct, sys, warnings
    import nibabel as nib, numpy as np
    from napari_medsegdiff.errors import MedSegDiffError
    from napari_medsegdiff.nifti import read_volume
    warnings.simplefilter("ignore")
    folder = sys.argv[1]
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float64)
    hdr.set_data_shape((1200, 1200, 1200))  # 1.7e9 voxels, 13.8 GB declared
    raw = hdr.binaryblock + b"\\0" * 4
    cases = {
        # a gzip "bomb": 20 MB of zeros compress to ~20 kB, declared 13.8 GB
        "bomb.nii.gz": gzip.compress(raw + b"\\0" * 20_000_000, mtime=0),
        # concatenated gzip members followed by garbage
        "multi.nii.gz": gzip.compress(raw, mtime=0) * 50 + b"garbage",
        # uncompressed, declared 13.8 GB, 1 kB on disk
        "huge.nii": raw + b"\\0" * 1024,
    }
    for name, blob in cases.items():
        path = f"{folder}/{name}"
        open(path, "wb").write(blob)
        try:
            read_volume(path)
            print(name, "read")
        except MedSegDiffError as exc:
            print(name, "refused:", exc)
    """
)


def test_pathological_files_finish_in_bounded_time():
    """Gzip bombs and huge declared sizes are refused quickly, in a separate process."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", PATHOLOGICAL, folder],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=120,
        )
        seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and all("refused:" in line for line in lines), proc.stdout
    assert seconds < 60, f"took {seconds:.0f} s"
