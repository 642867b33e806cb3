"""The npe2 manifest ships inside the package and every python_name imports; the wheel
contains the manifest, the sample data and the default model (when trained)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _manifest() -> dict:
    text = (resources.files("napari_medsegdiff") / "napari.yaml").read_text()
    return yaml.safe_load(text)


def test_every_python_name_imports():
    commands = _manifest()["contributions"]["commands"]
    assert len(commands) >= 5
    for command in commands:
        module, _, attr = command["python_name"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command["id"]


def test_npe2_finds_and_validates_the_manifest():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManifest.from_distribution("napari-medsegdiff")
    assert pm.name == "napari-medsegdiff"
    assert {w.command for w in pm.contributions.widgets} == {
        "napari-medsegdiff.segment_dock",
        "napari-medsegdiff.finetune_dock",
    }


def test_console_script_and_module_are_the_same_cli():
    out = subprocess.run(
        [sys.executable, "-m", "napari_medsegdiff", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    for sub in ("train", "segment", "finetune", "evaluate", "demo"):
        assert sub in out.stdout


@pytest.mark.slow
def test_wheel_contains_manifest_and_sample_data(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("napari_medsegdiff-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "napari_medsegdiff/napari.yaml" in names
    assert "napari_medsegdiff/sample_data/icbm152_t1.nii.gz" in names
    assert "napari_medsegdiff/sample_data/icbm152_tissue.nii.gz" in names
    assert "napari_medsegdiff/sample_data/README.md" in names
    if (ROOT / "napari_medsegdiff" / "models" / "default" / "model.safetensors").is_file():
        assert "napari_medsegdiff/models/default/model.safetensors" in names
        assert "napari_medsegdiff/models/default/config.json" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "napari.manifest" in text and "medsegdiff = napari_medsegdiff.cli:main" in text
