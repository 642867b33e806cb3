"""Score predicted label volumes against ground truth (``medsegdiff evaluate``).

:func:`evaluate_paths` takes two NIfTI files, or two folders whose ``.nii`` / ``.nii.gz``
files are paired by name (the extension may differ: ``case1.nii`` pairs ``case1.nii.gz``),
and returns a JSON-friendly report::

    {"cases": [{"pred": str, "truth": str, "spacing_mm": [..],
                "labels": {"1": {"dice": .., "iou": .., "hd95_mm": ..}, ...},
                "mean": {"dice": .., "iou": .., "hd95_mm": ..}}, ...],
     "labels": {"1": {...mean over cases...}, ...},
     "mean": {...mean over the cases' means...}}

Per case the scored labels are the nonzero labels present in either volume (or ``labels``).
Spacing (mm) comes from the truth header's zooms. ``inf`` / ``nan`` values (a label missed
entirely, nothing to score) are written as ``None`` (JSON ``null``) and means skip them;
see :mod:`napari_medsegdiff.metrics` for the conventions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from napari_medsegdiff.errors import InputError
from napari_medsegdiff.metrics import METRIC_KEYS, finite_mean, json_number, summarize
from napari_medsegdiff.nifti import read_volume, whole_labels
from napari_medsegdiff.paths import is_nifti_path, list_nifti_files, nifti_stem


def _nifti_files(folder: Path) -> dict[str, Path]:
    """``{case name: path}`` for the NIfTI files directly inside ``folder``."""
    found: dict[str, Path] = {}
    for path in list_nifti_files(folder):
        name = nifti_stem(path)
        if name in found:
            raise InputError(
                f"{folder}: both {found[name].name} and {path.name} name case {name!r}"
            )
        found[name] = path
    if not found:
        raise InputError(f"{folder}: no .nii or .nii.gz files found")
    return found


def _load_labels(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Integer label array in the file's own axis order and its voxel size in mm."""
    try:
        volume = read_volume(path, dtype=None)
    except InputError as exc:
        raise InputError(f"{path}: cannot read as NIfTI ({exc})") from exc
    if volume.data.ndim != 3:
        raise InputError(f"{path}: expected a 3-D label volume, got shape {volume.data.shape}")
    geometry = volume.geometry
    data = geometry.to_source(volume.data)  # the file's (i, j, k) order, as written
    labels = whole_labels(data, str(path))
    zooms = np.sqrt((np.asarray(geometry.affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    spacing = tuple(float(z) for z in zooms)
    if not all(s > 0 for s in spacing):
        spacing = (1.0,) * labels.ndim
    return labels, spacing


def _jsonify(metrics: dict[str, float]) -> dict[str, float | None]:
    return {key: json_number(metrics[key]) for key in METRIC_KEYS}


def _load_display_labels(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Labels in the displayed (napari) axis order, where ``--slices`` counts, and spacing."""
    from napari_medsegdiff.nifti import read_labels

    volume = read_labels(path)
    if volume.data.ndim != 3:
        raise InputError(f"{path}: expected a 3-D label volume, got shape {volume.data.shape}")
    return volume.data, tuple(volume.spacing)


def evaluate_case(
    pred: Path,
    truth: Path,
    labels: Iterable[int] | None = None,
    slices: str | None = None,
) -> dict[str, Any]:
    """Report for one pair of NIfTI label files (see the module docstring).

    ``slices`` (``START:STOP`` or ``a,b,c`` along the displayed axis 0) limits the score to
    those slices, e.g. the ones a partial segmentation covered.
    """
    load = _load_labels if slices is None else _load_display_labels
    pred_labels, _ = load(pred)
    truth_labels, spacing = load(truth)
    if pred_labels.shape != truth_labels.shape:
        raise InputError(
            f"{pred} and {truth}: shapes differ, {pred_labels.shape} vs {truth_labels.shape}"
        )
    report: dict[str, Any] = {}
    if slices is not None:
        from napari_medsegdiff.segmenter import parse_slices

        idx = parse_slices(slices, pred_labels.shape[0])
        pred_labels, truth_labels = pred_labels[idx], truth_labels[idx]
        report["slices"] = idx
    summary = summarize(pred_labels, truth_labels, spacing, labels)
    return {
        "pred": str(pred),
        "truth": str(truth),
        "spacing_mm": list(spacing),
        **report,
        "labels": {str(k): _jsonify(v) for k, v in summary["labels"].items()},
        "mean": _jsonify(summary["mean"]),
    }


def _mean_over(rows: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Per-metric mean over rows, skipping ``None`` (null) entries."""
    return {
        key: json_number(finite_mean(r[key] for r in rows if r[key] is not None))
        for key in METRIC_KEYS
    }


def _pairs(pred: Path, truth: Path) -> list[tuple[Path, Path]]:
    for path, what in ((pred, "pred"), (truth, "truth")):
        if not path.exists():
            raise InputError(f"{path}: {what} path does not exist")
    if pred.is_dir() != truth.is_dir():
        raise InputError(f"{pred} and {truth}: give two NIfTI files or two folders")
    if not pred.is_dir():
        for path in (pred, truth):
            if not is_nifti_path(path):
                raise InputError(f"{path}: not a .nii or .nii.gz file")
        return [(pred, truth)]
    preds, truths = _nifti_files(pred), _nifti_files(truth)
    missing_truth = sorted(set(preds) - set(truths))
    missing_pred = sorted(set(truths) - set(preds))
    if missing_truth or missing_pred:
        parts = []
        if missing_truth:
            parts.append(f"no ground truth in {truth} for: {', '.join(missing_truth)}")
        if missing_pred:
            parts.append(f"no prediction in {pred} for: {', '.join(missing_pred)}")
        raise InputError("; ".join(parts))
    return [(preds[name], truths[name]) for name in sorted(preds)]


def evaluate_paths(
    pred: str | Path,
    truth: str | Path,
    labels: Iterable[int] | None = None,
    slices: str | None = None,
) -> dict[str, Any]:
    """Evaluate a prediction file/folder against a ground-truth file/folder.

    Raises :class:`InputError` naming the files when a path is missing, unreadable, the
    shapes differ, or (folders) a case has no partner. Returns the report described in
    the module docstring.
    """
    chosen = None if labels is None else [int(v) for v in labels]
    pairs = _pairs(Path(pred), Path(truth))
    cases = [evaluate_case(p, t, chosen, slices) for p, t in pairs]
    label_names = sorted({k for case in cases for k in case["labels"]}, key=int)
    per_label = {
        name: _mean_over([c["labels"][name] for c in cases if name in c["labels"]])
        for name in label_names
    }
    mean = _mean_over([c["mean"] for c in cases])
    return {"cases": cases, "labels": per_label, "mean": mean}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """Plain-text table of a report: one row per case and label, then the means."""
    header = f"{'case':<28} {'label':>5} {'dice':>8} {'iou':>8} {'hd95_mm':>10}"
    lines = [header, "-" * len(header)]

    def row(case: str, label: str, m: dict[str, float | None]) -> str:
        return (
            f"{case[:28]:<28} {label:>5} {_fmt(m['dice']):>8} {_fmt(m['iou']):>8} "
            f"{_fmt(m['hd95_mm'], 2):>10}"
        )

    for case in report["cases"]:
        name = nifti_stem(case["pred"])
        if not case["labels"]:
            lines.append(f"{name[:28]:<28} {'-':>5}  (no foreground in either volume)")
        for label, m in case["labels"].items():
            lines.append(row(name, label, m))
    lines.append("-" * len(header))
    for label, m in report.get("labels", {}).items():
        lines.append(row("mean", label, m))
    lines.append(row("mean", "all", report["mean"]))
    scope = ""
    first = report["cases"][0] if report["cases"] else {}
    if "slices" in first:
        scope = f" on {len(first['slices'])} slice(s) {_span(first['slices'])}"
    lines.append(
        f"{len(report['cases'])} case(s){scope}; '-' = undefined (e.g. a label missed entirely)"
    )
    return "\n".join(lines)


def _span(indices: list[int]) -> str:
    """``[3, 4, 5]`` -> ``3:6``; otherwise the list, shortened."""
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}:{indices[-1] + 1}"
    shown = ",".join(str(i) for i in indices[:8])
    return shown + ("…" if len(indices) > 8 else "")


def write_json(path: str, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically (``--json`` reports)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})", argument="json") from None
