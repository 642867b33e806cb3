"""napari-medsegdiff: MedSegDiff-style diffusion segmentation for medical scans in napari."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
