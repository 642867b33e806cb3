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
    text = (resources.files("napari_medsegdiff") / "napari.yaml").read_text(encoding="utf-8")
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
        encoding="utf-8",
        errors="replace",
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


_DISTRIBUTION = {
    "skimage": "scikit-image",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "itk": "itk-morphologicalcontourinterpolation",  # the module lives in the itk namespace
}


def _third_party_imports(files) -> set[str]:
    import ast

    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    local = {"napari_medsegdiff", "__future__"}
    return {n for n in names - local if n not in sys.stdlib_module_names}


def _requirement_names(requirements) -> set[str]:
    import re

    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_dependencies_say_the_truth():
    """Core deps cover every import outside gui/; the gui extra covers gui/; no Qt binding
    is forced on users of the gui extra (napari's plugin convention), but `all` pulls one."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = _requirement_names(project["dependencies"])
    extras = {k: _requirement_names(v) for k, v in project["optional-dependencies"].items()}
    package = ROOT / "napari_medsegdiff"
    gui_files = set(package.glob("gui/*.py"))
    engine_files = set(package.rglob("*.py")) - gui_files
    engine = {_DISTRIBUTION.get(n, n).lower() for n in _third_party_imports(engine_files)}
    assert engine <= core, f"imported but not declared: {sorted(engine - core)}"
    gui = {_DISTRIBUTION.get(n, n).lower() for n in _third_party_imports(gui_files)}
    assert gui <= core | extras["gui"], sorted(gui - core - extras["gui"])
    bindings = {"pyqt5", "pyqt6", "pyside2", "pyside6"}
    assert not (core | extras["gui"]) & bindings
    assert {"napari", "magicgui", "qtpy"}.isdisjoint(core)
    (everything,) = project["optional-dependencies"]["all"]
    assert "gui" in everything and "pyqt6" in everything and extras["pyqt6"] & bindings
    assert project["license"] == "MIT"


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="the no-GPU path of the GPU check"
)
def test_gpu_check_says_there_is_no_gpu_and_claims_nothing(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "report")],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={"PATH": "/usr/bin:/bin", "MEDSEGDIFF_PY": sys.executable},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA GPU" in proc.stdout
    assert not (tmp_path / "report").exists()  # no report, no figures
