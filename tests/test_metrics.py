"""Metrics against hand-computed tables and a brute-force surface distance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from napari_medsegdiff.errors import InputError
from napari_medsegdiff.metrics import (
    dice,
    hd95,
    iou,
    label_metrics,
    summarize,
    surface,
    surface_distances,
)


def _square(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows, cols] = True
    return m


# (pred rows, truth rows) of 4-wide bars in an 8x8 image -> (dice, iou)
OVERLAP_TABLE = [
    (slice(0, 4), slice(0, 4), 1.0, 1.0),  # identical, 16 px each
    (slice(0, 4), slice(2, 6), 16 / 32, 8 / 24),  # half overlap
    (slice(0, 4), slice(3, 7), 8 / 32, 4 / 28),  # quarter overlap
    (slice(0, 4), slice(4, 8), 0.0, 0.0),  # touching, disjoint
    (slice(0, 2), slice(0, 4), 16 / 24, 8 / 16),  # pred inside truth
]


@pytest.mark.parametrize(("pr", "tr", "d", "j"), OVERLAP_TABLE)
def test_dice_iou_table(pr, tr, d, j):
    pred = _square((8, 8), pr, slice(0, 4))
    truth = _square((8, 8), tr, slice(0, 4))
    assert dice(pred, truth) == pytest.approx(d)
    assert iou(pred, truth) == pytest.approx(j)
    # symmetric
    assert dice(truth, pred) == pytest.approx(d)
    assert iou(truth, pred) == pytest.approx(j)


def test_empty_conventions():
    empty = np.zeros((4, 5, 6), bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True
    assert (dice(empty, empty), iou(empty, empty), hd95(empty, empty)) == (1.0, 1.0, 0.0)
    assert (dice(full, empty), iou(full, empty)) == (0.0, 0.0)
    assert math.isinf(hd95(full, empty)) and math.isinf(hd95(empty, full))


def test_hd95_single_points_and_spacing():
    pred = _square((6, 6), 0, 0)
    truth = _square((6, 6), 3, 4)
    assert hd95(pred, truth) == pytest.approx(5.0)
    assert hd95(pred, truth, spacing=(2.0, 1.0)) == pytest.approx(math.sqrt(36 + 16))


def test_hd95_percentile_by_hand():
    # pred: 10 isolated pixels at distances 0, 2, ..., 18 from the single truth pixel.
    pred = np.zeros((3, 20), bool)
    pred[1, 0:20:2] = True
    truth = _square((3, 20), 1, 0)
    # pooled distances: pred->truth 0,2,...,18 and truth->pred 0 -> 11 values;
    # 95th percentile index 0.95 * 10 = 9.5 -> halfway between 16 and 18.
    assert hd95(pred, truth) == pytest.approx(17.0)
    assert hd95(truth, pred) == pytest.approx(17.0)


@pytest.mark.parametrize(
    ("axis", "spacing", "expected"),
    [
        (0, (1.0, 1.0, 1.0), 2.0),
        (0, (3.0, 1.0, 1.0), 6.0),  # two planes 2 voxels apart along z at 3 mm
        (0, (3.0, 0.5, 0.5), 6.0),  # in-plane spacing does not matter
        (2, (3.0, 1.0, 0.7), 1.4),  # planes along x at 0.7 mm
    ],
)
def test_hd95_anisotropic_planes(axis, spacing, expected):
    pred = np.zeros((8, 7, 6), bool)
    truth = np.zeros_like(pred)
    index_p = [slice(None)] * 3
    index_t = [slice(None)] * 3
    index_p[axis], index_t[axis] = 2, 4
    pred[tuple(index_p)] = True
    truth[tuple(index_t)] = True
    assert hd95(pred, truth, spacing=spacing) == pytest.approx(expected)


def test_surface_of_solid_cube_excludes_interior():
    cube = np.zeros((7, 7, 7), bool)
    cube[1:6, 1:6, 1:6] = True
    s = surface(cube)
    assert s.sum() == 5**3 - 3**3
    assert not s[3, 3, 3]


def test_hd95_matches_brute_force():
    rng = np.random.default_rng(0)
    spacing = (2.5, 0.8, 1.1)
    for _ in range(3):
        pred = rng.random((6, 9, 8)) > 0.7
        truth = rng.random((6, 9, 8)) > 0.6
        sp = np.argwhere(surface(pred)) * spacing
        st = np.argwhere(surface(truth)) * spacing
        d = cdist(sp, st)
        expected = np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95)
        assert hd95(pred, truth, spacing) == pytest.approx(expected)
        assert len(surface_distances(pred, truth, spacing)) == len(sp) + len(st)


def test_label_metrics_and_summary():
    pred = np.zeros((8, 8), np.uint8)
    truth = np.zeros((8, 8), np.uint8)
    pred[0:4, 0:4] = 1
    truth[2:6, 0:4] = 1  # label 1: dice 0.5, iou 1/3, hd95 2
    pred[6:8, 6:8] = 2
    truth[6:8, 6:8] = 2  # label 2: perfect
    pred[0, 7] = 3  # label 3: only in pred
    table = label_metrics(pred, truth)
    assert sorted(table) == [1, 2, 3]
    assert table[1]["dice"] == pytest.approx(0.5)
    assert table[1]["iou"] == pytest.approx(1 / 3)
    assert table[1]["hd95_mm"] == pytest.approx(2.0)
    assert table[2] == {"dice": 1.0, "iou": 1.0, "hd95_mm": 0.0}
    assert table[3]["dice"] == 0.0 and math.isinf(table[3]["hd95_mm"])

    summary = summarize(pred, truth)
    assert summary["mean"]["dice"] == pytest.approx(1.5 / 3)
    assert summary["mean"]["iou"] == pytest.approx((1 / 3 + 1) / 3)
    assert summary["mean"]["hd95_mm"] == pytest.approx(1.0)  # inf skipped: (2 + 0) / 2

    only_two = label_metrics(pred, truth, labels=[2, 5])
    assert sorted(only_two) == [2, 5]
    assert only_two[5] == {"dice": 1.0, "iou": 1.0, "hd95_mm": 0.0}  # absent in both


def test_summary_of_empty_maps_is_nan():
    z = np.zeros((3, 3), np.uint8)
    summary = summarize(z, z)
    assert summary["labels"] == {}
    assert all(math.isnan(v) for v in summary["mean"].values())


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError, match="shapes differ"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(InputError, match="spacing"):
        hd95(np.ones((3, 3)), np.ones((3, 3)), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        hd95(np.ones((3, 3)), np.ones((3, 3)), spacing=(1.0, 0.0))
    with pytest.raises(InputError, match="shapes differ"):
        label_metrics(np.zeros((3, 3)), np.zeros((3, 4)))


# --- evaluate.py on tiny generated NIfTI files -------------------------------------------


def _save(path, data, zooms=(1.0, 1.0, 1.0)):
    import nibabel as nib

    affine = np.diag([*zooms, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(data, np.uint8), affine), str(path))
    return path


def _pair_volumes():
    pred = np.zeros((6, 8, 8), np.uint8)
    truth = np.zeros_like(pred)
    pred[2] = 1  # plane z=2 vs z=4: hd95 = 2 voxels
    truth[4] = 1
    pred[0, 0:2, 0:2] = 2
    truth[0, 0:2, 0:2] = 2
    return pred, truth


def test_evaluate_two_files_uses_truth_spacing(tmp_path):
    import json

    from napari_medsegdiff.evaluate import evaluate_paths, format_report

    pred, truth = _pair_volumes()
    p = _save(tmp_path / "p.nii.gz", pred, zooms=(1.0, 1.0, 1.0))
    t = _save(tmp_path / "t.nii", truth, zooms=(3.0, 0.5, 0.5))
    report = evaluate_paths(p, t)
    json.dumps(report, allow_nan=False)  # JSON-friendly
    (case,) = report["cases"]
    assert case["spacing_mm"] == [3.0, 0.5, 0.5]
    assert set(case["labels"]) == {"1", "2"}
    assert case["labels"]["1"] == {"dice": 0.0, "iou": 0.0, "hd95_mm": pytest.approx(6.0)}
    assert case["labels"]["2"] == {"dice": 1.0, "iou": 1.0, "hd95_mm": 0.0}
    assert report["mean"]["dice"] == pytest.approx(0.5)
    assert report["mean"]["hd95_mm"] == pytest.approx(3.0)
    text = format_report(report)
    assert "hd95_mm" in text and "6.00" in text and "mean" in text


def test_evaluate_folders_pairs_by_name_and_nulls_inf(tmp_path):
    import json

    from napari_medsegdiff.evaluate import evaluate_paths, format_report

    pred_dir, truth_dir = tmp_path / "pred", tmp_path / "truth"
    pred_dir.mkdir()
    truth_dir.mkdir()
    pred, truth = _pair_volumes()
    _save(pred_dir / "a.nii.gz", pred)
    _save(truth_dir / "a.nii", truth)
    missed = np.zeros_like(truth)
    _save(pred_dir / "b.nii.gz", missed)  # misses label 1 entirely
    _save(truth_dir / "b.nii.gz", (truth == 1).astype(np.uint8))
    (pred_dir / "notes.txt").write_text("ignored")
    report = evaluate_paths(pred_dir, truth_dir)
    assert [Path(c["pred"]).name for c in report["cases"]] == ["a.nii.gz", "b.nii.gz"]
    assert [Path(c["truth"]).name for c in report["cases"]] == ["a.nii", "b.nii.gz"]
    b = report["cases"][1]
    assert b["labels"]["1"] == {"dice": 0.0, "iou": 0.0, "hd95_mm": None}
    assert b["mean"]["hd95_mm"] is None
    json.loads(json.dumps(report, allow_nan=False))
    assert report["labels"]["1"]["hd95_mm"] == pytest.approx(2.0)  # only case a is finite
    assert report["labels"]["2"]["dice"] == 1.0
    rows = format_report(report).splitlines()
    assert any(r.startswith("b ") and r.split()[1:] == ["1", "0.0000", "0.0000", "-"] for r in rows)


def test_evaluate_errors_name_the_files(tmp_path):
    from napari_medsegdiff.evaluate import evaluate_paths

    p = _save(tmp_path / "p.nii.gz", np.zeros((4, 4, 4)))
    t = _save(tmp_path / "t.nii.gz", np.zeros((4, 4, 5)))
    with pytest.raises(InputError, match=r"p\.nii\.gz and .*t\.nii\.gz: shapes differ"):
        evaluate_paths(p, t)
    with pytest.raises(InputError, match="does not exist"):
        evaluate_paths(tmp_path / "nope.nii.gz", t)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match=r"bad\.nii\.gz: cannot read"):
        evaluate_paths(bad, t)

    pred_dir, truth_dir = tmp_path / "pd", tmp_path / "td"
    pred_dir.mkdir()
    truth_dir.mkdir()
    _save(pred_dir / "x.nii.gz", np.zeros((2, 2, 2)))
    _save(pred_dir / "y.nii.gz", np.zeros((2, 2, 2)))
    _save(truth_dir / "x.nii.gz", np.zeros((2, 2, 2)))
    _save(truth_dir / "z.nii.gz", np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match=r"no ground truth .* y; no prediction .* z"):
        evaluate_paths(pred_dir, truth_dir)
    with pytest.raises(InputError, match="two NIfTI files or two folders"):
        evaluate_paths(pred_dir, t)
