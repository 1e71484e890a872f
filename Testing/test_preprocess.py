"""Preprocessing: every spatial step maps exactly back onto the input grid, labels keep every lesion."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DIRECTIONS
from scipy import ndimage

from livertumor.phantom import make_phantom
from livertumor.preprocess import (
    PreprocessConfig,
    body_box,
    body_mask,
    component_centroids,
    effective_range,
    extract_block,
    grid_with_spacing,
    largest_component,
    prepare_ct,
    resample_label,
    resample_to_grid,
    resample_to_spacing,
    restore_to_grid,
    sub_image_starts,
    window_hu,
)
from livertumor.volume import Grid, Volume


def smooth_volume(direction: np.ndarray) -> Volume:
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in (12, 20, 24)), indexing="ij")
    values = (200 * np.sin(3 * x) + 150 * np.cos(2 * y) + 100 * z - 300).astype(np.float32)
    return Volume.from_array(values, spacing=(0.8, 0.9, 2.5), origin=(-101.5, 37.25, 512.0), direction=direction)


def test_grid_with_spacing_keeps_the_physical_box():
    grid = Grid((10, 20, 30), (0.5, 0.5, 2.0), (5.0, -3.0, 7.0), DIRECTIONS["oblique"])
    coarse = grid_with_spacing(grid, (1.0, 1.0, 1.0))
    assert coarse.shape == (20, 10, 15)
    corner = grid.index_to_physical(np.array([-0.5, -0.5, -0.5]))  # outer edge of the first voxel
    np.testing.assert_allclose(coarse.index_to_physical(np.array([-0.5, -0.5, -0.5])), corner, atol=1e-9)
    np.testing.assert_array_equal(coarse.direction, grid.direction)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_round_trip_lands_exactly_on_the_original_grid(direction, interpolation):
    volume = smooth_volume(DIRECTIONS[direction])
    there = resample_to_spacing(volume, (1.0, 1.0, 1.0), interpolation)
    assert there.spacing == (1.0, 1.0, 1.0)
    back = resample_to_grid(there, volume.grid, interpolation)
    assert back.shape == volume.shape
    assert back.spacing == volume.spacing and back.origin == volume.origin
    np.testing.assert_array_equal(back.direction, volume.direction)
    inner = (slice(1, -1),) * 3
    error = np.abs(back.array - volume.array)[inner]
    assert error.max() < 0.05 * np.ptp(volume.array)


def test_identity_resampling_is_exact():
    volume = smooth_volume(DIRECTIONS["oblique"])
    np.testing.assert_allclose(resample_to_grid(volume, volume.grid).array, volume.array, atol=1e-4)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_label_resampled_forth_and_back_keeps_every_lesion(direction):
    rng = np.random.default_rng(len(direction))
    label = np.zeros((30, 40, 40), np.uint8)
    label[5:25, 5:35, 5:35] = 1
    for z in (8, 16, 22):  # one-voxel lesions, far below the coarse spacing, far enough apart to stay apart
        for y in (8, 20, 31):
            for x in (9, 22):
                label[tuple(np.array((z, y, x)) + rng.integers(-1, 2, 3))] = 2
    volume = Volume.from_array(label, spacing=(0.7, 0.7, 1.0), origin=(3, 4, 5), direction=DIRECTIONS[direction])
    structure = np.ones((3, 3, 3), bool)
    count = ndimage.label(label == 2, structure)[1]
    coarse = resample_label(volume, grid_with_spacing(volume.grid, (2.0, 2.0, 3.0)))
    assert ndimage.label(coarse.array == 2, structure)[1] == count
    back = resample_label(coarse, volume.grid)
    assert back.grid == volume.grid
    assert ndimage.label(back.array == 2, structure)[1] == count
    lost_without = resample_label(volume, coarse.grid, keep_components=False).array
    assert ndimage.label(lost_without == 2, structure)[1] < count  # the guarantee is doing the work


def test_component_centroids_are_scipys_centres_of_mass():
    ids, count = ndimage.label(np.random.default_rng(4).random((20, 30, 25)) > 0.9, np.ones((3, 3, 3), bool))
    chosen = np.arange(1, count + 1)[::3]
    np.testing.assert_allclose(component_centroids(ids, chosen), ndimage.center_of_mass(ids, ids, chosen))


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_label_resampling_of_the_labelled_box_equals_resampling_everything(direction):
    """Only the labelled box is resampled, onto the part of the target it reaches: the result is the
    whole-volume nearest-neighbour resampling, voxel for voxel, on any orientation, including labels at
    the volume's edge and a target that only partly overlaps."""
    rng = np.random.default_rng(3)
    label = np.zeros((24, 48, 40), np.uint8)
    label[6:18, 10:30, 8:33] = 1
    label[9:14, 15:22, 12:20] = 2
    label[0:3, 44:48, 36:40] = 2  # in a corner
    label[20:24, 0:6, 0:5] = 1
    source = Volume.from_array(label, spacing=(1.1, 0.9, 2.0), origin=(3, -4, 5), direction=DIRECTIONS[direction])
    for spacing, shift in (((0.8, 0.8, 1.3), 0.0), ((1.7, 1.4, 2.5), 0.3), ((0.6, 0.6, 1.0), 20.0)):
        target = grid_with_spacing(source.grid, spacing)
        target = Grid(
            target.shape, target.spacing, tuple(np.add(target.origin, shift * rng.random(3))), target.direction
        )
        whole = resample_to_grid(source, target, "nearest", 0).array
        np.testing.assert_array_equal(resample_label(source, target, keep_components=False).array, whole)
    empty = resample_label(source.with_array(np.zeros_like(label)), target)
    assert empty.grid == target and not empty.array.any()


