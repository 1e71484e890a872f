"""LiTS metrics on hand-computable cases, against medpy (connectivity=2), and lesion-wise detection."""

from __future__ import annotations

import math

import numpy as np
import pytest
from medpy.metric import binary
from scipy import ndimage

from livertumor.metrics import (
    LARGE,
    case_metrics,
    dice_global,
    equivalent_diameter_mm,
    lesion_detection,
    mask_stats,
)


def cube(shape, start, size):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def test_single_voxels_at_anisotropic_spacing():
    pred, truth = np.zeros((5, 5, 8), bool), np.zeros((5, 5, 8), bool)
    pred[2, 2, 2], truth[2, 2, 5] = True, True
    m = case_metrics(pred, truth, spacing=(2.0, 1.0, 0.5))
    assert m["dc"] == 0.0 and m["voe"] == 1.0 and m["rvd"] == 0.0
    assert m["assd"] == m["msd"] == m["rmsd"] == pytest.approx(1.5)


@pytest.mark.parametrize("axis", [0, 2])
def test_shifted_cubes_by_hand(axis):
    # 4x4x4 cubes, one shifted by a voxel along `axis`: each has 56 surface voxels. 16 (the new face) lie
    # one step along `axis` from the other's surface, 4 (the middle of the face it moved into) lie inside
    # the other, one voxel from its surface along the finest axis (x, 1 mm); the other 36 coincide.
    spacing = (3.0, 2.0, 1.0)
    truth = cube((10, 10, 10), (2, 2, 2), 4)
    pred = np.roll(truth, 1, axis=axis)
    m = case_metrics(pred, truth, spacing)
    face, inner = spacing[axis], min(spacing)
    assert m["dc"] == pytest.approx(2 * 48 / 128)
    assert m["voe"] == pytest.approx(1 - 48 / 80)
    assert m["rvd"] == 0.0
    assert m["assd"] == pytest.approx(2 * (16 * face + 4 * inner) / 112)
    assert m["msd"] == pytest.approx(face)
    assert m["rmsd"] == pytest.approx(math.sqrt(2 * (16 * face**2 + 4 * inner**2) / 112))


def test_border_voxels_are_surface_voxels():
    full = np.ones((3, 3, 3), bool)
    stats = mask_stats(full, full, (1, 1, 1))
    assert stats.pred_to_truth_mm.size == 26  # only the centre has all 18 neighbours inside
    edge = np.ones((4, 4, 4), bool)
    truth = edge.copy()
    truth[:, :, 0] = False  # the array's x = 0 face removed: that face was surface by the border rule
    m = case_metrics(edge, truth, (1, 1, 1))
    assert m["msd"] == pytest.approx(1.0) and m["rvd"] == pytest.approx(64 / 48 - 1)


def test_hollow_against_filled_has_no_surface_distance():
    filled = cube((7, 7, 7), (1, 1, 1), 5)
    hollow = filled & ~cube((7, 7, 7), (2, 2, 2), 3)
    m = case_metrics(hollow, filled, (1, 1, 1))
    assert m["assd"] == m["msd"] == m["rmsd"] == 0.0  # the shell is exactly the cube's surface
    assert m["dc"] == pytest.approx(2 * 98 / (98 + 125))
    assert m["rvd"] == pytest.approx((98 - 125) / 125)


def test_empty_masks_follow_lits():
    empty, some = np.zeros((4, 4, 4), bool), cube((4, 4, 4), (1, 1, 1), 2)
    assert case_metrics(empty, empty, (1, 1, 1)) == {
        "dc": 1.0,
        "voe": None,
        "rvd": None,
        "assd": None,
        "msd": None,
        "rmsd": None,
    }
    for pred, truth in ((empty, some), (some, empty)):
        assert case_metrics(pred, truth, (1, 1, 1)) == {
            "dc": 0.0,
            "voe": 1.0,
            "rvd": LARGE,
            "assd": LARGE,
            "msd": LARGE,
            "rmsd": LARGE,
        }
    assert case_metrics(empty, some, (1, 1, 1), large=-1.0)["msd"] == -1.0


def test_label_value_selects_tumour_from_label_maps():
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[1:5, 1:5, 1:5] = 1
    truth[2:4, 2:4, 2:4] = 2
    pred = truth.copy()
    pred[pred == 2] = 1
    assert case_metrics(pred, truth, (1, 1, 1), label=2)["dc"] == 0.0
    assert case_metrics(pred, truth, (1, 1, 1), label=1)["dc"] == pytest.approx(2 * 56 / (64 + 56))


