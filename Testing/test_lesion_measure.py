"""Per-lesion measurements against shapes of known size."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DIRECTIONS

from livertumor.lesions.measure import measure_lesions
from livertumor.volume import Volume


def test_box_and_disc_measure_as_drawn():
    array = np.zeros((10, 40, 40), np.uint8)
    array[2:5, 5:9, 5:15] = 2  # 3 slices of 4 x 10 voxels
    _, yy, xx = np.ogrid[:10, :40, :40]
    array[6, :, :][((yy[0] - 28) ** 2 + (xx[0] - 28) ** 2) <= 36] = 2  # a disc of radius 6 voxels
    volume = Volume.from_array(array, spacing=(0.5, 0.8, 2.0), origin=(10.0, 20.0, 30.0))
    ids, lesions = measure_lesions(volume, label=2)
    assert len(lesions) == 2 and ids.max() == 2
    box, disc = lesions
    assert box.voxels == 120 and box.volume_ml == pytest.approx(120 * 0.5 * 0.8 * 2.0 / 1000)
    diagonal = np.hypot(3 * 0.8, 9 * 0.5) + (0.5 + 0.8) / 2  # centres, plus one in-plane voxel
    assert box.longest_axial_diameter_mm == pytest.approx(diagonal)
    assert box.centroid_lps_mm == pytest.approx((10 + 9.5 * 0.5, 20 + 6.5 * 0.8, 30 + 3 * 2.0))
    assert disc.centroid_index_zyx == pytest.approx((6, 28, 28))
    assert 12 * 0.5 <= disc.longest_axial_diameter_mm <= 12 * 0.8 + 0.65


def test_single_voxel_and_oblique_grid():
    array = np.zeros((3, 5, 5), np.uint8)
    array[1, 2, 3] = 1
    volume = Volume.from_array(array, spacing=(1.0, 1.0, 3.0), origin=(0, 0, 0), direction=DIRECTIONS["oblique"])
    _, (lesion,) = measure_lesions(volume)
    assert lesion.longest_axial_diameter_mm == pytest.approx(1.0)
    np.testing.assert_allclose(lesion.centroid_lps_mm, volume.grid.index_to_physical(np.array([1.0, 2.0, 3.0])))


def test_no_lesion_gives_empty_list():
    ids, lesions = measure_lesions(Volume.from_array(np.zeros((2, 3, 4), np.uint8)))
    assert lesions == [] and not ids.any()
