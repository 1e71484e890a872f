"""The demo model shipped in Resources/Models: registered, verified, honest card, runs on the CT grid."""

from __future__ import annotations

import json
import shutil

import pytest

from livertumor.inference import segment
from livertumor.models import (
    DEFAULT_MODEL,
    ModelChecksumError,
    list_models,
    load_model,
    shipped_models_dir,
)
from livertumor.phantom import make_phantom
from livertumor.training import SCHEMAS


def test_demo_model_is_registered_and_loads_by_default():
    shipped = [e for e in list_models() if e.source == "shipped"]
    assert DEFAULT_MODEL in {e.name for e in shipped}
    model = load_model(None)
    card = model.card
    assert card.name == DEFAULT_MODEL and card.schema in SCHEMAS
    assert "phantom" in card.notes.lower() and "not for" in card.intended_use.lower()
    assert {"dg", "dc", "small_recall"} <= set(card.validation)
    assert card.weights, "the card lists its weight files"
    for entry in card.weights.values():
        assert (shipped_models_dir() / DEFAULT_MODEL / entry["file"]).stat().st_size < 8 * 2**20


def test_demo_model_segments_onto_the_input_grid():
    phantom = make_phantom(11, (48, 96, 96), (3.0, 3.0, 3.0), lesion_count=2)
    result = segment(phantom.ct, device="cpu")
    assert result.labels.grid == phantom.ct.grid and result.model_name.startswith(f"{DEFAULT_MODEL}:")


def test_edited_shipped_card_fails_the_manifest(tmp_path, monkeypatch):
    resources = tmp_path / "Resources"
    shutil.copytree(shipped_models_dir(), resources / "Models")
    monkeypatch.setenv("LIVERTUMOR_RESOURCES", str(resources))
    card_path = resources / "Models" / DEFAULT_MODEL / "card.json"
    card = json.loads(card_path.read_text())
    card["validation"]["dg"] = 0.99  # a flattering edit
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelChecksumError, match="differs from the shipped manifest"):
        load_model(None)


def test_demo_classifier_is_registered_honest_and_classifies_by_default():
    from livertumor.lesions.classify import classify_lesions
    from livertumor.lesions.model import DEFAULT_LESION_MODEL, load_lesion_model

    shipped = {e.name: e for e in list_models() if e.source == "shipped"}
    assert shipped[DEFAULT_LESION_MODEL].kind == "lesion"
    card = load_lesion_model(None).card
    assert card.framework == "joint" and "phantom" in card.notes.lower() and "not for" in card.intended_use.lower()
    assert {"accuracy", "dice", "recall", "confusion"} <= set(card.validation)
    phantom = make_phantom(5, (48, 128, 128), (3.0, 1.6, 1.6), lesion_count=2)
    results = classify_lesions(phantom.ct, phantom.label, device="cpu")  # liver from the 0/1/2 map
    assert len(results) >= 1 and all(r.lesion_class in card.classes for r in results)
