"""File-to-file engine jobs: segment one scan on disk into aligned NIfTI outputs.

Shared by the CLI (``segment``), the cohort runner, the headless demo and the benchmarks.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from napari_medsegdiff.config import SamplerConfig
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.progress import tqdm_bar


def check_new(path: str | None, overwrite: bool, argument: str) -> Path | None:
    """``path`` as an output NIfTI that can be written (or None): refuses folders, existing
    files without ``overwrite``, missing or unwritable folders and other extensions."""
    if path is None:
        return None
    target = Path(path)
    if target.is_dir():
        raise InputError(
            f"{target}: is a folder; give a file name ending in .nii.gz", argument=argument
        )
    if target.exists() and not overwrite:
        raise InputError(
            f"{target}: already exists; allow overwriting to replace it", argument=argument
        )
    if not target.parent.is_dir():
        raise InputError(f"{target}: folder {target.parent} does not exist", argument=argument)
    try:  # a real probe (root ignores permission bits): fail before a long run, not after
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.probe-"):
            pass
    except OSError as exc:
        why = exc.strerror or exc
        raise InputError(
            f"{target}: cannot write in {target.parent} ({why})", argument=argument
        ) from None
    if not target.name.endswith((".nii", ".nii.gz")):
        raise InputError(f"{target}: must end with .nii or .nii.gz", argument=argument)
    return target


def segment_files(
    images: list[str],
    output: str,
    *,
    variance: str | None = None,
    probability: str | None = None,
    model: str | None = None,
    sampler: SamplerConfig,
    slices: str | None = None,
    device: str = "auto",
    window: tuple[float, float] | None = None,
    overwrite: bool = False,
    segmenter=None,
    progress: bool = True,
    series: str | None = None,
) -> dict:
    """Segment one scan (several NIfTI files = channels, or one DICOM series) and write
    aligned NIfTI outputs."""
    from napari_medsegdiff.inputs import read_scan
    from napari_medsegdiff.nifti import write_image, write_labels
    from napari_medsegdiff.segmenter import Segmenter, assemble, parse_slices

    out = check_new(output, overwrite, "output")
    var_path = check_new(variance, overwrite, "variance")
    prob_path = check_new(probability, overwrite, "probability")
    volume = read_scan(images, series=series)
    seg = segmenter or Segmenter.load(model, device)
    indices = parse_slices(slices, volume.data.shape[0])
    bar = None  # made at the first report: an input error stays one line on stderr
    start = time.perf_counter()

    def on_progress(p) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm_bar(len(indices), Path(images[0]).name, "slice") if progress else None
        if bar is not None and p.step is None:
            bar.n = p.done
            bar.refresh()

    skipped: list[int] = []  # slices without tissue: background, not sampled

    def counted(results):
        for r in results:
            if r.skipped:
                skipped.append(r.index)
            yield r

    results = counted(
        seg.segment_volume(
            volume.data, slices=indices, sampler=sampler, window=window, on_progress=on_progress
        )
    )
    try:
        mask, var, prob = assemble(
            results,
            volume.data.shape[:3],
            variance=var_path is not None,
            probability=prob_path is not None,
        )
    finally:  # an error message then starts on its own line
        if bar is not None:
            bar.close()
    # Keep only what gets written (peak memory): the geometry, not the scan's voxels.
    geometry = volume.geometry
    del results, volume
    written = [write_labels(mask, geometry, out, overwrite=overwrite)]
    if var_path is not None:
        written.append(write_image(var, geometry, var_path, overwrite=overwrite))
    if prob_path is not None:
        written.append(write_image(prob, geometry, prob_path, overwrite=overwrite))
    return {
        "outputs": [str(p) for p in written],
        "slices": len(indices),
        "skipped": len(skipped),
        "seconds": time.perf_counter() - start,
        "model": seg.name,
    }
