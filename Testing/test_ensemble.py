"""Ensembles (``livertumor ensemble``): models trained alike, run as one model whose class probabilities
are their mean, with every member's weights verified as a single model's are."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import run

from livertumor.datasets import find_cases
from livertumor.errors import LiverTumorError
from livertumor.finetune import finetune
from livertumor.inference import segment
from livertumor.io import read_ct
from livertumor.models import (
    ModelChecksumError,
    ModelExistsError,
    combine_models,
    list_models,
    load_model,
    read_card,
    save_model,
)
from livertumor.networks import ProbabilityMean


def perturbed(model: Path, out: Path, seed: int, **card_changes) -> Path:
    """A copy of ``model`` with every weight moved by noise: a member that disagrees with the others."""
    loaded = load_model(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in loaded.networks["tumour"].parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    card = dataclasses.replace(loaded.card, version=f"1.{seed}", **card_changes)
    return save_model(out, loaded.networks, card)


@pytest.fixture(scope="module")
def members(tiny_model, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("members")
    return [tiny_model, perturbed(tiny_model, folder / "b", 1), perturbed(tiny_model, folder / "c", 2)]


def test_an_ensemble_segments_with_the_mean_of_its_members_probabilities(members, tiny_data, tmp_path):
    ensemble = combine_models(members, tmp_path / "ensemble")
    ct = read_ct(tiny_data / "volume-1.nii")
    each = [segment(ct, model=member, device="cpu", probabilities=True) for member in members]
    together = segment(ct, model=ensemble, device="cpu", probabilities=True)
    probabilities = [result.tumour_probability.array for result in each]
    assert np.abs(probabilities[0] - probabilities[1]).max() > 0.05, "the members must disagree for this to test"
    np.testing.assert_allclose(together.tumour_probability.array, np.mean(probabilities, axis=0), atol=1e-5)
    assert together.labels.grid == ct.grid
    assert together.model_name == "tiny-ensemble:1"


def test_the_card_names_each_member_and_every_member_is_verified(members, tmp_path, monkeypatch):
    monkeypatch.setenv("LIVERTUMOR_HOME", str(tmp_path / "home"))
    older = load_model(members[0])
    save_model(
        tmp_path / "home" / "models" / "pair-7",
        older.networks,
        dataclasses.replace(older.card, name="pair", version="7"),
    )
    ensemble = combine_models(members[:2], tmp_path / "ensemble", name="pair")
    card = read_card(ensemble)
    assert (card.name, card.version) == ("pair", "8")  # newer than every registered "pair", so the default one
    assert card.members() == ["tumour", "tumour.2"] and card.method == "three-stage, ensemble of 2"
    listed = card.training_data["ensemble_of"]
    assert [m["model"] for m in listed] == ["tiny:1", "tiny:1.1"] and listed[0]["validation"] == read_card(
        members[0]
    ).validation
    assert card.preprocess == read_card(members[0]).preprocess and card.validation == {}
    loaded = load_model(ensemble)
    assert isinstance(loaded.networks["tumour"], ProbabilityMean) and len(loaded.networks["tumour"].members) == 2
    # the compiled-graph cache key names both members' weights, so it differs from either's
    assert loaded.weights_digest("tumour") not in {e["sha256"] for e in card.weights.values()}
    second = ensemble / "tumour.2.safetensors"
    second.write_bytes(second.read_bytes()[:-8])
    with pytest.raises(ModelChecksumError, match=r"tumour\.2\.safetensors fails its checksum"):
        load_model(ensemble)


def test_an_ensemble_of_ensembles_is_flat(members, tmp_path):
    pair = combine_models(members[:2], tmp_path / "pair")
    three = load_model(combine_models([pair, members[2]], tmp_path / "three"))
    assert three.card.members() == ["tumour", "tumour.2", "tumour.3"]
    assert [type(m).__name__ for m in three.networks["tumour"].members] == ["ResUNet3d"] * 3


def test_what_cannot_be_averaged_is_refused_and_nothing_is_written(members, tiny_model, tmp_path):
    out = tmp_path / "ensemble"
    other_grid = perturbed(
        tiny_model,
        tmp_path / "coarser",
        3,
        preprocess=dataclasses.replace(read_card(tiny_model).preprocess, spacing=(6.0, 6.0, 6.0)),
    )
    refusals = [
        ([members[0]], "two or more models"),
        ([members[0], members[0]], "repeats weights already in the ensemble"),
        ([members[0], other_grid], "differ in their preprocess"),
        ([members[0], "demo-lesions"], "is a lesion model, not a tumour segmentation model"),
    ]
    for models, message in refusals:
        with pytest.raises(LiverTumorError, match=message):
            combine_models(models, out)
        assert not out.exists()
    with pytest.raises(LiverTumorError, match="plain name"):
        combine_models(members[:2], name="../elsewhere")
    out.mkdir()
    with pytest.raises(ModelExistsError):
        combine_models(members[:2], out)
    assert list(out.iterdir()) == []


def test_finetuning_an_ensemble_adapts_each_member_into_a_new_version(tiny_model, tiny_data, tmp_path):
    # members trained with a loss other than the default: fine-tuning must keep their settings
    data = read_card(tiny_model).training_data
    floored = {**data, "settings": {**data["settings"], "loss": "floored-dice"}}
    pair = [perturbed(tiny_model, tmp_path / name, seed, training_data=floored) for name, seed in (("a", 1), ("b", 2))]
    ensemble = combine_models(pair, tmp_path / "ensemble", name="pair")
    parent_files = {path.name: path.read_bytes() for path in ensemble.iterdir()}
    cases = find_cases(tiny_data)
    events = []
    options = {"epochs": 1, "iterations": 2, "device": "cpu", "workers": 0}
    tuned = finetune(ensemble, cases, out=tmp_path / "tuned", on_event=events.append, **options)
    card = read_card(tuned)
    assert card.members() == ["tumour", "tumour.2"] and card.parent == "pair:1" and card.version == "1.1"
    listed = card.training_data["ensemble_of"]
    assert [member["model"] for member in listed] == ["pair:1.1-member1", "pair:1.1-member2"]
    assert all("dg" in member["validation"] and "dg" in member["validation_before"] for member in listed)
    assert [member["settings"]["loss"] for member in listed] == ["floored-dice"] * 2
    assert [member["settings"]["seed"] for member in listed] == [0, 1]  # each its own sampling
    # member i starts from the parent's member i: a short run moves it far less than the members differ
    before, after = load_model(ensemble).networks["tumour"], load_model(tuned).networks["tumour"]
    distance = [
        [
            sum(float((a - b).detach().norm()) for a, b in zip(new.parameters(), old.parameters()))
            for old in before.members
        ]
        for new in after.members
    ]
    assert distance[0][0] > 0 and distance[1][1] > 0
    assert distance[0][0] < distance[0][1] / 10 and distance[1][1] < distance[1][0] / 10
    assert {path.name: path.read_bytes() for path in ensemble.iterdir()} == parent_files
    # progress runs once over both members, and only the combined model is reported as saved
    done = [event["done_iterations"] for event in events if event["event"] == "iteration"]
    totals = {event["total_iterations"] for event in events if event["event"] == "iteration"}
    assert done == sorted(done) and totals == {done[-1]} and len(done) == done[-1]
    assert [event["event"] for event in events if "saved" in event["event"]] == ["member-saved"] * 2 + ["saved"]
    assert events[-1]["model"] == str(tuned)
    # an interrupted run reuses the members it finished; another run's members are refused
    shutil.rmtree(tuned)
    events.clear()
    assert finetune(ensemble, cases, out=tmp_path / "tuned", on_event=events.append, **options) == tuned
    assert not [event for event in events if event["event"] == "iteration"]
    shutil.rmtree(tuned)
    with pytest.raises(LiverTumorError, match="another fine-tuning run; use --restart"):
        finetune(ensemble, cases, out=tmp_path / "tuned", **{**options, "iterations": 3})


def test_ensemble_command_registers_the_new_model(members, tmp_path, monkeypatch):
    monkeypatch.setenv("LIVERTUMOR_HOME", str(tmp_path / "home"))
    result = run("ensemble", *members[:2])
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "home" / "models" / "tiny-ensemble-1"
    assert f"written to {folder}" in result.stdout
    listed = json.loads(run("models", "--json").stdout)
    assert {"name": "tiny-ensemble", "version": "1", "method": "three-stage, ensemble of 2"}.items() <= next(
        entry for entry in listed if entry["name"] == "tiny-ensemble"
    ).items()
    again = run("ensemble", *members[:2])  # the next free version, never the folder that exists
    assert again.returncode == 0 and (tmp_path / "home" / "models" / "tiny-ensemble-2").is_dir()
    assert [e.version for e in list_models() if e.name == "tiny-ensemble"] == ["1", "2"]
    alone = run("ensemble", members[0])
    assert alone.returncode == 2 and "two or more models" in alone.stderr
