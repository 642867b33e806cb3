"""Bad-input matrix: every entry point turns a bad file/argument into one clear line.

Each row of ``ERRORS`` is (case, entry point, what the message must contain, what it must
name); the matrix is copied into RELIABILITY.md. ``ACCEPTED`` lists odd inputs that are
*not* errors (NaN voxels, 1x1 slices, labels > 255, ...) and what happens instead.
After every case no partial or temporary file may remain.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import subprocess
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_medsegdiff.checkpoints import (
    CONFIG,
    WEIGHTS,
    ModelStore,
    load_model,
    load_pt_weights,
    save_model,
)
from napari_medsegdiff.cli import main
from napari_medsegdiff.config import SamplerConfig, preset
from napari_medsegdiff.errors import MedSegDiffError
from napari_medsegdiff.model import build_model
from napari_medsegdiff.nifti import read_volume, write_labels

AFFINE = np.diag([0.9, 0.8, 2.5, 1.0])
RGB = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
QUICK = ["--ensemble", "1", "--steps", "1", "--device", "cpu", "--chunk-size", "2"]


# ------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Untrained tiny models: 1 channel, 4 channels."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, channels in (("tiny", 1), ("tiny4", 4)):
        cfg = preset("tiny", in_channels=channels)
        out[name] = save_model(root / name, build_model(cfg).state_dict(), cfg)
    return out


@pytest.fixture(scope="module")
def segmenter(models):
    from napari_medsegdiff.segmenter import Segmenter

    return Segmenter.load(models["tiny"], "cpu")


@dataclass
class Ctx:
    """What a row's setup gets: a scratch folder, models, a good scan, monkeypatch."""

    tmp: Path
    models: dict[str, Path]
    monkeypatch: pytest.MonkeyPatch
    segmenter: Any = None
    absent: list[Path] = field(default_factory=list)  # outputs that must not exist after
    checks: list[Callable[[], bool]] = field(default_factory=list)  # must hold after

    def scan(self, name: str = "scan.nii.gz", shape=(20, 16, 4), affine=AFFINE) -> Path:
        data = np.random.default_rng(0).normal(100, 20, shape).astype(np.float32)
        path = self.tmp / name
        nib.save(nib.Nifti1Image(data, affine), path)
        return path

    def volume(self):
        return read_volume(self.scan())

    def out(self, name: str = "out.nii.gz") -> Path:
        path = self.tmp / name
        self.absent.append(path)
        return path

    def model_copy(self, name: str = "tiny") -> Path:
        import shutil

        folder = self.tmp / f"model-{name}"
        shutil.copytree(self.models[name], folder)
        return folder


@pytest.fixture
def ctx(tmp_path, models, monkeypatch, segmenter) -> Ctx:
    return Ctx(tmp_path, models, monkeypatch, segmenter)


