"""Phantoms: the generator's claims checked from the arrays it produces, and synthetic lesions on a real CT."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from livertumor.cli import main
from livertumor.errors import DatasetError
from livertumor.io import read_image, read_label, write_volume
from livertumor.phantom import (
    ANATOMY_OPTIONS,
    LESION_CLASSES,
    PHASES,
    SIZE_RANGES_MM,
    dataset_phantoms,
    make_phantom,
    synthesize,
    tissue_table,
    write_phantom_dataset,
)
from livertumor.phantom.anatomy import ORGAN_MAP_TISSUES

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
        assert case["phase"] in PHASES
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


def test_dataset_phases_can_be_limited(tmp_path):
    manifest = write_phantom_dataset(tmp_path, 3, seed=2, shape=(32, 64, 64), spacing_zyx=(4, 5, 5), phases=["delayed"])
    assert {case["phase"] for case in json.loads(manifest.read_text())["cases"]} == {"delayed"}
    with pytest.raises(ValueError, match="unknown contrast phase"):
        write_phantom_dataset(tmp_path / "x", 1, shape=(32, 64, 64), spacing_zyx=(4, 5, 5), phases=["venous"])


def test_a_sets_phantoms_are_made_again_from_its_manifest_with_their_lesion_ids(tmp_path):
    write_phantom_dataset(
        tmp_path, 3, seed=4, shape=(32, 64, 64), spacing_zyx=(4, 5, 5), kinds=["hemangioma"], hilar_fat=True
    )
    again = list(dataset_phantoms(tmp_path, organ_map=True))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(again) == 3 and [p.phase for p in again] == [case["phase"] for case in manifest["cases"]]
    for phantom, case in zip(again, manifest["cases"]):
        np.testing.assert_array_equal(phantom.ct.array, read_image(tmp_path / case["volume"]).array)
        assert [lesion.kind for lesion in phantom.lesions] == [lesion["kind"] for lesion in case["lesions"]]
        ids = phantom.lesion_id.array
        assert sorted(np.unique(ids[ids > 0])) == [lesion["id"] for lesion in case["lesions"]]
        assert phantom.organs is not None
    assert len(list(dataset_phantoms(tmp_path, cases=1))) == 1
    changed = read_label(tmp_path / "segmentation-1.nii")
    changed.array[0, 0, 0] = 2
    write_volume(changed, tmp_path / "segmentation-1.nii")
    with pytest.raises(DatasetError, match=r"segmentation-1\.nii differs from its seed's phantom"):
        list(dataset_phantoms(tmp_path))
    with pytest.raises(DatasetError, match=r"no manifest\.json"):
        next(dataset_phantoms(tmp_path / "elsewhere"))


def test_parallel_workers_write_the_same_files_as_one(tmp_path):
    one, three = tmp_path / "one", tmp_path / "three"
    common = ["phantom", "--cases", "4", "--seed", "3", "--shape", "24", "48", "48", "--spacing", "5", "6", "6"]
    assert main([*common, "--out", str(one)]) == 0
    assert main([*common, "--out", str(three), "--workers", "3"]) == 0
    names = sorted(path.name for path in one.iterdir())
    assert names == sorted(path.name for path in three.iterdir()) and len(names) == 13
    for name in names:
        assert (one / name).read_bytes() == (three / name).read_bytes(), name


def test_same_seed_same_volume_other_seed_other_volume():
    first, again, other = (make_phantom(s, (32, 64, 64), (4.0, 5.0, 5.0)) for s in (5, 5, 6))
    np.testing.assert_array_equal(first.ct.array, again.ct.array)
    np.testing.assert_array_equal(first.label.array, again.label.array)
    assert first.lesions == again.lesions and first.phase == again.phase
    assert not np.array_equal(first.ct.array, other.ct.array)


# -- anatomy ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anatomy():
    """One full-size case per phase with its organ map (3 mm slices, 1.5 mm pixels)."""
    return {
        phase: make_phantom(21, (80, 256, 256), (3.0, 1.5, 1.5), phase=phase, organ_map=True, lesion_count=0)
        for phase in PHASES
    }


def organ(phantom, name, erode=1):
    mask = phantom.organs.array == ORGAN_MAP_TISSUES.index(name)
    return ndimage.binary_erosion(mask, iterations=erode) if erode else mask


@pytest.mark.parametrize("phase", PHASES)
def test_each_structure_has_its_phase_value(anatomy, phase):
    phantom, table = anatomy[phase], tissue_table(phase)
    ct = phantom.ct.array
    for name in ("liver", "spleen", "fat", "muscle", "kidney_cortex", "blood", "lung", "bone_cancellous"):
        core = organ(phantom, name, erode=2 if name != "bone_cancellous" else 1)
        assert core.sum() > 50, f"{name} missing in {phase}"
        mean, texture = table[name]
        assert abs(float(np.median(ct[core])) - mean) < 12 + texture / 2, name
    liver_core = organ(phantom, "liver", 2)
    assert 8 < ct[liver_core].std() < 30  # noise and texture, like the real scan's 12.9 HU


def test_contrast_phases_enhance_as_described(anatomy):
    def median(phase, name):
        return float(np.median(anatomy[phase].ct.array[organ(anatomy[phase], name, 2)]))

    assert median("arterial", "blood") > median("portal-venous", "blood") > median("delayed", "blood")
    assert median("arterial", "blood") - median("native", "blood") > 180
    assert median("portal-venous", "liver") - median("native", "liver") > 40
    # native blood and liver as measured on the real non-contrast scan (42 / 47 HU)
    assert abs(median("native", "blood") - 42) < 10 and abs(median("native", "liver") - 47) < 10


def test_liver_is_lobed_with_vessels_inside(anatomy):
    phantom = anatomy["portal-venous"]
    liver = phantom.label.array == 1
    organs = phantom.organs.array
    vessels = np.isin(organs, [ORGAN_MAP_TISSUES.index(n) for n in ("portal_vein", "hepatic_vein")]) & liver
    assert vessels.sum() > 200  # a vessel tree inside the liver mask
    assert (organs[liver] == ORGAN_MAP_TISSUES.index("liver")).mean() > 0.8
    # enhanced vessels are brighter than the parenchyma around them
    core_vessels = ndimage.binary_erosion(vessels)
    assert np.median(phantom.ct.array[core_vessels]) > np.median(phantom.ct.array[organ(phantom, "liver", 2)]) + 30
    # lobes: the left lobe crosses the midline (patient left is +x), the right lobe is larger
    x = np.nonzero(liver.any(axis=(0, 1)))[0]
    centre_x = phantom.ct.shape[2] // 2
    assert x[0] < centre_x - 40 and x[-1] > centre_x
    assert liver[:, :, :centre_x].sum() > 2 * liver[:, :, centre_x:].sum()
    # not an ellipsoid: the liver fills well under its bounding ellipsoid's share (0.52)
    box = ndimage.find_objects(liver.astype(np.uint8))[0]
    assert liver[box].mean() < 0.5


def test_lower_right_lobe_runs_down_the_right_lateral_wall_beside_the_kidney():
    """The option adds a tongue of liver below the lobe's body, on the patient's right, outside the kidney."""
    shape, spacing = (64, 96, 96), (4.0, 4.0, 4.0)
    plain = make_phantom(3, shape, spacing, lesion_count=0, organ_map=True)
    tongue = make_phantom(3, shape, spacing, lesion_count=0, organ_map=True, lower_right_lobe=True)
    before, after = plain.label.array == 1, tongue.label.array == 1
    added = after & ~before
    assert not (before & ~after).any() and added.sum() * plain.ct.grid.voxel_volume_ml > 50
    z_added, _, x_added = np.nonzero(added)
    z_liver = np.nonzero(before)[0]
    assert z_added.min() < z_liver.min()  # reaches lower than the lobe did (z index grows superior)
    assert np.median(z_added) < np.median(z_liver)
    assert np.median(x_added) < shape[2] * 0.3  # patient right (+x is patient left), lateral third
    kidney = np.isin(plain.organs.array, [ORGAN_MAP_TISSUES.index(n) for n in ("kidney_cortex", "kidney_medulla")])
    assert not (added & kidney).any()
    assert (tongue.organs.array[added] == ORGAN_MAP_TISSUES.index("liver")).all()  # painted as liver, not labelled only


def test_phantom_command_writes_the_anatomy_options_and_records_them(tmp_path):
    common = ["phantom", "--cases", "1", "--seed", "3", "--shape", "48", "96", "96", "--spacing", "5", "4", "4"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    options = ["--" + option.replace("_", "-") for option in ANATOMY_OPTIONS]  # every option has its flag
    assert main([*common, "--out", str(tmp_path / "tongue"), *options]) == 0
    manifests = [json.loads((tmp_path / f / "manifest.json").read_text()) for f in ("plain", "tongue")]
    for option in ANATOMY_OPTIONS:
        assert [m[option] for m in manifests] == [False, True]
    plain, tongue = (read_label(tmp_path / f / "segmentation-0.nii").array >= 1 for f in ("plain", "tongue"))
    assert tongue.sum() > plain.sum() and 0 < (plain & ~tongue).sum() < 0.05 * plain.sum()  # tongue added, hilum cut


def test_perihepatic_fat_keeps_the_bowel_off_the_liver_and_changes_nothing_else():
    """Bowel loops near the liver become fat; the liver, its label and the other organs stay as they were."""
    shape, spacing = (64, 128, 128), (4.0, 2.0, 2.0)
    plain = make_phantom(5, shape, spacing, lesion_count=0, organ_map=True, lower_right_lobe=True)
    fat = make_phantom(5, shape, spacing, lesion_count=0, organ_map=True, lower_right_lobe=True, perihepatic_fat=True)
    assert np.array_equal(plain.label.array, fat.label.array)
    liver = plain.label.array >= 1
    near = (ndimage.distance_transform_edt(~liver, sampling=spacing) <= 2.0) & ~liver  # the margin is 2-8 mm
    loops = [ORGAN_MAP_TISSUES.index(n) for n in ("bowel", "gastric_fluid", "bowel_gas")]
    fat_index = ORGAN_MAP_TISSUES.index("fat")
    bowel_before, bowel_after = (np.isin(p.organs.array[near], loops).mean() for p in (plain, fat))
    assert bowel_before > 0.2 and bowel_after < bowel_before / 5
    assert (fat.organs.array[near] == fat_index).mean() > (plain.organs.array[near] == fat_index).mean() + 0.2
    changed = plain.organs.array != fat.organs.array
    assert (fat.organs.array[changed] == fat_index).all()
    assert np.isin(plain.organs.array[changed], loops).all()  # bowel only: the stomach and organs keep theirs
    assert make_phantom(5, shape, spacing, lesion_count=0, perihepatic_fat=True).organs is None


def test_hilar_fat_sheathes_the_portal_vein_where_it_enters_the_liver():
    """Fat around the portal vein is cut out of the liver near the hilum only; the vein stays and is not liver."""
    shape, spacing = (64, 128, 128), (4.0, 2.0, 2.0)
    plain = make_phantom(5, shape, spacing, lesion_count=0, organ_map=True)
    hilar = make_phantom(5, shape, spacing, lesion_count=0, organ_map=True, hilar_fat=True)
    before, after = plain.label.array >= 1, hilar.label.array >= 1
    removed = before & ~after
    assert not (after & ~before).any()
    voxel_ml = plain.ct.grid.voxel_volume_ml
    assert 5 < removed.sum() * voxel_ml < 0.06 * before.sum() * voxel_ml  # a cleft, not a lobe
    fat, vein = ORGAN_MAP_TISSUES.index("fat"), ORGAN_MAP_TISSUES.index("portal_vein")
    assert set(np.unique(hilar.organs.array[removed])) <= {fat, vein}
    assert (hilar.organs.array[removed] == fat).mean() > 0.5 and (hilar.organs.array[removed] == vein).any()
    portal = plain.organs.array == vein
    assert ndimage.distance_transform_edt(~portal, sampling=spacing)[removed].max() <= 7.0 * 1.5 + 6.0
    z_removed = np.nonzero(removed)[0]
    z_liver = np.nonzero(before)[0]
    assert z_removed.max() - z_removed.min() < 0.6 * (z_liver.max() - z_liver.min())  # around the hilum only


def test_livers_vary_between_cases():
    livers = [make_phantom(s, (48, 128, 128), (5.0, 3.0, 3.0), lesion_count=0).label.array == 1 for s in range(4)]
    volumes = [liver.sum() for liver in livers]
    assert max(volumes) > 1.15 * min(volumes)


def test_noise_follows_voxel_size_and_is_correlated():
    coarse = make_phantom(3, (40, 96, 96), (5.0, 3.5, 3.5), lesion_count=0, organ_map=True)
    fine = make_phantom(3, (64, 192, 192), (2.5, 1.5, 1.5), lesion_count=0, organ_map=True)
    air = [p.ct.array[:, :4, :4].astype(float) for p in (coarse, fine)]
    assert 6 < air[0].std() < air[1].std() < 32
    residual = air[1] - air[1].mean()
    neighbours = np.corrcoef(residual[:, :, :-1].ravel(), residual[:, :, 1:].ravel())[0, 1]
    assert 0.05 < neighbours < 0.9  # the point spread correlates neighbouring pixels


# -- lesions -------------------------------------------------------------------------------------------


def lesion_case(kind, phase, diameter, seed=1):
    phantom = make_phantom(seed, (72, 192, 192), (2.5, 1.5, 1.5), phase=phase, kinds=[kind], diameters_mm=[diameter])
    return phantom, phantom.lesion_id.array == phantom.lesions[0].id


def liver_hu(phantom):
    return float(np.median(phantom.ct.array[ndimage.binary_erosion(phantom.label.array == 1, iterations=2)]))


@pytest.mark.parametrize("phase", PHASES)
def test_cysts_are_water_homogeneous_and_sharp(phase):
    phantom, mask = lesion_case("cyst", phase, 30)
    core = ndimage.binary_erosion(mask, iterations=2)
    values = phantom.ct.array[core]
    assert -5 < np.median(values) < 22 and values.std() < 25
    # sharp: one voxel outside the boundary is already close to the liver
    shell = ndimage.binary_dilation(mask, iterations=2) & ~ndimage.binary_dilation(mask)
    assert np.median(phantom.ct.array[shell & (phantom.label.array == 1)]) > liver_hu(phantom) - 30


def test_hemangioma_nodules_are_peripheral_and_fill_in_centripetally():
    filled = {}
    for phase in ("arterial", "portal-venous", "delayed"):
        phantom, mask = lesion_case("hemangioma", phase, 40)
        blood = tissue_table(phase)["blood"][0]
        values = phantom.ct.array[mask].astype(float)
        bright = values > (blood + 45) / 2
        filled[phase] = bright.mean()
        if phase == "arterial":
            # bright nodules lie in the outer half of the lesion, the centre stays dark
            distance = ndimage.distance_transform_edt(mask, sampling=(2.5, 1.5, 1.5))[mask]
            assert bright.sum() > 5
            assert np.median(distance[bright]) < np.median(distance[~bright])
            assert np.median(values[distance > np.percentile(distance, 90)]) < liver_hu(phantom)
    assert filled["arterial"] < filled["portal-venous"] < filled["delayed"]
    assert filled["delayed"] > 0.6


def test_small_hemangiomas_flash_fill():
    phantom, mask = lesion_case("hemangioma", "arterial", 8)
    assert np.median(phantom.ct.array[mask]) > liver_hu(phantom) + 60


def test_metastasis_rim_enhances_around_a_darker_core_and_margin_is_ill_defined():
    phantom, mask = lesion_case("metastasis", "portal-venous", 40)
    distance = ndimage.distance_transform_edt(mask, sampling=(2.5, 1.5, 1.5))
    core = mask & (distance > 0.5 * distance.max())
    rim = mask & (distance <= 2.5)
    ct = phantom.ct.array
    assert np.median(ct[core]) < np.median(ct[rim]) - 10  # target: dark centre, enhancing rim
    assert np.median(ct[core]) < liver_hu(phantom) - 30
    # delayed phase: peripheral washout, the rim ends darker than the centre
    phantom, mask = lesion_case("metastasis", "delayed", 40)
    distance = ndimage.distance_transform_edt(mask, sampling=(2.5, 1.5, 1.5))
    ct = phantom.ct.array
    rim, core = mask & (distance <= 2.5), mask & (distance > 0.5 * distance.max())
    assert np.median(ct[rim]) < np.median(ct[core])
    # ill-defined: the surface is rougher than a cyst's of the same size
    cyst = lesion_case("cyst", "delayed", 40)[1]

    def roughness(m):
        return (m & ~ndimage.binary_erosion(m)).sum() / m.sum() ** (2 / 3)

    assert roughness(mask) > roughness(cyst)


def test_lesion_sizes_span_5_to_80_mm_and_metastases_come_in_several():
    diameters, counts = [], {kind: [] for kind in LESION_CLASSES}
    for seed in range(16):
        phantom = make_phantom(seed, (48, 160, 160), (4.0, 2.0, 2.0))
        diameters += [lesion.diameter_mm for lesion in phantom.lesions]
        for kind in LESION_CLASSES:
            counts[kind].append(sum(lesion.kind == kind for lesion in phantom.lesions))
    low, high = SIZE_RANGES_MM[0][0], SIZE_RANGES_MM[-1][1]
    assert all(low <= d <= high for d in diameters)
    assert min(diameters) < 10.0 and max(diameters) > 30.0
    assert max(counts["metastasis"]) >= 3
    assert all(sum(c) > 0 for c in counts.values())


def test_lesions_are_placed_near_vessels_and_under_the_capsule():
    placements = set()
    for seed in range(6):
        placements |= {lesion.placement for lesion in make_phantom(seed, (48, 160, 160), (4.0, 2.0, 2.0)).lesions}
    assert {"near-vessel", "subcapsular", "parenchyma"} <= placements


# -- synthetic lesions in a real scan ---------------------------------------------------------------------


def test_synthesize_paints_lesions_only_inside_the_real_liver(real_data, tmp_path):
    ct_path = real_data / "totalsegmentator" / "example_ct_sm.nii.gz"
    organs_path = real_data / "totalsegmentator" / "example_ct_sm_totalseg.nii.gz"
    manifest = json.loads(synthesize(ct_path, organs_path, tmp_path, cases=2, seed=4, liver_label=5).read_text())
    source = read_image(ct_path)
    liver = read_image(organs_path).array == 5
    assert len(manifest["cases"]) == 2 and manifest["cases"][0]["phase"] == "native"
    for case in manifest["cases"]:
        ct = read_image(tmp_path / case["volume"])
        assert ct.grid.same_as(source.grid) and ct.array.dtype == source.array.dtype
        label = read_label(tmp_path / case["segmentation"], reference=ct.grid).array
        classes = read_label(tmp_path / case["classes"], allowed=range(4), reference=ct.grid).array
        assert case["lesions"]
        np.testing.assert_array_equal(label > 0, liver)  # the liver mask is the liver label
        np.testing.assert_array_equal(classes > 0, label == 2)  # every lesion voxel has a kind
        changed = ct.array != source.array
        assert changed.any() and not (changed & ~liver).any()  # only liver voxels change
        near = ndimage.binary_dilation(label == 2, iterations=4)
        assert not (changed & ~near).any()  # and only at the lesions
        for lesion in case["lesions"]:
            centre = tuple(np.round(lesion["centre_index_zyx"]).astype(int))
            assert classes[centre] == LESION_CLASSES.index(lesion["kind"]) + 1 or lesion["voxels"] < 30
            # the scan is stored with flipped x and y axes: the LPS centre goes through its own direction
            np.testing.assert_allclose(
                ct.grid.index_to_physical(np.asarray(lesion["centre_index_zyx"])), lesion["centre_lps_mm"], atol=0.01
            )
            component = ndimage.label(label == 2, np.ones((3, 3, 3)))[0]
            assert (component == component[centre]).sum() == lesion["voxels"] or lesion["voxels"] < 30
    assert not np.array_equal(*(read_image(tmp_path / c["volume"]).array for c in manifest["cases"]))


def test_synthesize_refuses_a_mask_without_liver(real_data, tmp_path):
    from livertumor.errors import LiverTumorError

    ct_path = real_data / "totalsegmentator" / "example_ct_sm.nii.gz"
    organs_path = real_data / "totalsegmentator" / "example_ct_sm_totalseg.nii.gz"
    with pytest.raises(LiverTumorError, match="no liver"):
        synthesize(ct_path, organs_path, tmp_path, liver_label=200)


def test_synthesize_command_writes_the_lits_layout(real_data, tmp_path, capsys):
    ct_path = real_data / "totalsegmentator" / "example_ct_sm.nii.gz"
    organs_path = real_data / "totalsegmentator" / "example_ct_sm_totalseg.nii.gz"
    arguments = ["synthesize", "--ct", str(ct_path), "--liver", str(organs_path), "--liver-label", "5"]
    assert main([*arguments, "-o", str(tmp_path), "--cases", "1", "--phase", "portal-venous"]) == 0
    assert "wrote 1 cases" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {
        "volume-0.nii.gz",
        "segmentation-0.nii.gz",
        "classes-0.nii.gz",
        "manifest.json",
    }
    assert json.loads((tmp_path / "manifest.json").read_text())["cases"][0]["phase"] == "portal-venous"
    assert main([*arguments[:-1], "200", "-o", str(tmp_path / "none")]) == 2
    assert "no liver" in capsys.readouterr().err


@pytest.mark.parametrize("sigma", [0.4, 0.6, 1.3])
def test_slab_blur_along_z_equals_scipys(sigma):
    from livertumor.phantom.anatomy import _blur_slices

    volume = np.random.default_rng(0).random((9, 5, 4)).astype(np.float32)
    expected = ndimage.gaussian_filter1d(volume, sigma, axis=0, truncate=3.0, mode="nearest")
    np.testing.assert_allclose(_blur_slices(volume, sigma), expected, atol=1e-6)


def test_radiological_axial_view_puts_the_liver_on_the_image_left_and_the_spine_down(anatomy):
    """The pictures (README, docs) show axial slices as radiologists read them; the phantom's liver lies
    on the patient's right and the spine posterior, whichever way the array is stored."""
    from livertumor.plotting import radiological_axial
    from livertumor.volume import Grid

    phantom = anatomy["portal-venous"]
    label = phantom.label.array
    z = int(np.nonzero((label == 1).any((1, 2)))[0].mean())
    grid = phantom.ct.grid
    view = radiological_axial(label, grid, z)
    _, columns = np.nonzero(view == 1)
    assert columns.mean() < view.shape[1] / 2  # liver: patient's right = image left
    body_rows = np.nonzero((radiological_axial(phantom.ct.array, grid, z) > -500).any(1))[0]
    canal = radiological_axial(phantom.organs.array, grid, z) == ORGAN_MAP_TISSUES.index("csf")
    assert np.nonzero(canal)[0].mean() > (body_rows[0] + body_rows[-1]) / 2  # spine: posterior = image bottom
    # the same patient stored as RAS (x and y flipped) and transposed gives the same picture
    flipped_origin = grid.index_to_physical(np.array([0, grid.shape[1] - 1, grid.shape[2] - 1], float))
    ras = Grid(grid.shape, grid.spacing, tuple(flipped_origin), grid.direction @ np.diag([-1.0, -1.0, 1.0]))
    assert np.array_equal(radiological_axial(label[:, ::-1, ::-1], ras, z), view)
    transposed = Grid(
        (grid.shape[0], grid.shape[2], grid.shape[1]),
        (grid.spacing[1], grid.spacing[0], grid.spacing[2]),
        grid.origin,
        grid.direction[:, [1, 0, 2]],
    )
    assert np.array_equal(radiological_axial(label.transpose(0, 2, 1), transposed, z), view)
    coronal = Grid(grid.shape, grid.spacing, grid.origin, grid.direction[:, [0, 2, 1]])
    with pytest.raises(ValueError, match="no axial slices"):
        radiological_axial(label, coronal, z)


def test_surface_lesions_puts_about_half_of_the_lesions_at_the_liver_edge_and_leaves_the_liver_alone():
    """The option moves lesion centres to the liver's edge (a fifth of them by default, half with it);
    the liver each seed gives stays the same."""
    share, first_liver = {}, {}
    for surface in (False, True):
        placements = []
        for seed in range(10):
            phantom = make_phantom(seed, (48, 96, 96), (5.0, 4.0, 4.0), lesion_count=4, surface_lesions=surface)
            placements += [lesion.placement for lesion in phantom.lesions]
            first_liver.setdefault(surface, phantom.label.array >= 1)
        share[surface] = placements.count("subcapsular") / len(placements)
    assert share[False] < 0.3 and 0.35 < share[True] < 0.7  # measured 0.15 and 0.53 on these seeds
    assert np.array_equal(first_liver[False], first_liver[True])
