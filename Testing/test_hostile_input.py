"""Hostile and careless input: model cards that lie, CTs with NaN, outputs that would replace inputs.
Each case ends in one line on stderr and exit 2 (or a library error), with nothing outside the output
folder changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
from test_cli import run

from livertumor.errors import LiverTumorError
from livertumor.models import ModelFileError, import_model, read_card

CT = "totalsegmentator/example_ct.nii.gz"


def _tree_digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _card_variant(tiny_model, tmp_path, name: str, change) -> object:
    folder = shutil.copytree(tiny_model, tmp_path / name)
    card = json.loads((folder / "card.json").read_text())
    card = change(card)
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def _set(path: str, value):
    def change(card):
        target = card
        *parents, key = path.split(".")
        for parent in parents:
            target = target[parent]
        target[key] = value
        return card

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("architecture.widths", [4, 8, 1_000_000]), "widths = 1000000 must be a whole number in 1..1024"),
        (_set("architecture.in_channels", 1_000_000_000), "in_channels"),
        (_set("architecture.encoder_blocks", [100000, 1]), "encoder_blocks"),
        (_set("preprocess.window_width", 0), "window_width = 0"),
        (_set("preprocess.window_width", float("nan")), "window_width = nan"),
        (_set("preprocess.spacing", [0, 2.5, 2.5]), "spacing = 0"),
        (_set("preprocess.block", [0, 64, 64]), "block = 0"),
        (_set("preprocess.block", [32, 64]), "three numbers"),
        (lambda card: [card], "holds a JSON list"),
        (_set("name", "../../../ESCAPED"), "must be a plain name"),
        (_set("weights.tumour.file", "../victim-1/tumour.safetensors"), "a file inside the folder"),
        (_set("weights.tumour.file", "/etc/passwd"), "a file inside the folder"),
    ],
)
def test_lying_cards_are_refused_before_anything_is_built(tiny_model, tmp_path, real_data, change, message):
    folder = _card_variant(tiny_model, tmp_path, "lying", change)
    with pytest.raises(LiverTumorError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_card(folder)
    result = run("segment", real_data / CT, "-o", tmp_path / "out", "--model", folder)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr


def test_import_stays_inside_the_user_models_folder(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("LIVERTUMOR_HOME", str(tmp_path / "home"))
    victim = import_model(tiny_model)
    before = _tree_digest(tmp_path / "home")
    escaping = _card_variant(tiny_model, tmp_path, "escape", _set("name", "../../../ESCAPED"))
    with pytest.raises(ModelFileError, match="plain name"):
        import_model(escaping)
    overwriting = _card_variant(
        tiny_model, tmp_path, "overwrite", _set("weights.tumour.file", f"../{victim.name}/tumour.safetensors")
    )
    with pytest.raises(ModelFileError, match="inside the folder"):
        import_model(overwriting)
    assert _tree_digest(tmp_path / "home") == before
    assert not any(tmp_path.glob("**/ESCAPED*"))


def test_saved_weights_are_reproducible_and_readable_by_others(tmp_path):
    import torch

    from livertumor.models import ModelCard, save_model
    from livertumor.networks import TINY, ResUNet3d
    from livertumor.preprocess import PreprocessConfig

    torch.manual_seed(0)
    network = ResUNet3d(TINY)
    digests = set()
    for copy in range(4):
        card = ModelCard("same", "1", TINY, PreprocessConfig(), "three-stage")
        folder = save_model(tmp_path / f"m{copy}", {"tumour": network}, card)
        digests.add(card.weights["tumour"]["sha256"])
        umask = os.umask(0)
        os.umask(umask)
        assert (folder / "tumour.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert len(digests) == 1


def _one_line_refusal(result, message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_outputs_never_replace_inputs(tiny_data, tmp_path):
    pred, truth = tiny_data / "segmentation-0.nii", tiny_data / "segmentation-1.nii"
    ct = tiny_data / "volume-0.nii"
    before = _tree_digest(tiny_data)
    _one_line_refusal(run("evaluate", "--pred", pred, "--gt", truth, "--json", truth), "is an input of this run")
    _one_line_refusal(run("evaluate", "--pred", pred, "--gt", truth, "--csv", pred), "is an input of this run")
    linked = tmp_path / "link.nii"
    linked.symlink_to(ct)
    for output in (ct, linked):
        result = run("classify", ct, "--lesions", truth, "-o", output, "--overwrite")
        _one_line_refusal(result, "is an input of this run")
    assert _tree_digest(tiny_data) == before


def test_two_inputs_bound_for_one_output_are_refused_before_any_work(tiny_model, tiny_data, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(tiny_data / "volume-0.nii", tmp_path / folder / "ct.nii")
    shutil.copy(tiny_data / "volume-0.nii", tmp_path / "a" / "case.nii")
    out = tmp_path / "out"
    result = run("segment", tmp_path / "a/ct.nii", tmp_path / "b/ct.nii", "-o", out, "--model", tiny_model)
    _one_line_refusal(result, "would both be written to")
    assert not out.exists()


def test_filled_folders_need_overwrite(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ("phantom", "--out", out, "--cases", 1, "--shape", 24, 48, 48, "--spacing", 5, 6, 6)
    _one_line_refusal(run(*args), "is not empty; pass --overwrite")
    assert run(*args, "--overwrite").returncode == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "manifest.json").is_file()


def test_a_second_run_into_a_busy_folder_refuses_at_once_and_a_dead_runs_lock_is_taken_over(
    tiny_model, tiny_data, tmp_path
):
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    (out / ".livertumor.lock").write_text(str(os.getpid()))  # a live process holds it
    args = ("segment", tiny_data / "volume-0.nii", "-o", out, "--model", tiny_model, "--device", "cpu")
    _one_line_refusal(run(*args), f"another livertumor run (process {os.getpid()})")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".livertumor.lock").write_text(dead.stdout.strip())
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert (out / "volume-0_seg.nii.gz").is_file() and not (out / ".livertumor.lock").exists()


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_a_ct_with_nan_is_refused_by_segment(tiny_model, tiny_data, tmp_path, suffix):
    import numpy as np

    from livertumor.io import read_ct, write_volume

    ct = read_ct(tiny_data / "volume-0.nii")
    ct.array[3, 4, 5] = np.nan
    write_volume(ct, tmp_path / f"nan{suffix}")
    result = run("segment", tmp_path / f"nan{suffix}", "-o", tmp_path / "out", "--model", tiny_model)
    _one_line_refusal(result, "NaN or infinite")