# ------------------------------------------------------------------ file builders
def raw_nifti(path: Path, dims, dtype=np.int16, data: bytes = b"") -> Path:
    """A NIfTI-1 header declaring ``dims`` followed by ``data`` (maybe far too little)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(dims)
    blob = hdr.binaryblock + b"\0" * 4 + data
    path.write_bytes(gzip.compress(blob, mtime=0) if path.name.endswith(".gz") else blob)
    return path


def saved(path: Path, data: np.ndarray, affine=AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def patched_header(path: Path, **fields: Any) -> Path:
    """A small valid .nii whose header fields are then overwritten in place."""
    img = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(4, 5, 3), AFFINE)
    raw = bytearray(img.to_bytes())
    hdr = np.ndarray((), dtype=img.header.structarr.dtype, buffer=raw)
    for key, value in fields.items():
        hdr[key] = value
    path.write_bytes(bytes(raw))
    return path


class Evil:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_pt(path: Path) -> Path:
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": Evil(str(path.parent / "PWNED"))}, fh)
    return path


def disk_full_nifti(monkeypatch) -> None:
    """Make nibabel write 1000 bytes of voxel data, then fail with ENOSPC."""
    import nibabel.arraywriters as aw

    def full(arr, fileobj, *args, **kwargs):
        fileobj.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(aw, "array_to_file", full)


def disk_full_safetensors(monkeypatch) -> None:
    import safetensors.torch as st

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(st, "save_file", full)


def unwritable_dir(tmp: Path) -> Path:
    """A folder we cannot create files in (permission bits, or /sys when run as root)."""
    folder = tmp / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            (candidate / ".probe").write_bytes(b"")
        except OSError:
            return candidate
        (candidate / ".probe").unlink()
    pytest.skip("no unwritable folder available")


def edit_config(folder: Path, **model_fields: Any) -> Path:
    meta = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    meta["model"].update(model_fields)
    (folder / CONFIG).write_text(json.dumps(meta))
    return folder


def wrong_shapes(folder: Path) -> Path:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / WEIGHTS))
    key = sorted(k for k in state if k.endswith("weight") and state[k].ndim == 4)[0]
    state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    save_file(state, str(folder / WEIGHTS))
    return folder


# ------------------------------------------------------------------------ the matrix
@dataclass(frozen=True)
class Row:
    case: str
    entry: str
    message: str  # fragment of the one-line message
    names: str  # the file or argument the message must name
    make: Callable[[Ctx], Any]


def _labels(ctx: Ctx, dtype=np.uint8, value=1, shape=None):
    vol = ctx.volume()
    arr = np.zeros(shape or vol.data.shape, dtype)
    arr[0, 0, 0] = value
    return vol, arr


def _writer_meta(ctx: Ctx) -> dict:
    return {"name": "m", "metadata": {"medsegdiff_geometry": ctx.volume().geometry.to_metadata()}}


def _disk_full_write(ctx: Ctx):
    vol, labels = _labels(ctx)
    disk_full_nifti(ctx.monkeypatch)
    return {"labels": labels, "like": vol, "path": ctx.out("full.nii.gz")}


def _disk_full_overwrite(ctx: Ctx):
    vol, labels = _labels(ctx)
    previous = write_labels(labels * 0, vol, ctx.tmp / "prev.nii")
    before = previous.read_bytes()
    disk_full_nifti(ctx.monkeypatch)
    ctx.checks.append(lambda: previous.read_bytes() == before)  # previous file intact
    return {"labels": labels, "like": vol, "path": previous, "overwrite": True}


def _disk_full_model(ctx: Ctx):
    cfg = preset("tiny")
    state = build_model(cfg).state_dict()
    disk_full_safetensors(ctx.monkeypatch)
    store = ModelStore(ctx.tmp / "store")
    target = store.new_version_path("tiny")
    ctx.absent.append(target)
    return {"folder": target, "state": state, "config": cfg}


def _evil_model_folder(ctx: Ctx) -> Path:
    folder = ctx.model_copy()
    (folder / WEIGHTS).unlink()
    evil_pt(folder / "model.pt")
    return folder


def _cli_segment(ctx: Ctx, *extra: str, images=None, out=None) -> list[str]:
    images = images or [str(ctx.scan())]
    out = out or str(ctx.out("seg.nii.gz"))
    return ["segment", *images, "-o", out, "--model", str(ctx.models["tiny"]), *QUICK, *extra]


def _two_dicom_series(ctx: Ctx) -> list[str]:
    from _dicom_factory import series_image, write_series

    write_series(ctx.tmp / "dicom", series_image(seed=1), uid="1.2.3.1")
    write_series(ctx.tmp / "dicom", series_image(seed=2), uid="1.2.3.2", names=list("abcde"))
    return _cli_segment(ctx, images=[str(ctx.tmp / "dicom")])


def _junk_dcm(ctx: Ctx) -> list[str]:
    path = ctx.tmp / "junk.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    return _cli_segment(ctx, images=[str(path)])


def _cli_disk_full(ctx: Ctx) -> list[str]:
    argv = _cli_segment(ctx, "--slices", "0")
    disk_full_nifti(ctx.monkeypatch)
    return argv


def _text(ctx: Ctx, name: str, text: str | bytes) -> Path:
    path = ctx.tmp / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _label_args(ctx: Ctx, dtype=np.uint8, value=1, shape=None, path=None) -> dict:
    vol, labels = _labels(ctx, dtype, value, shape)
    return {"labels": labels, "like": vol, "path": path or ctx.out("o.nii")}


def _finetune_negative(ctx: Ctx) -> list[str]:
    return [
        "finetune", "--model", str(ctx.models["tiny"]), "--image", str(ctx.scan()),
        "--labels", str(_neg_labels(ctx)), "--slices", "0", "--steps", "1",
        "--device", "cpu", "--out", str(ctx.tmp / "store"),
    ]  # fmt: skip


def _two_channels(ctx: Ctx, **second) -> list[Path]:
    return [ctx.scan("a.nii.gz"), ctx.scan("b.nii.gz", **second)]


# fmt: off
ERRORS: list[Row] = [
    # --- reading scans: entry point, message fragment, what it names
    Row("text file named .nii", "reader", "not a NIfTI file", "notes.nii",
        lambda c: _text(c, "notes.nii", "hello " * 100)),
    Row("wrong magic", "read_volume", "bad magic", "magic.nii",
        lambda c: patched_header(c.tmp / "magic.nii", magic=b"xy1\0")),
    Row("plain bytes named .nii.gz", "read_volume", "not gzip data", "plain.nii.gz",
        lambda c: _text(c, "plain.nii.gz", b"\0" * 600)),
    Row("wrong extension", "read_volume", "expected a .nii or .nii.gz", "scan.png",
        lambda c: _text(c, "scan.png", b"\x89PNG")),
    Row("missing file", "cli-subprocess", "file not found", "missing.nii.gz",
        lambda c: ["segment", str(c.tmp / "missing.nii.gz"), "-o", str(c.out())]),
    Row("truncated .nii.gz", "cli-subprocess", "truncated or corrupt", "cut.nii.gz",
        lambda c: _cli_segment(c, images=[str(_truncate(c.scan("cut.nii.gz")))])),
    Row("truncated .nii", "read_volume", "truncated", "short.nii",
        lambda c: _truncate(c.scan("short.nii"))),
    Row("header dims > data (.nii)", "read_volume", "header needs", "lies.nii",
        lambda c: raw_nifti(c.tmp / "lies.nii", (40, 40, 40), data=b"\0" * 512)),
    Row("header dims > data (.nii.gz)", "read_volume", "truncated or corrupt data",
        "lies.nii.gz",
        lambda c: raw_nifti(c.tmp / "lies.nii.gz", (40, 40, 40), data=os.urandom(4096))),
    Row("zero-length dimension", "read_volume", "zero-length dimension", "empty.nii",
        lambda c: saved(c.tmp / "empty.nii", np.zeros((4, 0, 3), np.uint8))),
    Row("negative dimension", "read_volume", "negative dimension", "negdim.nii",
        lambda c: patched_header(c.tmp / "negdim.nii", dim=[3, 4, -5, 3, 1, 1, 1, 1])),
    Row("5-D image", "cli", "5-D image", "five.nii",
        lambda c: _cli_segment(c, images=[str(saved(c.tmp / "five.nii", np.zeros((2,) * 5)))])),
    Row("1-D file", "read_volume", "1-D image", "line.nii",
        lambda c: saved(c.tmp / "line.nii", np.zeros((4,), np.uint8))),
    Row("DICOM folder with two series", "cli", "--series: ",
        "1.2.3.2", _two_dicom_series),
    Row("corrupt .dcm file", "cli", "not an image series", "junk.dcm", _junk_dcm),
    Row("all-NaN volume", "read_volume", "no finite voxel", "nan.nii.gz",
        lambda c: saved(c.tmp / "nan.nii.gz", np.full((3, 6, 5), np.nan, np.float32))),
    Row("all-Inf volume", "cli", "no finite voxel", "inf.nii.gz",
        lambda c: _cli_segment(
            c, images=[str(saved(c.tmp / "inf.nii.gz", np.full((3, 6, 5), np.inf, np.float32)))]
        )),
    Row("complex dtype", "read_volume", "complex data", "cplx.nii",
        lambda c: saved(c.tmp / "cplx.nii", np.zeros((2, 2, 2), np.complex64))),
    Row("RGB struct dtype", "reader", "RGB/structured", "rgb.nii",
        lambda c: saved(c.tmp / "rgb.nii", np.zeros((2, 2, 2), RGB))),
    Row("huge dims (.nii)", "read_volume", "more than 2147483648", "huge.nii",
        lambda c: raw_nifti(c.tmp / "huge.nii", (30000, 30000, 30000))),
    Row("huge dims (.nii.gz)", "read_volume", "header declares", "gzhuge.nii.gz",
        lambda c: raw_nifti(c.tmp / "gzhuge.nii.gz", (1000, 1000, 1000), np.uint8)),
    Row("vox_offset = inf", "read_volume", "corrupt NIfTI header", "inf.nii",
        lambda c: patched_header(c.tmp / "inf.nii", vox_offset=np.inf)),
    Row("unknown datatype code", "read_volume", "data code 1536 not supported", "f128.nii",
        lambda c: patched_header(c.tmp / "f128.nii", datatype=1536)),
    Row("affine axes 1e35 apart", "read_volume", "degenerate affine", "skew.nii",
        lambda c: patched_header(c.tmp / "skew.nii", sform_code=2, qform_code=0,
                                 srow_x=[1, 0, -6.6e35, 0])),
    Row("NaN affine", "read_volume", "finite 4x4", "nanaff.nii",
        lambda c: patched_header(c.tmp / "nanaff.nii", sform_code=2, srow_y=[np.nan] * 4)),
    Row("channels of different shape", "cli", "spatial shapes differ", "b.nii.gz",
        lambda c: _cli_segment(c, images=[str(p) for p in _two_channels(c, shape=(20, 16, 5))])),
    Row("channels of different affine", "read_volume", "affines differ", "b.nii.gz",
        lambda c: _two_channels(c, affine=np.diag([1, 1, 2, 1.0]))),
    # --- writing labels
    Row("labels of the wrong shape", "write_labels", "does not match the source scan", "o.nii",
        lambda c: _label_args(c, shape=(3, 3, 3))),
    Row("float (non-integer) labels layer", "writer", "whole numbers", "f.nii.gz",
        lambda c: (str(c.out("f.nii.gz")), _labels(c, np.float32, 0.5)[1], _writer_meta(c))),
    Row("negative labels", "write_labels", "negative label value -1", "neg.nii.gz",
        lambda c: _label_args(c, np.int16, -1, path=c.out("neg.nii.gz"))),
    Row("labels layer without geometry", "writer", "no source geometry", "'m'",
        lambda c: (str(c.out("g.nii.gz")), np.zeros((2, 2, 2), np.uint8), {"name": "m"})),
    Row("negative labels for fine-tuning", "cli", "negative label value", "neg.nii.gz",
        _finetune_negative),
    Row("unwritable output folder", "write_labels", "cannot write", "u.nii.gz",
        lambda c: _label_args(c, path=unwritable_dir(c.tmp) / "u.nii.gz")),
    Row("unwritable output folder", "cli", "cannot write in", "-o",
        lambda c: _cli_segment(c, out=str(unwritable_dir(c.tmp) / "u.nii.gz"))),
    Row("output folder missing", "write_labels", "does not exist", "x.nii.gz",
        lambda c: _label_args(c, path=c.tmp / "nowhere" / "x.nii.gz")),
    Row("output exists", "cli", "already exists; pass --overwrite", "seg.nii.gz",
        lambda c: _cli_segment(c, out=str(_touch(c.tmp / "seg.nii.gz")))),
    Row("output is a folder", "cli-subprocess", "is a folder", "-o",
        lambda c: _cli_segment(c, out=str(c.tmp))),
    Row("output is a folder", "write_labels", "is a folder", str,
        lambda c: _label_args(c, path=c.tmp)),
    Row("disk full mid-write", "write_labels", "No space left on device", "full.nii.gz",
        _disk_full_write),
    Row("disk full mid-overwrite", "write_labels", "No space left on device", "prev.nii",
        _disk_full_overwrite),
    Row("disk full mid-write", "cli", "No space left on device", "seg.nii.gz", _cli_disk_full),
    Row("disk full saving a model", "save_model", "No space left on device", "tiny-ft-",
        _disk_full_model),
    # --- models
    Row("model folder without config.json", "load_model", "config.json is missing", "model-",
        lambda c: _unlink(c.model_copy() / CONFIG)),
    Row("corrupt config.json", "cli", "corrupt JSON", "config.json",
        lambda c: _cli_model(c, _write(c.model_copy() / CONFIG, "{not json"))),
    Row("absurd config.json values", "load_model", "must be at most 2048", "config.json",
        lambda c: edit_config(c.model_copy(), base_channels=10**6)),
    Row("config.json too deep to build", "load_model", "must be at most 32", "config.json",
        lambda c: edit_config(c.model_copy(), num_res_blocks=10**6)),
    Row("weights of the wrong shape", "load_model", "has shape", "model-",
        lambda c: wrong_shapes(c.model_copy())),
    Row("corrupt safetensors", "load_model", "corrupt safetensors", WEIGHTS,
        lambda c: _write(c.model_copy() / WEIGHTS, "garbage").parent),
    Row("model for 4 input channels", "cli", "expects 4", "tiny4",
        lambda c: _cli_model(c, c.models["tiny4"])),
    Row("pickle .pt checkpoint", "cli-subprocess", "refusing to load", "model.pt",
        lambda c: _cli_model(c, _evil_model_folder(c))),
    Row("pickle .pt checkpoint", "load_pt_weights", "refusing to load", "evil.pt",
        lambda c: evil_pt(c.tmp / "evil.pt")),
    Row("--model is a file", "cli", "is a file", "--model",
        lambda c: _cli_model(c, evil_pt(c.tmp / "evil.pt"))),
    # --- run settings
    Row("ensemble 0", "cli", "must be >= 1", "--ensemble",
        lambda c: _cli_segment(c, "--ensemble", "0")),
    Row("steps 0", "cli-subprocess", "must be >= 1", "--steps",
        lambda c: _cli_segment(c, "--steps", "0")),
    Row("ensemble 0", "SamplerConfig", "between 1 and 32", "ensemble",
        lambda c: {"ensemble": 0}),
    Row("steps 0", "SamplerConfig", "between 1 and 1000", "steps", lambda c: {"steps": 0}),
    Row("unknown sampler", "cli", "unknown sampler 'euler'", "--sampler",
        lambda c: _cli_segment(c, "--sampler", "euler")),
    Row("unknown fusion", "SamplerConfig", "unknown fusion 'median'", "fusion",
        lambda c: {"fusion": "median"}),
    Row("2-D image to a volume scope", "segmenter", "needs 3 or 4 dimensions", "image",
        lambda c: lambda: list(c.segmenter.segment_volume(np.zeros((8, 8), np.float32)))),
    Row("--slices outside the volume", "cli", "outside", "--slices",
        lambda c: _cli_segment(c, "--slices", "2:99")),
    Row("bad --ct-window", "cli", "expected CENTER,WIDTH", "--ct-window",
        lambda c: _cli_segment(c, "--ct-window", "soft")),
]
# fmt: on


def _truncate(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _touch(path: Path) -> Path:
    path.write_bytes(b"old")
    return path


def _unlink(path: Path) -> Path:
    path.unlink()
    return path.parent


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _cli_model(ctx: Ctx, model: Path) -> list[str]:
    model = model.parent if model.name == CONFIG else model
    argv = _cli_segment(ctx)
    argv[argv.index("--model") + 1] = str(model)
    return argv


def _neg_labels(ctx: Ctx) -> Path:
    vol = ctx.volume()
    labels = np.zeros(vol.geometry.source_shape, np.int16)
    labels[0, 0, 0] = -1
    return saved(ctx.tmp / "neg.nii.gz", labels)


# ------------------------------------------------------------------------- runners
def _python_entry(entry: str, arg: Any, ctx: Ctx) -> None:
    from napari_medsegdiff._reader import napari_get_reader
    from napari_medsegdiff._writer import write_labels_layer

    if entry == "read_volume":
        read_volume(arg)
    elif entry == "reader":
        napari_get_reader(str(arg))(str(arg))
    elif entry == "write_labels":
        write_labels(**arg)
    elif entry == "writer":
        write_labels_layer(*arg)
    elif entry == "load_model":
        load_model(arg)
    elif entry == "load_pt_weights":
        load_pt_weights(arg)
    elif entry == "save_model":
        save_model(**arg)
    elif entry == "SamplerConfig":
        SamplerConfig(**arg)
    elif entry == "segmenter":
        arg()
    else:  # pragma: no cover
        raise AssertionError(entry)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    return int(code), capsys.readouterr().err


def run_cli_subprocess(argv: list[str], cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "napari_medsegdiff", *argv],
        cwd=cwd,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=180,
        env=env,
    )
    return proc.returncode, proc.stderr


def leftovers(folder: Path) -> list[str]:
    """Temporary or hidden files left behind by a failed write."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if ".tmp" in p.name or ".probe" in p.name or ".old-" in p.name
    )


