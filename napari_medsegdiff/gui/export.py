"""The export dialog: choose a NIfTI name, confirm before replacing files."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog, QMessageBox, QWidget

from napari_medsegdiff.nifti import is_nifti_path, nifti_stem


def variance_path_for(path: str | Path) -> Path:
    """``mask.nii.gz`` -> ``mask_variance.nii.gz`` beside it."""
    return Path(path).with_name(f"{nifti_stem(path)}_variance.nii.gz")


def ask_export_target(
    parent: QWidget, default: str, with_variance: bool
) -> tuple[str, str | None, bool] | None:
    """Ask for (mask path, variance path or None, overwrite); None if the user backs out."""
    path, _ = QFileDialog.getSaveFileName(
        parent,
        "Export mask",
        default,
        "NIfTI (*.nii.gz *.nii)",
        options=QFileDialog.Option.DontConfirmOverwrite,
    )
    if not path:
        return None
    if not is_nifti_path(path):
        path += ".nii.gz"
    var_path = str(variance_path_for(path)) if with_variance else None
    existing = [p for p in (path, var_path) if p and Path(p).exists()]
    if existing:
        answer = QMessageBox.question(
            parent, "Overwrite?", "Replace the existing file(s)?\n" + "\n".join(existing)
        )
        if answer != QMessageBox.StandardButton.Yes:
            return None
    return path, var_path, bool(existing)
