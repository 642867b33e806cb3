"""The shipped default model: loads from the installed package, segments held-out sample
slices well, its model card carries the benchmark's figures, and the headless demo writes
files aligned with the sample scan."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medsegdiff.checkpoints import default_model_path, list_models
from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.metrics import dice
from napari_medsegdiff.nifti import read_volume
from napari_medsegdiff.sample import sample_paths
from napari_medsegdiff.segmenter import Segmenter

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = default_model_path()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DEFAULT / "model.safetensors").is_file(),
        reason="default model not trained yet (scripts/train_default_model.py)",
    ),
]


def test_default_model_is_inside_the_package_and_listed_first():
    assert DEFAULT.is_relative_to(Path(sys.modules["napari_medsegdiff"].__file__).parent)
    entries = list_models()
    assert entries[0].is_default and entries[0].path == DEFAULT
    size_mb = (DEFAULT / "model.safetensors").stat().st_size / 1e6
    assert size_mb < 25
    meta = json.loads((DEFAULT / "config.json").read_text(encoding="utf-8"))
    assert meta["model"]["preset"] == "lite" and meta["model"]["mask_channels"] == 3


def test_default_model_segments_heldout_slices():
    meta = json.loads((DEFAULT / "config.json").read_text(encoding="utf-8"))
    start, stop = meta["holdout_slices"]
    picks = [start + 3, (start + stop) // 2, stop - 4]
    t1, tissue = sample_paths()
    image = read_volume(t1).data
    labels = np.rint(read_volume(tissue).data).astype(np.int64)
    seg = Segmenter.load(None, "cpu")
    results = list(
        seg.segment_volume(image, slices=picks, sampler=SamplerConfig(steps=20, ensemble=3))
    )
    scores = [np.mean([dice(r.mask == k, labels[r.index] == k) for k in (1, 2)]) for r in results]
    assert np.mean(scores) >= 0.85, scores


def test_model_card_reports_the_benchmark_lines():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality import LINE_PATTERN, class_line

    fake = {"labels": {"1": {"dice": 0.9, "hd95_mm": 1.0}, "2": {"dice": 0.8, "hd95_mm": None}}}
    assert LINE_PATTERN.match(class_line("medsegdiff", fake))
    card = (DEFAULT / "MODEL_CARD.md").read_text(encoding="utf-8")
    found = [m for ln in card.splitlines() if (m := LINE_PATTERN.match(ln.strip()))]
    names = {m["name"] for m in found}
    assert {"medsegdiff", "multi-Otsu baseline"} <= names, card
    model = next(m for m in found if m["name"] == "medsegdiff")
    assert 0.0 <= float(model["mean"]) <= 1.0


def test_headless_demo_writes_aligned_files(tmp_path):
    from napari_medsegdiff.demo import run_headless_demo

    summary = run_headless_demo(tmp_path, slices="78:80", ensemble=2, steps=5, device="cpu")
    assert "Dice" in summary
    source = nib.load(sample_paths()[0])
    for name in ("icbm152_t1_mask.nii.gz", "icbm152_t1_variance.nii.gz"):
        out = nib.load(tmp_path / name)
        assert out.shape == source.shape
        np.testing.assert_allclose(out.affine, source.affine)
        assert out.header["sform_code"] == source.header["sform_code"]