SEEN: list[tuple[str, str, str]] = []


@pytest.fixture(scope="module", autouse=True)
def _dump_matrix():
    """With MEDSEGDIFF_MATRIX_OUT=path, write the messages seen as a Markdown table."""
    yield
    target = os.environ.get("MEDSEGDIFF_MATRIX_OUT")
    if target and SEEN:
        rows = [f"| {c} | {e} | `{m}` |" for c, e, m in SEEN]
        table = ["| case | entry point | message |", "|---|---|---|", *rows]
        Path(target).write_text("\n".join(table) + "\n")


@pytest.mark.parametrize(
    "row", ERRORS, ids=[f"{r.entry}:{r.case}".replace(" ", "_") for r in ERRORS]
)
def test_bad_input_gives_one_clear_error(row: Row, ctx: Ctx, capsys):
    arg = row.make(ctx)
    names = str(ctx.tmp) if row.names is str else row.names
    if row.entry.startswith("cli"):
        if row.entry == "cli":
            code, err = run_cli(arg, capsys)
        else:
            code, err = run_cli_subprocess(arg, ctx.tmp)
        assert code != 0
        assert "Traceback" not in err
        # a run that failed at the end (disk full) printed its progress bar first
        lines = [line for line in err.splitlines() if line.strip() and "/slice" not in line]
        lines = [line for line in lines if "slice/s]" not in line]
        assert len(lines) == 1, err
        assert lines[0].startswith("medsegdiff")
        message = lines[0]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(MedSegDiffError) as info:
                _python_entry(row.entry, arg, ctx)
        message = str(info.value)
        assert "\n" not in message
    assert row.message in message, message
    assert names in message, message
    SEEN.append((row.case, row.entry, message.replace(str(ctx.tmp), "<tmp>")))
    assert not list(ctx.tmp.rglob("PWNED"))  # nothing was unpickled
    for path in ctx.absent:
        assert not path.exists(), f"partial output {path} left behind"
    assert not leftovers(ctx.tmp)
    assert all(check() for check in ctx.checks)


