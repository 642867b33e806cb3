"""File-to-file engine jobs (what nnU-Net calls ``predict_from_files``).

* :func:`segment_files`: one scan on disk -> aligned NIfTI outputs (CLI ``segment``, the
  cohort runner, the headless demo, the benchmarks);
* :func:`finetune_files`: a scan + corrected labels on disk -> a new model (CLI
  ``finetune``).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from napari_medsegdiff.config import FinetuneSettings, SamplerConfig
from napari_medsegdiff.errors import InputError
from napari_medsegdiff.progress import ProgressCallback, tqdm_bar

if TYPE_CHECKING:
    from napari_medsegdiff.finetune import FinetuneResult


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
    seg.check_channels(volume.n_channels, ", ".join(Path(p).name for p in images))
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


def finetune_files(
    image_paths: Sequence[str],
    labels_path: str,
    *,
    proposal_path: str | None = None,
    slices: Sequence[int] | None = None,
    model: str | None = None,
    series: str | None = None,
    new_model: bool = False,
    out: str | None = None,
    store: str | Path | None = None,
    device: str = "auto",
    settings: FinetuneSettings | None = None,
    on_progress: ProgressCallback | None = None,
) -> FinetuneResult:
    """Files in, new model out: read the scan (NIfTI channels or a DICOM series) + corrected
    labels (+ proposal; either may be a work folder: :mod:`napari_medsegdiff.workfolder`),
    fine-tune with ``settings`` (steps, lr, batch size, replay, seed, ...)."""
    from napari_medsegdiff.finetune import finetune
    from napari_medsegdiff.inputs import read_scan
    from napari_medsegdiff.workfolder import is_work_folder, read_labels_input

    volume = read_scan(list(image_paths), series=series)
    labels_vol = read_labels_input(labels_path)
    if not volume.geometry.same_space(labels_vol.geometry):
        raise InputError(f"{labels_path}: not in the same space (shape/affine) as {image_paths[0]}")
    labels = labels_vol.data
    if labels.size and labels.min() < 0:
        raise InputError(
            f"{labels_path}: negative label value {labels.min()}; "
            "labels are 0 (background), 1, 2, ..."
        )
    if slices is not None:
        blank = [s for s in slices if 0 <= s < labels.shape[0] and not labels[s].any()]
        if blank:
            warnings.warn(
                f"{Path(labels_path).name}: slice(s) {', '.join(map(str, blank))} hold no "
                "label; fine-tuning teaches them as all background",
                stacklevel=2,
            )
    proposal = None
    if proposal_path:
        proposal = read_labels_input(proposal_path, "proposal").data
    elif slices is None and is_work_folder(labels_path):  # a work folder holds both
        proposal = read_labels_input(labels_path, "proposal").data
    if slices is None and proposal is None:
        raise InputError(
            "say which slices were corrected, or give the proposal they were corrected from",
            argument="slices",
        )
    return finetune(
        model,
        volume.data,
        labels,
        slices=slices,
        proposal=proposal,
        new_model=new_model,
        device=device,
        store=store,
        out=out,
        image_files=list(image_paths),
        settings=settings,
        on_progress=on_progress,
    )