def test_dice_global_pools_voxels_over_cases():
    a = mask_stats(cube((6, 6, 6), (0, 0, 0), 2), cube((6, 6, 6), (0, 0, 0), 2), (1, 1, 1))  # 8 of 8
    b = mask_stats(cube((6, 6, 6), (0, 0, 0), 3), cube((6, 6, 6), (3, 3, 3), 3), (1, 1, 1))  # 0 of 27+27
    assert dice_global([a, b]) == pytest.approx(2 * 8 / (16 + 54))
    assert dice_global([]) is None


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_medpy_connectivity_2(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(8, 20, 3))
    spacing = tuple(rng.uniform(0.5, 3.0, 3))
    pred, truth = (ndimage.binary_opening(rng.random(shape) < 0.55) for _ in range(2))
    pred[0, 0, 0] = truth[-1, -1, -1] = True  # both non-empty, and both touch the border
    stats = mask_stats(pred, truth, spacing)
    medpy_forward = binary.__surface_distances(pred, truth, spacing, 2)
    medpy_backward = binary.__surface_distances(truth, pred, spacing, 2)
    np.testing.assert_allclose(np.sort(stats.pred_to_truth_mm), np.sort(medpy_forward))
    np.testing.assert_allclose(np.sort(stats.truth_to_pred_mm), np.sort(medpy_backward))
    m = case_metrics(pred, truth, spacing)
    pooled = np.concatenate([medpy_forward, medpy_backward])
    assert m["assd"] == pytest.approx(pooled.mean())
    assert m["rmsd"] == pytest.approx(np.sqrt(np.mean(pooled**2)))
    assert m["msd"] == pytest.approx(binary.hd(pred, truth, spacing, 2))
    assert m["dc"] == pytest.approx(binary.dc(pred, truth))
    assert m["voe"] == pytest.approx(1 - binary.jc(pred, truth))
    assert m["rvd"] == pytest.approx(binary.ravd(pred, truth))


def lesions_scene():
    truth, pred = np.zeros((20, 40, 40), bool), np.zeros((20, 40, 40), bool)
    truth |= cube(truth.shape, (2, 2, 2), 6)  # found well
    truth |= cube(truth.shape, (2, 20, 20), 6)  # found poorly (IoU 27/216+... < 0.5)
    truth |= cube(truth.shape, (12, 30, 2), 2)  # missed small lesion
    pred |= cube(pred.shape, (2, 2, 3), 6)
    pred |= cube(pred.shape, (5, 23, 23), 3)
    pred |= cube(pred.shape, (14, 2, 30), 3)  # false positive
    return pred, truth


def test_lesion_detection_with_overlap_rule():
    pred, truth = lesions_scene()
    report = lesion_detection(pred, truth, (1.0, 1.0, 1.0))
    assert (report.true_positives, report.false_negatives, report.false_positives) == (2, 1, 1)
    summary = report.summary()
    assert summary["recall"] == pytest.approx(2 / 3) and summary["precision"] == pytest.approx(2 / 3)
    # sizes: 216 voxels -> 7.4 mm, 8 voxels -> 2.5 mm: all below 10 mm at 1 mm spacing
    assert summary["lesions_<10mm"] == 3 and summary["lesions_10-20mm"] == 0
    assert equivalent_diameter_mm(216, (1, 1, 1)) == pytest.approx((6 * 216 / np.pi) ** (1 / 3))


def test_lesion_detection_with_iou_rule_and_lesion_wise_metrics():
    pred, truth = lesions_scene()
    report = lesion_detection(pred, truth, (1.0, 1.0, 1.0), rule="iou", iou_threshold=0.5, lesion_wise_metrics=True)
    assert (report.true_positives, report.false_negatives, report.false_positives) == (1, 2, 2)
    well = case_metrics(cube(pred.shape, (2, 2, 3), 6), cube(pred.shape, (2, 2, 2), 6), (1, 1, 1))
    assert report.lesion_metrics == pytest.approx(well)


def test_size_bins_use_physical_size():
    truth = cube((30, 30, 30), (5, 5, 5), 8)
    report = lesion_detection(truth, truth, (2.0, 2.0, 2.0))  # 8 voxels of 2 mm: ~19.9 mm sphere
    assert report.summary()["lesions_10-20mm"] == 1 and report.summary()["recall_10-20mm"] == 1.0


def test_merged_prediction_detects_one_of_two():
    truth = cube((10, 20, 20), (2, 2, 2), 3) | cube((10, 20, 20), (2, 2, 6), 3)
    pred = cube((10, 20, 20), (2, 2, 2), 3) | cube((10, 20, 20), (2, 2, 5), 4)
    report = lesion_detection(pred, truth, (1, 1, 1))
    assert (report.true_positives, report.false_negatives, report.false_positives) == (1, 1, 0)
