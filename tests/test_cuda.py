"""The CUDA path (skipped without an NVIDIA GPU; `bash scripts/gpu_check.sh` runs these)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.metrics import dice
from napari_medsegdiff.nifti import read_volume
from napari_medsegdiff.sample import sample_paths
from napari_medsegdiff.segmenter import Segmenter

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)"),
]


def test_cuda_masks_match_the_cpu_masks():
    volume = read_volume(sample_paths()[0]).data
    sampler = SamplerConfig(steps=5, ensemble=3)
    masks = {}
    for device in ("cpu", "cuda"):
        seg = Segmenter.load(None, device)
        results = seg.segment_volume(volume, slices=list(range(70, 90, 4)), sampler=sampler)
        masks[device] = np.stack([r.mask for r in results])
    for label in (1, 2):
        assert dice(masks["cuda"] == label, masks["cpu"] == label) >= 0.99


def test_cuda_finetune_with_amp_learns(tmp_path):
    from napari_medsegdiff.finetune import finetune

    t1, tissue = sample_paths()
    image, labels = read_volume(t1).data, np.rint(read_volume(tissue).data).astype(np.int64)
    result = finetune(
        None, image, labels, slices=[60, 75, 90], steps=30, device="cuda", out=tmp_path / "m"
    )
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert result.provenance["device"].startswith("cuda")
