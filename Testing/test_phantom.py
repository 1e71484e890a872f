"""Phantoms: the generator's claims checked from the arrays it produces."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from livertumor.io import read_image, read_label
from livertumor.phantom import LESION_CLASSES, SIZE_RANGES_MM, TISSUE_HU, make_phantom, write_phantom_dataset

SHAPE, SPACING = (64, 112, 112), (3.0, 3.2, 3.2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    manifest = write_phantom_dataset(out, cases=6, seed=11, shape=SHAPE, spacing_zyx=SPACING)
    return out, json.loads(manifest.read_text())


def test_dataset_matches_its_manifest(dataset):
    out, manifest = dataset
    assert len(manifest["cases"]) == 6
    structure = np.ones((3, 3, 3), bool)
    for case in manifest["cases"]:
        ct = read_image(out / case["volume"])
        label = read_label(out / case["segmentation"], reference=ct.grid)
        classes = read_label(out / case["classes"], allowed=range(4), reference=ct.grid)
        assert ct.array.dtype == np.int16
        np.testing.assert_allclose(ct.spacing, SPACING[::-1], rtol=1e-6)
        tumour = label.array == 2
        ids, count = ndimage.label(tumour, structure)
        assert count == len(case["lesions"])
        np.testing.assert_array_equal(classes.array > 0, tumour)
        for lesion in case["lesions"]:
            centre = np.round(lesion["centre_index_zyx"]).astype(int)
            component = ids == ids[tuple(centre)]
            assert ids[tuple(centre)] > 0 and component.sum() == lesion["voxels"]
            assert set(np.unique(classes.array[component])) == {LESION_CLASSES.index(lesion["kind"]) + 1}
            assert lesion["volume_ml"] == pytest.approx(lesion["voxels"] * np.prod(SPACING) / 1000, rel=1e-3)
            np.testing.assert_allclose(
                ct.grid.index_to_physical(np.argwhere(component).mean(0)), lesion["centre_lps_mm"], atol=0.01
            )
            # tumour lies inside the liver: its neighbourhood is liver or tumour, never background
            grown = ndimage.binary_dilation(component) & ~component
            assert (label.array[grown] > 0).mean() > 0.5


def test_every_fifth_case_is_lesion_free_and_others_have_lesions(dataset):
    _, manifest = dataset
    counts = [len(case["lesions"]) for case in manifest["cases"]]
    assert counts[4] == 0
    assert all(1 <= c <= 6 for i, c in enumerate(counts) if i != 4)


def test_same_seed_same_volume_other_seed_other_volume():
    first, again, other = (make_phantom(s, (32, 64, 64), (4.0, 5.0, 5.0)) for s in (5, 5, 6))
    np.testing.assert_array_equal(first.ct.array, again.ct.array)
    np.testing.assert_array_equal(first.label.array, again.label.array)
    assert first.lesions == again.lesions
    assert not np.array_equal(first.ct.array, other.ct.array)


@pytest.fixture(scope="module")
def fine():
    """Finer phantoms with many lesions of every kind, to check sizes and appearances."""
    return [
        make_phantom(seed, (96, 160, 160), (2.0, 2.0, 2.0), lesion_count=6, kinds=LESION_CLASSES) for seed in (1, 2)
    ]


def test_lesion_sizes_span_small_to_large_and_match_their_volumes(fine):
    diameters = [lesion.diameter_mm for p in fine for lesion in p.lesions]
    low, high = SIZE_RANGES_MM[0][0], SIZE_RANGES_MM[-1][1]
    assert all(low <= d <= high for d in diameters)
    assert min(diameters) < 10.0 and max(diameters) > 20.0
    for phantom in fine:
        for lesion in phantom.lesions:
            if lesion.diameter_mm >= 8.0:  # well resolved at 2 mm: equivalent diameter near the drawn one
                equivalent = (6 * lesion.volume_ml * 1000 / np.pi) ** (1 / 3)
                assert 0.7 * lesion.diameter_mm < equivalent < 1.25 * lesion.diameter_mm


def mean_hu(phantom, mask):
    return float(phantom.ct.array[mask].mean())


def test_tissue_values_are_ct_like(fine):
    for phantom in fine:
        ct, label = phantom.ct.array, phantom.label.array
        core = ndimage.binary_erosion(label == 1, iterations=2)
        assert TISSUE_HU["liver"] - 15 < float(np.median(ct[core])) < TISSUE_HU["liver"] + 25  # vessels brighten
        assert -1030 < np.median(ct[:, :3, :3]) < -970  # air in the corners
        assert (ct > 400).sum() > 100  # bone
        assert ((ct > -130) & (ct < -70)).sum() > 1000  # fat
        assert 8 < np.std(ct[:, :3, :3]) < 16  # noise of the stated 12 HU, blurred slightly


def test_lesion_kinds_have_their_described_appearance(fine):
    seen = set()
    for phantom in fine:
        for lesion in phantom.lesions:
            mask = phantom.lesion_id.array == lesion.id
            core = ndimage.binary_erosion(mask, iterations=2)
            if core.sum() < 10:
                continue
            rim = mask & ~ndimage.binary_erosion(mask, iterations=1)
            values = phantom.ct.array[core]
            seen.add(lesion.kind)
            if lesion.kind == "cyst":
                assert -10 < values.mean() < 30 and values.std() < 20  # water, homogeneous
            elif lesion.kind == "metastasis":
                assert values.mean() < mean_hu(phantom, rim) - 15  # dark centre, brighter rim
            elif lesion.kind == "hemangioma" and lesion.diameter_mm >= 10:
                bright = phantom.ct.array[mask] > 140
                assert bright.sum() > 3 and np.median(values) < 100  # bright nodules in a dark lesion
    assert seen == set(LESION_CLASSES)
