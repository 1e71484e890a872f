"""Fine-tuning on one or two corrected cases: a held-out part of each case for validation, the quick
preset, and a measured benefit on a lesion kind the parent model misses."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_cli import run

from livertumor.datasets import Case, find_cases
from livertumor.finetune import held_out_part
from livertumor.io import read_ct, read_label, write_volume
from livertumor.models import read_card


@pytest.fixture
def tumour_case(tiny_data):
    return next(c for c in find_cases(tiny_data) if (read_label(c.label).array == 2).any())


def test_held_out_part_splits_a_case_on_its_own_grid(tumour_case, tmp_path):
    train, held_out, note = held_out_part(tumour_case, tmp_path)
    ct, label = read_ct(tumour_case.image), read_label(tumour_case.label)
    parts = [(read_ct(c.image), read_label(c.label)) for c in (train, held_out)]
    lower, upper = parts if np.allclose(parts[0][0].grid.origin, ct.grid.origin) else parts[::-1]
    # the two parts are the case's slices, each where it was in space
    assert np.array_equal(np.concatenate([lower[0].array, upper[0].array]), ct.array)
    assert np.array_equal(np.concatenate([lower[1].array, upper[1].array]), label.array)
    cut = lower[0].shape[0]
    assert np.allclose(upper[0].grid.origin, ct.grid.index_to_physical(np.array([[cut, 0, 0]]))[0])
    assert np.allclose(upper[0].spacing, ct.spacing) and np.allclose(upper[0].direction, ct.direction)
    # training keeps tumour, the cut runs through a tumour-free slice, the note says what is validated
    assert (read_label(train.label).array == 2).any()
    assert not (label.array[cut] == 2).any()
    assert note.startswith(tumour_case.name) and "held-out slices" in note
    assert ("tumour Dice" in note) == bool((read_label(held_out.label).array == 2).any())


def test_tumour_in_one_slab_stays_in_training_and_validation_counts_false_positives(tumour_case, tmp_path):
    label = read_label(tumour_case.label)
    one_slice = label.array.copy()
    one_slice[one_slice == 2] = 1
    z = label.shape[0] // 2
    one_slice[z, 10:14, 10:14] = 2
    case = Case("thin", tumour_case.image, write_volume(label.with_array(one_slice), tmp_path / "thin_seg.nii"))
    train, held_out, note = held_out_part(case, tmp_path / "parts")
    assert held_out is not None and "false positives only" in note
    assert (read_label(train.label).array == 2).sum() == 16


def test_finetune_one_case_validates_on_its_held_out_part(tiny_model, tumour_case, tmp_path):
    data = tmp_path / "one"
    data.mkdir()
    shutil.copy(tumour_case.image, data / "case.nii")
    shutil.copy(tumour_case.label, data / "case_seg.nii")
    options = ["--iterations", 1, "--out", tmp_path / "m", "--preset", "quick"]
    result = run("finetune", "--model", tiny_model, "--data", data, *options)
    assert result.returncode == 0, result.stderr
    assert "validation: case: validated on held-out slices" in result.stderr
    card = read_card(tmp_path / "m")
    assert card.training_data["train_cases"] == ["case-train"]
    assert card.training_data["validation_cases"] == ["case-held-out"]
    assert card.training_data["validation_note"].startswith("case: validated on held-out slices")
    assert set(card.validation_before) >= {"dg"} and "dg" in card.validation
    settings = card.training_data["settings"]
    assert settings["tumour_fraction"] == 0.5 and settings["region_fraction"] == 1.0  # around lesions and liver
    assert [s["epochs"] for s in card.stages] == [4, 1, 3]
    # the user's files are untouched; the parts live in the run's work folder
    assert sorted(p.name for p in data.iterdir()) == ["case.nii", "case_seg.nii"]
    assert (tmp_path / "m.work" / "held-out" / "case-held-out.nrrd").is_file()
    unknown = run("finetune", "--model", tiny_model, "--data", data, "--preset", "slow", "--out", tmp_path / "x")
    assert unknown.returncode == 2 and "invalid choice: 'slow'" in unknown.stderr
    assert json.loads((tmp_path / "m" / "card.json").read_text())["parent"] == "tiny:1"


def test_finetuned_demo_model_keeps_its_post_processing(tumour_case, tmp_path):
    """The parent's card decides tumour-in-liver post-processing; its fine-tuned version must keep it (in
    validation and in the new card), or the user's new model marks tumour outside the liver."""
    from livertumor.models import load_model

    parent = load_model(None).card
    assert parent.tumour_in_liver
    data = tmp_path / "one"
    data.mkdir()
    shutil.copy(tumour_case.image, data / "case.nii")
    shutil.copy(tumour_case.label, data / "case_seg.nii")
    options = ["--epochs", 1, "--iterations", 1, "--workers", 0, "--device", "cpu", "--out", tmp_path / "m"]
    result = run("finetune", "--data", data, *options)
    assert result.returncode == 0, result.stderr
    card = read_card(tmp_path / "m")
    assert card.tumour_in_liver and card.training_data["settings"]["tumour_in_liver"]
    # the quick preset's own schedule, not the poly one the demo model's last run used
    assert card.training_data["settings"]["lr_schedule"] == "step"
    assert card.parent == f"{parent.name}:{parent.version}" and card.version == f"{parent.version}.1"
