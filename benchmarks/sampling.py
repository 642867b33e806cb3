"""Sampling speed: our path vs the reference implementation's way, side by side.

(a) ours: the condition branch once per slice, members batched in measured chunks,
    ``torch.inference_mode``;
(b) reference way: members one after another at batch 1, the full network (condition
    included) recomputed in every forward.
Same weights, same scheduler (DPM-Solver++), same step counts, one process.

``--shipped`` measures the shipped default model at the product's defaults instead: the
whole sample volume (seconds, slices skipped for having no tissue), the same with a
competing CPU-bound process on the machine, and the speed-up over the reference way on
sample slices.

    python benchmarks/sampling.py                # full grid (several minutes on 2 cores)
    python benchmarks/sampling.py --quick        # ensemble 5 x 20 steps only
    python benchmarks/sampling.py --shipped      # the shipped model on the sample volume
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_medsegdiff.checkpoints import ModelInfo, recommended_sampler
from napari_medsegdiff.config import SamplerConfig, preset
from napari_medsegdiff.diffusion.sampling import denoise_loop, initial_noise, make_scheduler
from napari_medsegdiff.model import build_model
from napari_medsegdiff.nifti import read_volume
from napari_medsegdiff.sample import sample_paths
from napari_medsegdiff.segmenter import Segmenter, member_seed


def conv_throughput() -> float:
    """Achieved GFLOP/s of a plain 3x3 convolution (64 -> 64 ch, 128 px, batch 4)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(4, 64, 128, 128)
    flops = 2 * 64 * 64 * 9 * 128 * 128 * 4
    with torch.inference_mode():
        conv(x)
        start = time.perf_counter()
        for _ in range(5):
            conv(x)
    return flops * 5 / (time.perf_counter() - start) / 1e9


def forward_flops(model: torch.nn.Module, size: int, mask_channels: int) -> tuple[int, int]:
    """(FLOPs of one denoise with a cached condition, FLOPs of the condition branch)."""
    image = torch.zeros(1, 1, size, size)
    x = torch.zeros(1, mask_channels, size, size)
    t = torch.tensor([500])
    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            cond = model.encode_condition(image)
        cond_flops = fc.get_total_flops()
        with FlopCounterMode(display=False) as fd:
            model.denoise(x, t, cond)
    return fd.get_total_flops(), cond_flops


def reference_way(model, cfg, image: torch.Tensor, ensemble: int, steps: int) -> float:
    """Seconds for one slice: members sequential, condition recomputed every forward."""
    start = time.perf_counter()
    with torch.inference_mode():
        for m in range(ensemble):
            gens = [torch.Generator().manual_seed(member_seed(0, m))]
            x = initial_noise((cfg.mask_channels, *image.shape[-2:]), gens, image.device)
            denoise_loop(
                lambda x_t, t: model(x_t, t, image).prediction,
                x,
                make_scheduler("dpm++", cfg),
                steps,
                gens,
            )
    return time.perf_counter() - start


def our_way(seg: Segmenter, volume: np.ndarray, ensemble: int, steps: int) -> float:
    start = time.perf_counter()
    list(seg.segment_volume(volume, sampler=SamplerConfig(steps=steps, ensemble=ensemble)))
    return (time.perf_counter() - start) / volume.shape[0]


def whole_volume(seg: Segmenter, volume: np.ndarray, sampler: SamplerConfig) -> tuple[float, int]:
    """(seconds, slices skipped) to segment every slice of ``volume``, model loaded."""
    start = time.perf_counter()
    results = list(seg.segment_volume(volume, sampler=sampler))
    return time.perf_counter() - start, sum(r.skipped for r in results)