def test_matrix_size():
    assert len(ERRORS) >= 25
    assert len({r.entry for r in ERRORS}) >= 8


def test_huge_declared_dims_allocate_nothing(tmp_path):
    """1000^3 voxels declared in a 100-byte file: refused from the header alone."""
    for name in ("huge.nii", "huge.nii.gz"):
        path = raw_nifti(tmp_path / name, (1000, 1000, 1000), np.float32)
        tracemalloc.start()
        with pytest.raises(MedSegDiffError):
            read_volume(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 20e6, f"{name}: {peak / 1e6:.0f} MB allocated before refusing"


# --------------------------------------------------------------- accepted oddities
def _nonfinite(ctx: Ctx, fill: float) -> tuple[Any, str]:
    data = np.full((3, 6, 5), fill, np.float32)
    data[1, 2, 3] = 0.0  # one finite voxel: an all-NaN volume is refused (ERRORS)
    path = saved(ctx.tmp / "holes.nii.gz", data)
    with pytest.warns(UserWarning, match=r"holes\.nii\.gz: 89 NaN/Inf voxel\(s\) replaced"):
        vol = read_volume(path)
    result = list(ctx.segmenter.segment_volume(vol.data, sampler=_fast()))
    assert np.isfinite(vol.data).all() and len(result) == vol.data.shape[0]
    return result, "warning, voxels replaced by the finite minimum (0), segmented"


def _fast() -> SamplerConfig:
    return SamplerConfig(steps=1, ensemble=1, chunk_size=2)


def _segment_shape(ctx: Ctx, shape) -> str:
    result = list(
        ctx.segmenter.segment_volume(np.random.default_rng(0).random(shape), sampler=_fast())
    )
    assert [r.mask.shape for r in result] == [shape[1:]] * shape[0]
    return f"segmented: resized to the model size and back to {shape[1:]}"


def _labels_above(ctx: Ctx, value: int, dtype) -> str:
    vol, labels = _labels(ctx, np.int64, value)
    out = write_labels(labels, vol, ctx.tmp / "big.nii.gz")
    img = nib.load(out)
    assert img.get_data_dtype() == np.dtype(dtype)
    assert int(np.asarray(img.dataobj).max()) == value
    return f"written as {np.dtype(dtype).name}"


def _reader_labels_above(ctx: Ctx) -> str:
    from napari_medsegdiff._reader import read_nifti_layers

    labels = np.zeros((4, 5, 3), np.uint16)
    labels[1, 1, 1] = 300
    ((data, _, kind),) = read_nifti_layers(str(saved(ctx.tmp / "seg.nii.gz", labels)))
    assert kind == "labels" and data.dtype == np.uint16 and data.max() == 300
    return "Labels layer, uint16"


def _reader_negative(ctx: Ctx) -> str:
    from napari_medsegdiff._reader import read_nifti_layers

    labels = np.zeros((4, 5, 3), np.int16)
    labels[1, 1, 1] = -1
    ((_, _, kind),) = read_nifti_layers(str(saved(ctx.tmp / "seg.nii.gz", labels)))
    assert kind == "image"
    return "opened as an Image layer (not Labels)"


def _constant(ctx: Ctx) -> str:
    result = list(ctx.segmenter.segment_volume(np.full((2, 8, 8), 7.0), sampler=_fast()))
    assert len(result) == 2 and all(r.skipped and not r.mask.any() for r in result)
    return "no contrast: background, not sampled"


def _two_d_image(ctx: Ctx) -> str:
    for shape in ((1, 1), (3, 2), (5, 4)):
        assert (
            ctx.segmenter.segment_image(
                np.random.default_rng(0).random(shape), sampler=_fast()
            ).mask.shape
            == shape
        )
    return "segment_image works for 1x1, 3x2 and 5x4"


ACCEPTED: list[tuple[str, str, Callable[[Ctx], Any]]] = [
    ("NaN voxels but one", "read_volume + Segmenter", lambda c: _nonfinite(c, np.nan)),
    ("Inf voxels but one", "read_volume + Segmenter", lambda c: _nonfinite(c, np.inf)),
    ("constant image", "Segmenter", _constant),
    ("1x1 slices", "Segmenter", lambda c: _segment_shape(c, (2, 1, 1))),
    ("3x2 slices", "Segmenter", lambda c: _segment_shape(c, (1, 3, 2))),
    ("tiny 2-D images", "Segmenter.segment_image", _two_d_image),
    ("label value 300", "write_labels", lambda c: _labels_above(c, 300, np.uint16)),
    ("label value 70000", "write_labels", lambda c: _labels_above(c, 70000, np.int32)),
    ("label value 300 in a seg file", "reader", _reader_labels_above),
    ("negative values in a seg file", "reader", _reader_negative),
]


@pytest.mark.parametrize(
    ("case", "entry", "check"), ACCEPTED, ids=[a[0].replace(" ", "_") for a in ACCEPTED]
)
def test_accepted_odd_input(case, entry, check, ctx: Ctx):
    check(ctx)
    assert not leftovers(ctx.tmp)


# ------------------------------------------------------------- untrusted checkpoints
def _torch_evil(path: Path) -> Path:
    """A zip-format torch checkpoint whose unpickling would create a file."""
    torch.save({"weight": Evil(str(path.parent / "PWNED"))}, path)
    return path


@pytest.mark.parametrize("make", [evil_pt, _torch_evil], ids=["pickle", "torch.save"])
def test_untrusted_checkpoints_never_execute(make, tmp_path, models, capsys):
    only_pt = tmp_path / "only-pt"
    only_pt.mkdir()
    make(only_pt / "model.pt")
    with pytest.raises(MedSegDiffError, match=r"config\.json is missing"):
        load_model(only_pt)  # a folder holding only the .pt
    with_config = tmp_path / "with-config"
    with_config.mkdir()
    (with_config / CONFIG).write_bytes((models["tiny"] / CONFIG).read_bytes())
    make(with_config / "model.pt")
    with pytest.raises(MedSegDiffError, match=r"model\.pt: refusing to load"):
        load_model(with_config)  # config.json + .pt: the .pt is read weights-only
    with pytest.raises(MedSegDiffError, match="refusing to load"):
        load_pt_weights(with_config / "model.pt")
    scan = saved(tmp_path / "scan.nii.gz", np.zeros((8, 8, 2), np.float32))
    for model in (only_pt, with_config, with_config / "model.pt"):
        code, err = run_cli(
            ["segment", str(scan), "-o", str(tmp_path / "o.nii.gz"), "--model", str(model), *QUICK],
            capsys,
        )
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.rglob("PWNED"))
    assert not (tmp_path / "o.nii.gz").exists()


