"""Synthetic tasks for learning tests: bright ellipses in noise (binary) or two nested
ellipses (3 classes). All draws from a seeded numpy generator."""

from __future__ import annotations

import numpy as np


def ellipse_task(
    n: int, size: tuple[int, int] = (32, 32), seed: int = 0, classes: int = 2, noise: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, H, W) float32 and labels (n, H, W) int64."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = np.zeros((n, h, w), np.float32)
    labels = np.zeros((n, h, w), np.int64)
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
        ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        labels[i][inside] = 1
        img = np.where(inside, 0.8, 0.2)
        if classes == 3:
            core = ((yy - cy) / (0.5 * ry)) ** 2 + ((xx - cx) / (0.5 * rx)) ** 2 <= 1
            labels[i][core] = 2
            img = np.where(core, 1.0, img)
        images[i] = img + noise * rng.standard_normal((h, w))
    return images.astype(np.float32), labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)
