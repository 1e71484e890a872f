"""Lesion slices, the four frameworks' training and evaluation, transfer initialisations, cross-validation
by patient, per-lesion classification of a 3D CT, the lesion CLI, and their bad-input messages."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_cli import run

from livertumor.errors import DatasetError, GridMismatchError, LabelValueError, LiverTumorError
from livertumor.io import read_ct, read_label, write_volume
from livertumor.lesions.classify import classify_lesions
from livertumor.lesions.data import (
    SliceSet,
    class_map_path,
    lesion_components,
    lesion_square,
    liver_square,
    load_lesion_dataset,
)
from livertumor.lesions.model import FRAMEWORKS, JOINT_OFFSET, SliceConfig, build_network, load_lesion_model
from livertumor.lesions.networks import SEResNetConfig
from livertumor.lesions.training import (
    LesionTrainConfig,
    cross_validate,
    evaluate,
    fit,
    initialise,
    patient_folds,
    train_lesion_model,
)
from livertumor.models import ModelChecksumError, ModelExistsError, save_model
from livertumor.phantom import LESION_CLASSES, write_phantom_dataset
from livertumor.volume import Volume

SMALL_ENCODER = SEResNetConfig(widths=(8, 16, 32, 64), stem_width=8, blocks=(1, 1, 1, 1))
SLICES = SliceConfig(size=96)


@pytest.fixture(scope="module")
def lesion_data(tmp_path_factory):
    """Fifteen phantom patients (every 5th lesion-free), one lesion kind each in turn, with class maps,
    1.6 mm in-plane, in the portal venous phase (lesion characterisation needs contrast)."""
    out = tmp_path_factory.mktemp("lesion-data")
    write_phantom_dataset(
        out,
        cases=15,
        seed=11,
        shape=(48, 128, 128),
        spacing_zyx=(3.0, 1.6, 1.6),
        phases=["portal-venous"],
        kinds=LESION_CLASSES,
    )
    return out


@pytest.fixture(scope="module")
def slices(lesion_data) -> SliceSet:
    return load_lesion_dataset(lesion_data, SLICES)


def test_slices_follow_the_manifest(lesion_data, slices):
    manifest = json.loads((lesion_data / "manifest.json").read_text())
    kinds = {}
    for number, case in enumerate(manifest["cases"]):
        for lesion in case["lesions"]:
            kinds.setdefault(f"case-{number}", []).append(lesion["kind"])
    assert slices.images.shape[1:] == (96, 96) and slices.images.dtype == np.float32
    assert 0.0 <= slices.images.min() and slices.images.max() <= 1.0
    for index in range(len(slices)):
        case = slices.lesions[index].split("/")[0]
        # the sample's class is one of that patient's drawn lesion kinds; its own lesion is in the crop
        assert LESION_CLASSES[slices.labels[index]] in kinds[case]
        assert slices.lesion[index].any()
        assert not (slices.lesion[index] & (slices.any_lesion[index] == 0)).any()
        own = slices.lesion[index].astype(bool)
        assert (slices.joint[index][own] >= JOINT_OFFSET).all()
    assert set(np.unique(slices.joint)) <= set(range(JOINT_OFFSET + len(LESION_CLASSES)))
    # each lesion's size: its equivalent-sphere diameter, near the drawn one (5-80 mm, ellipsoids ±15 %)
    drawn = {f"case-{n}": [le["diameter_mm"] for le in c["lesions"]] for n, c in enumerate(manifest["cases"])}
    for index in range(len(slices)):
        case = slices.lesions[index].split("/")[0]
        assert min(drawn[case]) * 0.6 <= slices.diameters_mm[index] <= max(drawn[case]) * 1.3
    # neighbours: at most three slices per lesion, each lesion's planes consecutive
    for lesion in set(slices.lesions):
        planes = sorted(slices.planes[[i for i, key in enumerate(slices.lesions) if key == lesion]])
        assert 1 <= len(planes) <= 3 and planes == list(range(planes[0], planes[0] + len(planes)))


def test_liver_square_is_square_in_mm():
    liver = np.zeros((4, 60, 80), bool)
    liver[1:3, 10:30, 20:70] = True  # 20 x 50 voxels
    y0, y1, x0, x1 = liver_square(liver, (5.0, 2.0, 1.0), margin_mm=5.0)
    assert (y1 - y0) * 2.0 == pytest.approx((x1 - x0) * 1.0, abs=2.0)
    assert (x1 - x0) * 1.0 == pytest.approx(50 + 10, abs=1.0)
    assert y0 < 10 and y1 > 30  # the square reaches outside the liver's short side


def test_lesion_crops_are_centred_on_each_lesion_at_a_fixed_scale(lesion_data):
    """``crop="lesion"``: every sample's own lesion sits at the crop's centre, drawn at field_mm / size mm
    per pixel whatever the liver's size (the lesion's area in mm² is kept)."""
    config = SliceConfig(size=64, crop="lesion", field_mm=64.0)
    lesion_slices = load_lesion_dataset(lesion_data, config)
    assert len(set(lesion_slices.lesions)) == len(set(load_lesion_dataset(lesion_data, SLICES).lesions))
    case = next(c for c in sorted(lesion_data.glob("volume-*")) if c.name != "volume-0.nii")
    ct = read_ct(case)
    label = read_label(case.with_name(case.name.replace("volume", "segmentation")), reference=ct.grid).array
    ids, _ = lesion_components(label == 2)
    pixel_mm2 = float(np.prod(ct.grid.spacing_zyx[1:]))
    compared = 0
    for index in range(len(lesion_slices)):
        own = lesion_slices.lesion[index].astype(bool)
        rows, columns = np.nonzero(own)
        assert abs(rows.mean() - 31.5) <= 2.5 and abs(columns.mean() - 31.5) <= 2.5
        name, number = lesion_slices.lesions[index].split("/")
        if name == case.name.split(".")[0].replace("volume", "case"):
            source_mm2 = (ids[lesion_slices.planes[index]] == int(number)).sum() * pixel_mm2
            if source_mm2 > 100:  # 1 mm pixels: small lesions' areas are dominated by edge rounding
                assert own.sum() == pytest.approx(source_mm2, rel=0.2)
                compared += 1
    assert compared
    box = lesion_square(ids == 1, (3.0, 2.0, 0.5), field_mm=40.0)
    assert (box[1] - box[0], box[3] - box[2]) == (20, 80)
    with pytest.raises(ValueError, match="crop must be one of liver, lesion"):
        SliceConfig(crop="organ")


def test_folds_split_by_patient(slices):
    folds = patient_folds(slices.patients, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(slices)))
    owners = [{slices.patients[i] for i in fold} for fold in folds]
    assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_each_framework_trains_and_evaluates(framework, slices):
    config = LesionTrainConfig(framework=framework, encoder=SMALL_ENCODER, slices=SLICES, epochs=1, device="cpu")
    network = build_network(framework, SMALL_ENCODER, 3)
    before = [p.detach().clone() for p in network.parameters()]
    subset = slices.subset(range(12))
    log = fit(network, subset, config)
    assert np.isfinite(log[0]["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters()))
    result = evaluate(network, framework, subset)
    assert ("accuracy" in result) == (framework != "seg")
    assert ("dice" in result) == (framework != "cls")
    if "confusion" in result:
        assert np.sum(result["slice_confusion"]) == 12
        assert np.sum(result["confusion"]) == result["lesions"] == len(set(subset.lesions))
        by_size = result.get("lesions_10mm_up", 0) + result.get("lesions_under_10mm", 0)
        assert by_size == result["lesions"]


def test_joint_training_fits_and_finds_lesions_in_other_patients(slices):
    """Trained on two thirds of the patients it fits their lesion kinds, and it finds lesions in the other
    patients. (How well it classifies them is measured in benchmarks/lesions.py, on more data.)

    The held-out recall of one initialisation depends on the cores' arithmetic: on AMD EPYC cores with
    AVX-512 the three initialisations here gave 0.50, 0.64 and 0.74 (0.46-0.72 after 90 epochs), so their
    mean is what is held to the bar."""
    held_out = patient_folds(slices.patients, 3, seed=0)[0]
    train = np.setdiff1d(np.arange(len(slices)), held_out)
    config = LesionTrainConfig(framework="joint", encoder=SMALL_ENCODER, slices=SLICES, epochs=60, device="cpu")
    recalls = []
    for initialisation in range(3):
        torch.manual_seed(initialisation)  # the weights' initialisation, independent of the tests run before
        network = build_network("joint", SMALL_ENCODER, 3)
        fit(network, slices.subset(train), config)
        fitted = evaluate(network, "joint", slices.subset(train))
        assert fitted["slice_accuracy"] >= 0.8 and fitted["dice"] > 0.2, fitted
        recalls.append(evaluate(network, "joint", slices.subset(held_out))["recall"])
    assert np.mean(recalls) > 0.5, recalls


def test_imagenet_style_file_initialises_the_encoder(tmp_path):
    """A timm-named state dict (RGB stem) loads into the encoder; a misfit file is refused by name."""
    source = build_network("cls", SEResNetConfig(**{**SMALL_ENCODER.to_dict(), "in_channels": 3}), 1000)
    state = {k.replace("encoder.", ""): v for k, v in source.state_dict().items()}
    path = tmp_path / "seresnet.safetensors"
    save_file(state, str(path))
    network = build_network("joint", SMALL_ENCODER, 3)
    assert "encoder" in initialise(network, f"imagenet:{path}")
    assert torch.allclose(network.encoder.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(network.encoder.layer2[0].se.fc1.weight, state["layer2.0.se.fc1.weight"])
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(LiverTumorError, match="does not fit the SE-ResNet encoder"):
        initialise(network, f"imagenet:{tmp_path / 'wrong.pth'}")
    with pytest.raises(LiverTumorError, match="unknown initialisation"):
        initialise(network, "pretrained")


def test_lits_pretraining_then_fine_tuning(lesion_data, tmp_path):
    """The seg framework trains on LiTS-layout data without class maps; its weights start a joint model."""
    lits = tmp_path / "lits"
    shutil.copytree(lesion_data, lits)
    for path in lits.glob("classes-*"):
        path.unlink()
    config = LesionTrainConfig(framework="seg", encoder=SMALL_ENCODER, slices=SliceConfig(size=64), epochs=1)
    train_lesion_model(lits, config, tmp_path / "pre", folds=0, name="pre")
    with pytest.raises(DatasetError, match="no class map"):
        load_lesion_dataset(lits, SliceConfig(size=64), need_classes=True)
    network = build_network("joint", SMALL_ENCODER, 3)
    summary = initialise(network, f"lits:{tmp_path / 'pre'}")
    pre = load_lesion_model(tmp_path / "pre").network.state_dict()
    assert torch.equal(network.state_dict()["encoder.layer4.0.conv1.weight"], pre["encoder.layer4.0.conv1.weight"])
    # the head differs in shape (5 joint classes vs 2) and keeps its own initialisation
    assert network.state_dict()["segmentation_head.weight"].shape[0] == 5
    assert "weights from lesion model" in summary


def test_cross_validation_and_model_files(slices, lesion_data, tmp_path):
    config = LesionTrainConfig(framework="ynet", encoder=SMALL_ENCODER, slices=SliceConfig(size=64), epochs=1)
    first_patients = [i for i, p in enumerate(slices.patients) if p in sorted(set(slices.patients))[:4]]
    result = cross_validate(slices.subset(first_patients[:40]), config, folds=3)
    assert len(result["folds"]) == 3 and {"accuracy", "dice", "recall", "confusion"} <= set(result)
    card = train_lesion_model(lesion_data, config, tmp_path / "m", folds=0, name="m")
    assert card.framework == "ynet" and card.training_data["patients"] == 12
    loaded = load_lesion_model(tmp_path / "m")
    assert loaded.card.slices.size == 64
    with pytest.raises(ModelExistsError, match="never overwritten"):
        train_lesion_model(lesion_data, config, tmp_path / "m", folds=0)
    weights = tmp_path / "m" / "lesion.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ModelChecksumError, match="fails its checksum"):
        load_lesion_model(tmp_path / "m")


def test_unknown_class_name_and_stray_values(lesion_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(lesion_data, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["classes"]["2"] = "adenoma"
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"unknown lesion class name 'adenoma'.*known classes: cyst"):
        load_lesion_dataset(data, SLICES)
    manifest["classes"] = {"1": "cyst", "2": "hemangioma"}
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LabelValueError, match=r"class values \[3\]"):
        load_lesion_dataset(data, SLICES)


@pytest.fixture(scope="module")
def joint_model(slices, tmp_path_factory):
    """A small joint model trained on every lesion slice (weak but real)."""
    out = tmp_path_factory.mktemp("lesion-models") / "joint"
    config = LesionTrainConfig(framework="joint", encoder=SMALL_ENCODER, slices=SLICES, epochs=3, device="cpu")
    network = build_network("joint", SMALL_ENCODER, 3)
    fit(network, slices, config)
    from livertumor.lesions.model import LesionModelCard

    card = LesionModelCard("joint", "1", "joint", SMALL_ENCODER, SLICES)
    save_model(out, {"lesion": network}, card)
    return out


def test_classify_lesions_of_a_ct(lesion_data, joint_model):
    case = next(c for c in sorted(lesion_data.glob("volume-*")) if c.name != "volume-0.nii")
    ct = read_ct(case)
    label = read_label(case.with_name(case.name.replace("volume", "segmentation")), reference=ct.grid)
    import livertumor

    results = livertumor.classify_lesions(ct, label, model=joint_model, device="cpu")
    _, count = lesion_components(label.array == 2)
    assert [r.id for r in results] == list(range(1, count + 1))
    for result in results:
        assert result.lesion_class in LESION_CLASSES
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-3)
        assert 1 <= len(result.slice_votes) <= 3 and result.measurement.volume_ml > 0
    # a mask-only lesion input needs the liver from somewhere else
    only_tumour = label.with_array((label.array == 2).astype(np.uint8))
    with pytest.raises(LiverTumorError, match="no liver mask"):
        classify_lesions(ct, only_tumour, model=joint_model, device="cpu")
    liver = label.with_array((label.array >= 1).astype(np.uint8))
    again = classify_lesions(ct, only_tumour, model=joint_model, liver=liver, device="cpu")
    assert [r.lesion_class for r in again] == [r.lesion_class for r in results]


def test_a_lesion_crop_model_classifies_a_bare_lesion_mask_without_a_liver(lesion_data, tmp_path):
    from livertumor.lesions.model import LesionModelCard

    config = SliceConfig(size=64, crop="lesion", field_mm=64.0)
    network = build_network("joint", SMALL_ENCODER, 3)
    fit(
        network,
        load_lesion_dataset(lesion_data, config),
        LesionTrainConfig(encoder=SMALL_ENCODER, slices=config, epochs=1),
    )
    save_model(tmp_path / "m", {"lesion": network}, LesionModelCard("m", "1", "joint", SMALL_ENCODER, config))
    assert load_lesion_model(tmp_path / "m").card.slices.crop == "lesion"  # the crop travels in the card
    case = next(c for c in sorted(lesion_data.glob("volume-*")) if c.name != "volume-0.nii")
    ct = read_ct(case)
    label = read_label(case.with_name(case.name.replace("volume", "segmentation")), reference=ct.grid)
    only_tumour = label.with_array((label.array == 2).astype(np.uint8))
    results = classify_lesions(ct, only_tumour, model=tmp_path / "m", device="cpu")  # no liver anywhere
    assert len(results) == lesion_components(label.array == 2)[1] and all(r.slice_votes for r in results)


def test_classify_bad_input(lesion_data, joint_model):
    ct = read_ct(lesion_data / "volume-1.nii")
    label = read_label(lesion_data / "segmentation-1.nii", reference=ct.grid)
    # a lesion-free map is no error: there is nothing to classify
    assert classify_lesions(ct, label.with_array(np.zeros_like(label.array)), model=joint_model, device="cpu") == []
    shifted = _moved(label, (5.0, 0.0, 0.0))
    with pytest.raises(GridMismatchError):
        classify_lesions(ct, shifted, model=joint_model, device="cpu")


def _classify_cli(data, model, report, lesions="segmentation-1.nii"):
    return run("classify", data / "volume-1.nii", "--lesions", data / lesions, "--model", model, "-o", report)


def test_cli_classify_and_train_lesions(lesion_data, joint_model, tmp_path):
    report = tmp_path / "report.json"
    result = _classify_cli(lesion_data, joint_model, report)
    assert result.returncode == 0, result.stderr
    lesions = json.loads(report.read_text())["lesions"]
    keys = {"id", "class", "probabilities", "volume_ml", "longest_axial_diameter_mm", "centroid_lps_mm"}
    assert lesions and keys <= set(lesions[0])
    again = _classify_cli(lesion_data, joint_model, report)
    assert again.returncode == 2 and "exists" in again.stderr
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"encoder": SMALL_ENCODER.to_dict(), "slices": {"size": 64}, "device": "cpu"}))
    trained = run(
        "train-lesions",
        "--data",
        lesion_data,
        "--framework",
        "seg",
        "--folds",
        "0",
        "--epochs",
        "1",
        "--config",
        config,
        "--out",
        tmp_path / "seg",
        "--progress",
        "none",
    )
    assert trained.returncode == 0, trained.stderr
    card = json.loads((tmp_path / "seg" / "card.json").read_text())
    assert card["format"] == "livertumor-lesion-model/1" and card["framework"] == "seg"
    seg_only = _classify_cli(lesion_data, tmp_path / "seg", tmp_path / "r2.json")
    assert seg_only.returncode == 2 and "cannot classify" in seg_only.stderr
    assert not (tmp_path / "r2.json").exists()


def test_lesion_mask_file_on_another_grid_is_refused_by_the_cli(lesion_data, joint_model, tmp_path):
    label = read_label(lesion_data / "segmentation-1.nii")
    write_volume(_moved(label, (0.0, 0.0, 9.0)), tmp_path / "moved.nii.gz")
    result = _classify_cli(lesion_data, joint_model, tmp_path / "r.json", lesions=tmp_path / "moved.nii.gz")
    assert result.returncode == 2 and "grid" in result.stderr.lower()
    assert not (tmp_path / "r.json").exists()


def _moved(volume: Volume, shift_mm) -> Volume:
    return Volume(volume.array, dataclasses.replace(volume.grid, origin=tuple(np.add(volume.grid.origin, shift_mm))))


def test_class_maps_are_found_beside_label_maps(tmp_path):
    from livertumor.datasets import find_cases

    for name in ("a.nii.gz", "a_seg.nii.gz", "a_classes.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    (case,) = find_cases(tmp_path)
    assert class_map_path(case) == tmp_path / "a_classes.nii.gz"
    (tmp_path / "a_classes.nii.gz").unlink()
    assert class_map_path(case) is None


def test_liver_box_from_the_cards_liver_model(lesion_data, tiny_data, slices, tmp_path):
    """A lesion mask without liver: the liver comes from running the segmentation model the lesion
    model's card names (a three-class curriculum network trained here)."""
    from conftest import TINY_SETTINGS

    from livertumor.datasets import find_cases
    from livertumor.lesions.model import LesionModelCard
    from livertumor.training import TrainConfig, split_cases, train_model

    settings = json.loads(json.dumps(TINY_SETTINGS))
    settings["architecture"]["classes"] = 3
    settings["stage_epochs"], settings["iterations_per_epoch"] = [2, 1, 2], 4
    train, validation = split_cases(find_cases(tiny_data), 0.4, 0)
    train_model(train, validation, TrainConfig.from_json(settings), tmp_path / "liver-model", name="liver")
    network = build_network("joint", SMALL_ENCODER, 3)
    card = LesionModelCard("with-liver", "1", "joint", SMALL_ENCODER, SLICES, liver_model=str(tmp_path / "liver-model"))
    save_model(tmp_path / "lesions", {"lesion": network}, card)
    ct = read_ct(lesion_data / "volume-1.nii")
    label = read_label(lesion_data / "segmentation-1.nii", reference=ct.grid)
    only_tumour = label.with_array((label.array == 2).astype(np.uint8))
    results = classify_lesions(ct, only_tumour, model=tmp_path / "lesions", device="cpu")
    assert [r.id for r in results] == list(range(1, lesion_components(label.array == 2)[1] + 1))