def shipped(device: str) -> None:
    """The shipped default model at its recommended sampler on the sample volume."""
    seg = Segmenter.load(None, device)
    sampler = SamplerConfig(**recommended_sampler(seg.info.meta))
    volume = read_volume(sample_paths()[0]).data
    print(
        f"shipped model {seg.name!r} (context {seg.config.context}), {seg.device}, "
        f"{torch.get_num_threads()} torch threads; sampler {sampler.sampler} "
        f"{sampler.steps} steps x ensemble {sampler.ensemble}; sample volume {volume.shape}"
    )
    whole_volume(seg, volume[70:72], sampler)  # warm-up: chunk measurement, allocator
    seconds, skipped = whole_volume(seg, volume, sampler)
    print(f"whole volume, quiet machine:           {seconds:6.1f} s ({skipped} slices skipped)")
    if seg.device.type == "cpu":
        burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(1.0)
            busy, _ = whole_volume(seg, volume, sampler)
        finally:
            burner.kill()
            burner.wait()
        print(
            f"whole volume, one competing process:  {busy:6.1f} s ({busy / seconds:.2f}x the "
            "quiet time)"
        )
    picks = list(range(60, 100, 5))
    images = seg.prepare(volume)
    canvas = seg.canvas(*images.shape[-2:])
    ours = time.perf_counter()
    list(seg.segment_slices(images, picks, sampler=sampler))
    ours = (time.perf_counter() - ours) / len(picks)
    ref = 0.0
    for z in picks:
        image = seg.model_input(images, [z], canvas)
        ref += reference_way(seg.model, seg.config, image, sampler.ensemble, sampler.steps)
    ref /= len(picks)
    print(
        f"per slice ({len(picks)} sample slices): ours {ours:.3f} s, reference way {ref:.3f} s, "
        f"speed-up {ref / ours:.2f}x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ensemble 5 x 20 steps only")
    parser.add_argument(
        "--sizes",
        default="128:128,128:256,256:256",
        help="MODEL_SIZE:SLICE_SIZE pairs (a slice is resized to the model size)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--shipped", action="store_true", help="the shipped model (docstring)")
    parser.add_argument("--device", default="cpu", help="with --shipped: cpu | cuda | auto")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shipped:
        shipped(args.device)
        return 0
    grid = [(5, 20)] if args.quick else [(e, s) for e in (1, 5, 10) for s in (10, 20, 50)]
    gflops_machine = conv_throughput()
    print(
        f"machine: {torch.get_num_threads()} torch threads, measured 3x3 conv throughput "
        f"{gflops_machine:.1f} GFLOP/s"
    )
    for pair in args.sizes.split(","):
        size, slice_size = (int(v) for v in pair.split(":"))
        cfg = preset("lite", image_size=size)
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        info = ModelInfo(path=None, config=cfg, meta={"name": "lite"})  # type: ignore[arg-type]
        seg = Segmenter(model, info, torch.device("cpu"))
        params = sum(p.numel() for p in model.parameters())
        denoise_flops, cond_flops = forward_flops(model, size, cfg.mask_channels)
        chunk = seg.auto_chunk_size(size, size)
        print(
            f"\nlite V{cfg.version[1]}, model size {size} px, slices of {slice_size} px: "
            f"{params / 1e6:.2f} M params, denoise {denoise_flops / 1e9:.2f} GFLOP, "
            f"condition {cond_flops / 1e9:.2f} GFLOP (once per slice), chunk {chunk} rows"
        )
        print("ensemble steps | ours s/slice slices/s | reference s/slice | speed-up | GFLOP/s")
        rng = np.random.default_rng(0)
        volume = rng.normal(size=(2, slice_size, slice_size)).astype(np.float32)
        image = torch.as_tensor(seg.prepare(rng.normal(size=(1, size, size)))[:1])
        our_way(seg, volume[:1], 1, 2)  # warm-up: imports, scheduler set-up, allocator
        reference_way(model, cfg, image, 1, 2)
        for ensemble, steps in grid:
            ours = our_way(seg, volume, ensemble, steps)
            ref = reference_way(model, cfg, image, ensemble, steps)
            flops = ensemble * steps * denoise_flops + cond_flops
            print(
                f"{ensemble:8d} {steps:5d} | {ours:8.3f} {1 / ours:8.3f} | {ref:10.3f} | "
                f"{ref / ours:6.2f}x | {flops / ours / 1e9:6.1f}"
            )
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
