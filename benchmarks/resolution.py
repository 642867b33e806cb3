"""128 px vs native resolution: what the model size costs in Dice, and what it costs in time.

The ceiling: the true labels of the held-out sample slices taken to the model size and back
(one-hot, the same bilinear resize and argmax the Segmenter uses), scored against
themselves: no model can beat it at that size. The cost: FLOPs of the condition branch and
of one denoising step of the shipped architecture at each size (``--time`` also times a
whole slice at the model's recommended sampler on this machine).

    python benchmarks/resolution.py [--time]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_medsegdiff.checkpoints import recommended_sampler, resolve_model
from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.metrics import dice
from napari_medsegdiff.model import build_model
from napari_medsegdiff.nifti import read_labels, read_volume
from napari_medsegdiff.preprocessing import resize_probabilities, square_canvas
from napari_medsegdiff.sample import sample_paths
from napari_medsegdiff.segmenter import Segmenter

SIZES = (96, 128, 160, 192, 256)


def ceiling(labels: np.ndarray, size: int) -> tuple[tuple[int, int], float]:
    """(slice size on the model's canvas, mean GM/WM Dice of labels (n, h, w) resized to it
    and back)."""
    h, w = labels.shape[1:]
    canvas = square_canvas(h, w, size)
    model_hw = (canvas.height, canvas.width)
    onehot = np.eye(3, dtype=np.float32)[labels].transpose(0, 3, 1, 2)
    back = resize_probabilities(resize_probabilities(onehot, model_hw), (h, w)).argmax(1)
    return model_hw, float(np.mean([dice(back == c, labels == c) for c in (1, 2)]))


def flops(model: torch.nn.Module, cfg, hw: tuple[int, int]) -> tuple[float, float]:
    """GFLOP of (the condition branch, one denoising step) for one slice."""
    image = torch.zeros(1, cfg.input_channels, *hw)
    x = torch.zeros(1, cfg.mask_channels, *hw)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            cond = model.encode_condition(image)
        with FlopCounterMode(display=False) as fd:
            model.denoise(x, torch.tensor([500]), cond)
    return fc.get_total_flops() / 1e9, fd.get_total_flops() / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", action="store_true", help="also time one slice per size")
    args = parser.parse_args(argv)
    folder = resolve_model(None)
    meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    start, stop = meta["holdout_slices"]
    t1, tissue = sample_paths()
    labels = read_labels(tissue).data[start:stop]
    seg = Segmenter.load(folder, "cpu")
    cfg = seg.config
    sampler = SamplerConfig(**recommended_sampler(seg.info.meta))
    image = read_volume(t1).data
    print(f"held-out slices {start}:{stop}, in-plane {labels.shape[1:]} (native, ~1 mm)")
    print("model size | input px  | label ceiling Dice | condition GFLOP | step GFLOP | s/slice")
    for size in SIZES:
        hw, best = ceiling(labels, size)
        sized = dataclasses.replace(cfg, image_size=size)
        cond_gf, step_gf = flops(build_model(sized).eval(), sized, (size, size))
        seconds = ""
        if args.time:
            seg_at = Segmenter(build_model(sized).eval(), seg.info, torch.device("cpu"))
            seg_at.config = sized
            volume = image[start : start + 4]
            list(seg_at.segment_volume(volume[:1], sampler=sampler))  # warm-up
            t0 = time.perf_counter()
            list(seg_at.segment_volume(volume, sampler=sampler))
            seconds = f"{(time.perf_counter() - t0) / len(volume):.3f}"
        print(
            f"{size:10d} | {hw[0]:3d} x {hw[1]:3d} | {best:18.4f} | {cond_gf:15.3f} | "
            f"{step_gf:10.3f} | {seconds}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