def test_model_store_writes_only_safetensors_and_json(tmp_path, models):
    from napari_medsegdiff.finetune import finetune

    cfg = preset("tiny")
    save_model(tmp_path / "store" / "saved", build_model(cfg).state_dict(), cfg)
    image = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    labels = np.zeros((3, 32, 32), np.int64)
    labels[:, 8:20, 8:20] = 1
    result = finetune(
        models["tiny"],
        image,
        labels,
        slices=[0, 1],
        steps=2,
        batch_size=2,
        device="cpu",
        store=tmp_path / "store",
    )
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert result.path.parent == tmp_path / "store" and files
    assert {p.suffix for p in files} <= {".safetensors", ".json"}, files
    assert [v.name for v in ModelStore(tmp_path / "store").versions()].count(result.path.name) == 1
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".")]


def test_export_twice_gives_identical_bytes(tmp_path):
    """Same labels -> same file bytes (no gzip time stamp or temp name inside)."""
    vol = read_volume(saved(tmp_path / "scan.nii.gz", np.zeros((9, 8, 5), np.float32)))
    labels = np.zeros(vol.data.shape, np.uint8)
    labels[1:3, 2:5, 1:6] = 4
    for suffix in (".nii.gz", ".nii"):
        first = write_labels(labels, vol, tmp_path / f"a{suffix}").read_bytes()
        time.sleep(1.1)  # gzip stores seconds
        second = write_labels(labels, vol, tmp_path / f"b{suffix}").read_bytes()
        again = write_labels(labels, vol, tmp_path / f"b{suffix}", overwrite=True).read_bytes()
        assert first == second == again
