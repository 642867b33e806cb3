"""Peak memory of segmenting a large volume through the CLI's engine path.

Writes a synthetic scan slice by slice (default 512 x 512 x 300 int16, 150 MiB on disk)
without ever holding it in memory, then runs ``jobs.segment_files`` (what
``medsegdiff segment`` calls) on **every** slice with an untrained model and few steps,
writing the labels and the variance map. Peak resident memory (``ru_maxrss``) is compared
with the volume's size: the goal is peak <= volume + 2 GiB. A sampler thread records RSS
every 50 ms so the report says where the peak happened.

    python benchmarks/memory.py                       # 512 x 512 x 300 int16, tiny model
    python benchmarks/memory.py --shape 256,256,64    # quicker
    python benchmarks/memory.py --preset lite --steps 2 --ensemble 2

Not a test; the figures go into RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

GiB = 1024**3
MiB = 1024**2


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class RssSampler(threading.Thread):
    """Samples RSS every ``interval`` s, tagged with the current phase."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            value = rss_bytes()
            if value > self.peaks.get(self.phase, 0):
                self.peaks[self.phase] = value
            time.sleep(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def write_scan(path: Path, shape: tuple[int, int, int], dtype: np.dtype) -> int:
    """Write a (x, y, z) NIfTI slice by slice (one z-slice in memory); returns data bytes."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr.set_zooms((0.5, 0.5, 1.0))
    affine = np.diag([0.5, 0.5, 1.0, 1.0])
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_data_offset(352)
    nx, ny, nz = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    with open(path, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)
        rng = np.random.default_rng(0)
        for z in range(nz):
            r = np.hypot(xx - nx / 2, yy - ny / 2)
            blob = (r < nx / 4 * (1 + 0.3 * np.sin(z / 20))) * 400.0
            plane = (blob + rng.normal(100, 30, (ny, nx))).astype(dtype)
            fh.write(plane.tobytes())  # x varies fastest, as NIfTI stores it
    return nx * ny * nz * np.dtype(dtype).itemsize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="512,512,300", help="x,y,z voxels on disk")
    parser.add_argument("--dtype", default="int16")
    parser.add_argument("--preset", default="tiny", help="untrained model preset")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--ensemble", type=int, default=2)
    parser.add_argument("--slices", default=None, help="START:STOP (default: all)")
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    dtype = np.dtype(args.dtype)

    import torch

    torch.set_num_threads(args.threads)
    from napari_medsegdiff.checkpoints import save_model
    from napari_medsegdiff.config import SamplerConfig, preset
    from napari_medsegdiff.jobs import segment_files
    from napari_medsegdiff.model import build_model
    from napari_medsegdiff.segmenter import Segmenter

    scratch = Path(tempfile.mkdtemp(prefix="medsegdiff-memory-"))
    scan = scratch / "big.nii"
    start = time.perf_counter()
    data_bytes = write_scan(scan, shape, dtype)
    made = time.perf_counter() - start
    cfg = preset(args.preset)
    model = save_model(scratch / "model", build_model(cfg).state_dict(), cfg)
    seg = Segmenter.load(model, "cpu")
    fast = SamplerConfig(steps=1, ensemble=1, chunk_size=1)
    list(seg.segment_volume(np.zeros((1, 8, 8), np.float32), sampler=fast))  # warm-up imports

    baseline = rss_bytes()
    sampler = RssSampler()
    sampler.start()
    sampler.phase = "segment+write"
    start = time.perf_counter()
    info = segment_files(
        [str(scan)],
        str(scratch / "labels.nii.gz"),
        variance=str(scratch / "variance.nii.gz"),
        sampler=SamplerConfig(steps=args.steps, ensemble=args.ensemble, chunk_size=args.chunk_size),
        slices=args.slices,
        segmenter=seg,
        progress=False,
    )
    seconds = time.perf_counter() - start
    sampler.stop()
    peak = peak_rss_bytes()
    float_bytes = int(np.prod(shape)) * 4
    added = peak - baseline
    print(
        f"volume           {shape} {dtype} = {data_bytes / MiB:.0f} MiB on disk "
        f"({float_bytes / MiB:.0f} MiB as float32); written in {made:.1f} s"
    )
    print(
        f"model            {args.preset} (untrained), {args.ensemble} members x "
        f"{args.steps} steps, {info['slices']} slices, {seconds:.1f} s"
    )
    print(f"RSS before run   {baseline / MiB:.0f} MiB (Python + torch + model)")
    print(f"peak RSS         {peak / MiB:.0f} MiB (ru_maxrss, whole process)")
    print(
        f"peak - baseline  {added / MiB:.0f} MiB = {added / data_bytes:.1f} x the volume "
        f"on disk, {added / float_bytes:.1f} x as float32"
    )
    budget = data_bytes + 2 * GiB
    verdict = "OK" if peak <= budget else "OVER"
    print(f"goal             peak <= volume + 2 GiB = {budget / MiB:.0f} MiB: {verdict}")
    for phase, value in sampler.peaks.items():
        print(f"sampled peak     {phase}: {value / MiB:.0f} MiB")
    if not args.keep:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"scratch folder   {scratch}")


if __name__ == "__main__":
    main()
