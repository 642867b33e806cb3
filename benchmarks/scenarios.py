"""Fine-tuning scenarios built from the shipped sample (and one synthetic CT), no downloads.

Each scenario is a scan the user opens, the reference labels a user would paint, the
slices that contain the structure of interest, and the classes scored. ``seed`` draws a
different variant of the same kind (bias field, noise, structure shape).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from napari_medsegdiff.nifti import read_labels, read_volume
from napari_medsegdiff.sample import sample_paths

VENTRICLES = 3


@dataclass
class Scenario:
    """image (z, y, x) float32, labels (z, y, x) int64; ``slices``: where the structure is."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    slices: list[int]
    scored: tuple[int, ...]
    new_model: bool = False
    notes: dict = field(default_factory=dict)


def sample() -> tuple[np.ndarray, np.ndarray]:
    """The ICBM152 T1 (z, y, x) and its GM (1) / WM (2) labels."""
    t1, tissue = sample_paths()
    return read_volume(t1).data, read_labels(tissue).data


def lateral_ventricles(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Lateral ventricles of the sample: dark fluid in holes of the axial tissue mask, the
    two largest components off the midline (z, y, x bool)."""
    brain = labels > 0
    holes = np.zeros_like(brain)
    for z in range(brain.shape[0]):
        holes[z] = ndi.binary_fill_holes(brain[z]) & ~brain[z]
    dark = image < np.percentile(image[labels == 1], 5)
    fluid = ndi.binary_opening(holes & dark, iterations=1)
    parts, n = ndi.label(fluid)
    sizes = ndi.sum(fluid, parts, range(1, n + 1))
    mid = image.shape[2] / 2
    keep = []
    for i in np.argsort(sizes)[::-1][:6]:
        xs = np.nonzero(parts == i + 1)[2]
        if abs(xs.mean() - mid) > 5:  # the midline component is 3rd ventricle + cisterns
            keep.append(i + 1)
        if len(keep) == 2:
            break
    return np.isin(parts, keep)


def bias_field(shape: tuple[int, ...], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field exp(strength * random linear + quadratic terms)."""
    axes = np.meshgrid(*(np.linspace(-0.5, 0.5, n) for n in shape), indexing="ij")
    coef = rng.normal(size=(len(shape), 2))
    log = sum(c[0] * a + c[1] * a**2 for c, a in zip(coef, axes))
    return np.exp(strength * log / (np.abs(log).max() + 1e-6)).astype(np.float32)


def new_class(seed: int = 0) -> Scenario:
    """(a) Lateral ventricles painted as a new class 3 on the T1 sample."""
    image, labels = sample()
    vent = lateral_ventricles(image, labels)
    rng = np.random.default_rng(seed)
    if seed:  # a variant: bias field and noise
        image = image * bias_field(image.shape, 0.4, rng)
        image = image + rng.normal(0, 0.02 * image.max(), image.shape).astype(np.float32)
    labels = labels.copy()
    labels[vent] = VENTRICLES
    slices = [z for z in range(labels.shape[0]) if (labels[z] == VENTRICLES).sum() > 30]
    return Scenario("new class (lateral ventricles)", image, labels, slices, (VENTRICLES,))


def t2_like(seed: int = 0) -> Scenario:
    """(c) A T2-like contrast: intensities inverted inside the head, bias field, noise."""
    image, labels = sample()
    rng = np.random.default_rng(seed + 11)
    head = ndi.binary_fill_holes(ndi.binary_closing(image > 0.05 * image.max(), iterations=3))
    top = np.percentile(image[head], 99.5)
    t2 = np.where(head, top - np.clip(image, 0, top) + 0.1 * top, 0).astype(np.float32)
    t2 = t2 * bias_field(image.shape, 0.5, rng)
    t2 = t2 + rng.normal(0, 0.03 * top, t2.shape).astype(np.float32)
    slices = [z for z in range(labels.shape[0]) if labels[z].sum() > 500]
    return Scenario("T2-like contrast", t2, labels, slices, (1, 2))


def gamma_shift(seed: int = 0) -> Scenario:
    """(c) A gamma 2.5 + bias field change outside the training augmentation range."""
    image, labels = sample()
    rng = np.random.default_rng(seed + 23)
    lo, hi = np.percentile(image, [0.5, 99.5])
    unit = np.clip((image - lo) / (hi - lo), 0, 1) ** (2.5 + 0.3 * seed)
    shifted = (unit * bias_field(image.shape, 0.8, rng) * (hi - lo) + lo).astype(np.float32)
    slices = [z for z in range(labels.shape[0]) if labels[z].sum() > 500]
    return Scenario("gamma + bias field", shifted, labels, slices, (1, 2))


def synthetic_head(seed: int = 0, pad: int = 14) -> Scenario:
    """(e) The brain inside a synthetic head, as in a T1 scan that was not skull-stripped
    (the sample is brain-extracted): around each axial slice's brain, in-plane, a CSF rim
    (2 px), a dark skull (4-6 px) and a bright scalp with fat (5 px), plus noise. The scan
    is padded by ``pad`` px in y and x (labels too: the head is background); z is kept."""
    image, labels = sample()
    rng = np.random.default_rng(seed + 37)
    image = np.pad(image, ((0, 0), (pad, pad), (pad, pad)))
    labels = np.pad(labels, ((0, 0), (pad, pad), (pad, pad)))
    wm = float(np.median(image[labels == 2]))
    skull = 4 + seed % 3
    rings = ((2, 0.15), (2 + skull, 0.08), (7 + skull, 1.1))  # (outer edge px, x WM median)
    head = image.copy()
    for z in range(image.shape[0]):
        brain = ndi.binary_fill_holes(image[z] > 0)
        if not brain.any():
            continue
        distance = ndi.distance_transform_edt(~brain)
        inner = 0.0
        for outer, level in rings:
            head[z][(distance > inner) & (distance <= outer)] = level * wm
            inner = outer
    shell = (head > 0) & (image == 0)  # the rings: outside every slice's brain
    head[shell] += rng.normal(0, 0.04 * wm, int(shell.sum())).astype(np.float32)
    head = np.clip(head, 0, None).astype(np.float32)
    slices = [z for z in range(labels.shape[0]) if labels[z].sum() > 500]
    return Scenario("brain in a synthetic head (not skull-stripped)", head, labels, slices, (1, 2))


def synthetic_ct(seed: int = 0, depth: int = 48, size: int = 128) -> Scenario:
    """(b) A new task: a kidney-like organ (1) in a synthetic abdominal CT (HU), with a
    spine, fat, muscle and a spleen-like distractor of similar density (not labelled)."""
    rng = np.random.default_rng(seed + 101)
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, depth), np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij"
    )
    ct = np.full(z.shape, -1000.0, np.float32)
    body = (x / 0.9) ** 2 + (y / 0.65) ** 2 < 1
    ct[body] = -100.0  # fat
    muscle = (x / 0.8) ** 2 + (y / 0.55) ** 2 < 1
    ct[muscle] = 45.0
    spine = (x**2 + (y - 0.35) ** 2) < 0.12**2
    ct[spine] = 700.0
    cx, cy = 0.42 + 0.05 * rng.normal(), 0.1 + 0.05 * rng.normal()
    radius = 0.2 * np.sqrt(np.clip(1 - (z / 0.8) ** 2, 0, None)) * (1 + 0.1 * rng.normal())
    organ = ((x - cx) / 0.75) ** 2 + (y - cy) ** 2 < radius**2
    ct[organ] = 160.0  # enhancing cortex
    ct[organ & (((x - cx) / 0.75) ** 2 + (y - cy) ** 2 < (0.45 * radius) ** 2)] = 40.0  # pelvis
    spleen = ((x + 0.5) / 0.9) ** 2 + ((y + 0.1) / 0.7) ** 2 < (0.22 * (1 - 0.5 * z**2)) ** 2
    ct[spleen] = 150.0
    ct += rng.normal(0, 12, ct.shape).astype(np.float32)
    ct = ndi.gaussian_filter(ct, 0.7).astype(np.float32)
    labels = organ.astype(np.int64)
    slices = [k for k in range(depth) if labels[k].sum() > 20]
    return Scenario("new task (kidney in synthetic CT)", ct, labels, slices, (1,), new_model=True)


SCENARIOS = {
    "new-class": new_class,
    "new-task": synthetic_ct,
    "t2": t2_like,
    "gamma": gamma_shift,
    "head": synthetic_head,
}
