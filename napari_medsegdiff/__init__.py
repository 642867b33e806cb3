"""napari-medsegdiff: MedSegDiff-style diffusion segmentation for medical scans in napari."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# On a shared CPU, OpenMP worker threads that spin-wait for each other collapse when another
# process takes a core (a whole-volume segmentation went from 32 s to 154 s with one busy
# process on 2 cores; with passive waiting 48 s: BENCHMARKS.md, "Shared CPU"). Read by the
# OpenMP runtime when torch loads it, so it is set before anything imports torch; a value
# the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["__version__"]