def sphere_scores(grid: Grid, centre: np.ndarray, radius_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """A sphere's label map (2 inside) on ``grid`` and each voxel's probability of lying inside it, a
    logistic of the signed distance to its surface: what a network gives near a boundary."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij"), -1).reshape(-1, 3)
    distance = np.linalg.norm(grid.index_to_physical(index.astype(float)) - centre, axis=1).reshape(grid.shape)
    inside = (1.0 / (1.0 + np.exp((distance - radius_mm) / 1.5))).astype(np.float32)
    return np.where(distance <= radius_mm, 2, 0).astype(np.uint8), inside


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_interpolated_scores_draw_the_boundary_between_coarse_voxels(direction):
    """Mapped back from a 3 mm grid by their scores, a sphere's labels follow its surface better than
    its interpolated one-hot, and that better than nearest-neighbour's staircase, on the target grid
    exactly, in any orientation."""
    fine = Grid((36, 48, 44), (0.8, 0.8, 1.0), (3.0, -4.0, 5.0), DIRECTIONS[direction])
    centre = fine.index_to_physical(np.array([17.3, 23.6, 21.2]))
    truth, _ = sphere_scores(fine, centre, 11.0)
    coarse_grid = grid_with_spacing(fine, (3.0, 3.0, 3.0))
    coarse, inside = sphere_scores(coarse_grid, centre, 11.0)
    labels = Volume(coarse, coarse_grid)

    def dice(mask: np.ndarray) -> float:
        return 2 * (mask & (truth == 2)).sum() / (mask.sum() + (truth == 2).sum())

    nearest = dice(resample_label(labels, fine).array == 2)
    one_hot = dice(resample_label(labels, fine, scores={}).array == 2)  # no scores: the labels' one-hot
    scored = resample_label(labels, fine, scores={0: 1 - inside, 2: inside})
    assert scored.grid == fine and scored.array.dtype == np.uint8
    assert set(np.unique(scored.array)) == {0, 2}
    assert dice(scored.array == 2) > one_hot + 0.02 > nearest + 0.04
    assert dice(scored.array == 2) > 0.95


def test_scores_never_overrule_the_labels_decisions():
    """Where the labels say otherwise (a lesion dropped after the network, a value without a score) the
    labels win: the scores' second sphere is not mapped back, the liver without a score is."""
    fine = Grid((30, 40, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    coarse_grid = grid_with_spacing(fine, (2.5, 2.5, 2.5))
    kept, inside_kept = sphere_scores(coarse_grid, np.array([12.0, 12.0, 12.0]), 6.0)
    _, inside_dropped = sphere_scores(coarse_grid, np.array([29.0, 29.0, 18.0]), 6.0)
    labels = kept.copy()
    labels[6:11, 0:5, 10:15] = 1  # liver, without a score of its own
    inside = np.maximum(inside_kept, inside_dropped)
    out = resample_label(Volume(labels, coarse_grid), fine, scores={0: 1 - inside, 2: inside}).array
    assert (out == 2).any() and not (out[:, 24:, 24:] == 2).any()
    assert (out == 1).sum() == pytest.approx((labels == 1).sum() * 2.5**3, rel=0.25)


def test_a_lesion_the_interpolated_scores_lose_is_put_back():
    """A one-voxel lesion whose score wins only at its own centre vanishes from a grid whose voxels all
    fall between coarse centres; it comes back as one voxel at its centroid."""
    coarse_grid = Grid((9, 9, 9), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    fine = Grid((17, 17, 17), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5))  # every voxel between coarse centres
    labels = np.zeros(coarse_grid.shape, np.uint8)
    labels[2:7, 2:7, 2:7] = 1
    labels[4, 4, 4] = 2
    scores = {0: np.where(labels == 0, 1.0, 0.0), 1: np.where(labels == 1, 1.0, 0.3), 2: 0.4 * (labels == 2)}
    volume = Volume(labels, coarse_grid)
    assert not (resample_label(volume, fine, keep_components=False, scores=scores).array == 2).any()
    out = resample_label(volume, fine, scores=scores).array
    assert (out == 2).sum() == 1 and (out == 1).sum() > 0


def test_window_maps_the_paper_window_to_unit_range():
    out = window_hu(np.array([-1000, -60, 40, 140, 3000], np.int16))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert out.dtype == np.float32


def test_effective_range_adds_margin_and_clips():
    label = np.zeros((50, 4, 4), np.uint8)
    label[20:31, 1, 1] = 1
    assert effective_range(label, margin=10) == (10, 41)
    assert effective_range(label, margin=25) == (0, 50)
    assert effective_range(np.zeros((7, 2, 2)), margin=3) == (0, 7)


def test_sub_images_cover_every_voxel_flush_with_the_end():
    shape, block, stride = (70, 300, 256), (64, 256, 256), (13, 51, 51)
    starts = sub_image_starts(shape, block, stride)
    covered = np.zeros(shape, bool)
    for start in starts:
        covered[tuple(slice(s, s + b) for s, b in zip(start, block))] = True
    assert covered.all()
    assert {s[0] for s in starts} == {0, 6} and {s[1] for s in starts} == {0, 44}
    assert sub_image_starts((10, 10, 10), (64, 256, 256), (13, 51, 51)) == [(0, 0, 0)]


def test_extract_block_pads_past_the_edge():
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    block = extract_block(array, (1, 1, 2), (2, 2, 3), fill=-1)
    np.testing.assert_array_equal(block[0, :, :2], array[1, 1:3, 2:4])
    assert (block[1] == -1).all() and (block[0, :, 2] == -1).all()


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=3, shape=(48, 96, 96), spacing_zyx=(4.0, 3.5, 3.5), lesion_count=4)


def test_body_box_holds_the_body_and_drops_air(phantom):
    start, stop = body_box(phantom.ct)
    body = phantom.ct.array > -500
    inside = np.zeros_like(body)
    inside[tuple(slice(a, b) for a, b in zip(start, stop))] = True
    assert body[~inside].sum() == 0
    assert inside.sum() < 0.8 * body.size  # the air at the sides is gone


def test_body_mask_holds_the_patient_with_its_gas_and_drops_air_and_table(phantom):
    hu = phantom.ct.array
    body = body_mask(hu)
    assert body[phantom.label.array > 0].all()  # the liver and every lesion
    enclosed_gas = (hu < -500) & ndimage.binary_erosion(body, iterations=2)
    assert enclosed_gas.sum() > 50, "the phantom's bowel gas and lung bases lie inside the body"
    assert not body[:, :3, :3].any() and not body[:, -3:, -3:].any()  # the air in the corners
    table = (hu > -500) & ~largest_component(hu > -500)
    assert table.any() and not body[table].any()
    assert body_mask(np.full((4, 5, 6), -1000.0)) is None


@pytest.mark.parametrize("direction", ["lps", "flipped", "oblique"])
def test_prepare_then_restore_gives_labels_on_the_input_grid(phantom, direction):
    ct = Volume(
        phantom.ct.array, Grid(phantom.ct.shape, phantom.ct.spacing, (10.0, -20.0, 30.0), DIRECTIONS[direction])
    )
    label = Volume(phantom.label.array, ct.grid)
    config = PreprocessConfig(spacing=(2.0, 2.0, 2.0))
    prepared = prepare_ct(ct, config)
    assert prepared.spacing == (2.0, 2.0, 2.0)
    assert 0.0 <= prepared.array.min() and prepared.array.max() <= 1.0
    on_prepared = resample_label(label, prepared.grid)  # a perfect "prediction" on the network's grid
    restored = restore_to_grid(on_prepared, ct.grid, is_label=True)
    assert restored.grid == ct.grid
    for value in (1, 2):
        truth, back = label.array == value, restored.array == value
        dice = 2 * (truth & back).sum() / (truth.sum() + back.sum())
        assert dice > (0.93 if value == 1 else 0.6), (value, dice)
    structure = np.ones((3, 3, 3), bool)
    assert ndimage.label(restored.array == 2, structure)[1] == ndimage.label(label.array == 2, structure)[1]


def test_config_round_trips_through_the_card_and_refuses_unknown_keys():
    config = PreprocessConfig(spacing=(0.8, 0.8, 1.5), block=(32, 64, 64))
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    assert config.stride == (6, 13, 13)
    with pytest.raises(ValueError, match="unknown preprocessing parameters"):
        PreprocessConfig.from_dict({**config.to_dict(), "gamma": 2})
