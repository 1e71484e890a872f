"""The training, fine-tuning, segmentation and demo commands as a user runs them."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SETTINGS
from test_cli import run

from livertumor.io import read_ct, read_label, write_volume
from livertumor.models import read_card


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_train_command_writes_model_log_and_plots(tiny_data, tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps(TINY_SETTINGS))
    result = run(
        "train",
        "--data",
        tiny_data,
        "--schema",
        "whole-to-patch",
        "--config",
        tmp_path / "settings.json",
        "--stage-epochs",
        1,
        1,
        "--out",
        tmp_path / "model",
        "--progress",
        "json",
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {e["event"] for e in events} >= {"preparing", "plan", "iteration", "epoch", "saved"}
    plan = next(e for e in events if e["event"] == "plan")
    assert [(s["kind"], s["epochs"]) for s in plan["stages"]] == [("whole", 1), ("patch", 1)]
    steps = [e for e in events if e["event"] == "iteration"]
    assert [e["done_iterations"] for e in steps] == list(range(1, plan["total_iterations"] + 1))
    assert steps[-1]["eta_s"] == 0 and all(e["eta_s"] >= 0 for e in steps)
    card = read_card(tmp_path / "model")
    assert card.schema == "whole-to-patch" and [s["kind"] for s in card.stages] == ["whole", "patch"]
    work = tmp_path / "model.work"
    assert (work / "tumour-log.csv").read_text().count("\n") == 3  # header + one row per epoch
    assert (work / "loss.png").exists() and (work / "dice.png").exists()
    again = run("train", "--data", tiny_data, "--config", tmp_path / "settings.json", "--out", tmp_path / "model")
    assert again.returncode == 2 and "never overwritten" in again.stderr
    shown = run(
        "train",
        "--data",
        tiny_data,
        "--config",
        tmp_path / "settings.json",
        "--stage-epochs",
        1,
        1,
        1,
        "--average-epochs",
        2,
        "--keep-epochs",
        1,
        "--out",
        tmp_path / "model2",
    )
    assert shown.returncode == 0, shown.stderr
    assert "tumour plan: stage 1 whole: 1 epochs x 2 iterations" in shown.stderr and "left" in shown.stderr
    assert read_card(tmp_path / "model2").training_data["settings"]["average_epochs"] == 2
    kept = sorted(path.name for path in (tmp_path / "model2.work").glob("tumour-epoch-*"))
    assert kept == ["tumour-epoch-002.safetensors", "tumour-epoch-003.safetensors"]  # the averaged two


def test_train_refuses_data_without_tumour(tiny_data, tmp_path):
    data = tmp_path / "no-tumour"
    data.mkdir()
    for name in ("volume-4.nii", "segmentation-4.nii"):
        shutil.copy(tiny_data / name, data / name)
    (tmp_path / "settings.json").write_text(json.dumps(TINY_SETTINGS))
    result = run("train", "--data", data, "--config", tmp_path / "settings.json", "--out", tmp_path / "m")
    assert result.returncode == 2 and "holds no tumour" in result.stderr
    assert not (tmp_path / "m").exists()


def test_finetune_makes_a_new_version_and_leaves_the_parent_alone(tiny_model, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LIVERTUMOR_HOME", str(tmp_path / "home"))
    before = digest(tiny_model)
    result = run(
        "finetune", "--model", tiny_model, "--data", tiny_data, "--epochs", 3, "--iterations", 1, "--progress", "none"
    )
    assert result.returncode == 0, result.stderr
    assert digest(tiny_model) == before
    new = tmp_path / "home" / "models" / "tiny-1.1"
    card = read_card(new)
    assert card.version == "1.1" and card.parent == "tiny:1"
    assert card.architecture == read_card(tiny_model).architecture  # from the parent's card, not re-typed
    assert [s["kind"] for s in card.stages] == ["whole", "patch", "whole"]
    # the parent scored on the same validation cases before fine-tuning, beside the result after
    assert set(card.validation_before) >= {"dc", "dg"} and "dg" in card.validation
    # by default a short curriculum at a low rate, not the parent's whole training budget
    quick = run("finetune", "--model", tiny_model, "--data", tiny_data, "--iterations", 1, "--out", tmp_path / "q")
    assert quick.returncode == 0, quick.stderr
    stages = read_card(tmp_path / "q").stages
    assert [s["epochs"] for s in stages] == [4, 1, 3]
    assert [s["learning_rate"] for s in stages] == pytest.approx([1e-4, 5e-5, 2.5e-5])
    assert {s["schedule"] for s in stages} == {"step"}  # the card says how each stage's rate moved


def test_finetune_lists_every_problem_of_the_cases(tiny_model, tiny_data, tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    shutil.copy(tiny_data / "volume-4.nii", data / "volume-4.nii")  # lesion-free case
    shutil.copy(tiny_data / "segmentation-4.nii", data / "segmentation-4.nii")
    ct = read_ct(tiny_data / "volume-0.nii")
    write_volume(ct, data / "volume-0.nii")
    label = read_label(tiny_data / "segmentation-0.nii")
    write_volume(label.crop((0, 0, 0), (label.shape[0] - 1, *label.shape[1:])), data / "segmentation-0.nii")
    result = run("finetune", "--model", tiny_model, "--data", data, "--out", tmp_path / "new")
    assert result.returncode == 2
    assert "case-0: the label map" in result.stderr and "not on the same voxel grid" in result.stderr
    assert not (tmp_path / "new").exists()


def test_segment_command_on_dicom_and_files(real_data, tiny_model, tmp_path):
    out = tmp_path / "out"
    result = run(
        "segment",
        real_data / "totalsegmentator/example_ct_dicom",
        real_data / "totalsegmentator",
        "-o",
        out,
        "--model",
        tiny_model,
        "--device",
        "cpu",
        "--probabilities",
        "--progress",
        "json",
    )
    assert result.returncode == 0, result.stderr
    written = [json.loads(line) for line in result.stdout.splitlines() if '"written"' in line]
    # every CT of the folder, not the organ map beside them
    assert sorted(Path(w["input"]).name for w in written) == [
        "example_ct.nii.gz",
        "example_ct_dicom",
        "example_ct_sm.nii.gz",
    ]
    labels = read_label(out / "example_ct_dicom_seg.nii.gz")
    assert labels.grid.same_as(read_ct(real_data / "totalsegmentator/example_ct_dicom").grid)
    nifti = read_ct(real_data / "totalsegmentator/example_ct.nii.gz")
    assert read_label(out / "example_ct_seg.nii.gz").grid.same_as(nifti.grid)
    assert (out / "example_ct_tumour_probability.nii.gz").exists()
    again = run("segment", real_data / "totalsegmentator/example_ct.nii.gz", "-o", out, "--model", tiny_model)
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr


def test_segment_cautions_about_a_ct_too_thin_for_the_model(real_data, tiny_model, tmp_path):
    thin = real_data / "dcmqi/ct-3slice"
    said = run("segment", thin, "-o", tmp_path / "text", "--model", tiny_model, "--device", "cpu")
    assert said.returncode == 0, said.stderr
    assert "caution: ct-3slice: the CT covers only 3 mm head to foot" in said.stderr
    told = run("segment", thin, "-o", tmp_path / "json", "--model", tiny_model, "--device", "cpu", "--progress", "json")
    events = [json.loads(line) for line in told.stdout.splitlines() if line.startswith("{")]
    assert [e["input"] for e in events if e.get("event") == "caution"] == [str(thin)]


def test_segment_reports_unavailable_device_and_bad_model(real_data, tiny_model, tmp_path):
    import torch

    ct = real_data / "totalsegmentator/example_ct.nii.gz"
    if not torch.cuda.is_available():
        result = run("segment", ct, "-o", tmp_path, "--model", tiny_model, "--device", "cuda")
        assert result.returncode == 2 and "sees no CUDA GPU" in result.stderr
    broken = shutil.copytree(tiny_model, tmp_path / "broken")
    (broken / "tumour.safetensors").write_bytes((broken / "tumour.safetensors").read_bytes()[:100])
    result = run("segment", ct, "-o", tmp_path / "o", "--model", broken)
    assert result.returncode == 2 and "fails its checksum" in result.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_demo_writes_overlay_and_metrics(tiny_model, tmp_path):
    result = run("demo", "--out", tmp_path / "demo", "--model", tiny_model, "--device", "cpu", "--seed", 3)
    assert result.returncode == 0, result.stderr
    assert "Dice global (DG)" in result.stdout
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert set(metrics["aggregate"]) >= {"dc", "dg", "recall"}
    assert (tmp_path / "demo" / "overlay.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp_path / "demo" / "lesions.json").read_text())
    assert report["lesions"] and "lesion classes (" in result.stdout
    assert report["model"].startswith("demo-lesions:")  # the model and its version, not "default"
    # each step is announced while it runs, and both diameters say which they are
    assert "demo: segmenting with tiny:1" in result.stderr and "demo: classifying" in result.stderr
    assert "diameter as drawn" in result.stdout and "longest axial diameter" in result.stdout
    again = run("demo", "--out", tmp_path / "demo", "--model", tiny_model, "--device", "cpu", "--seed", 3)
    assert again.returncode == 2 and "pass --overwrite" in again.stderr
    truth = read_label(tmp_path / "demo" / "truth.nii.gz")
    assert read_label(tmp_path / "demo" / "prediction.nii.gz").grid.same_as(truth.grid)
    assert np.any(truth.array == 2)


def test_models_command_lists_registry(tiny_model, tmp_path):
    result = run("models", "--json")
    assert result.returncode == 0
    assert isinstance(json.loads(result.stdout), list)


def test_import_model_verifies_and_never_overwrites(tiny_model, tmp_path, monkeypatch):
    from livertumor.models import ModelChecksumError, ModelExistsError, import_model, list_models

    monkeypatch.setenv("LIVERTUMOR_HOME", str(tmp_path / "home"))
    target = import_model(tiny_model)
    assert target == tmp_path / "home" / "models" / "tiny-1" and (target / "card.json").is_file()
    assert any(e.path == target and e.source == "user" for e in list_models())
    with pytest.raises(ModelExistsError):
        import_model(tiny_model)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "tumour.safetensors").write_bytes(b"not weights")
    shutil.rmtree(target)
    with pytest.raises(ModelChecksumError):
        import_model(broken)
    assert not target.exists()


def test_segment_writes_slicer_segmentation_statistics_preview_and_drops_small_lesions(tiny_model, tiny_data, tmp_path):
    import csv

    from livertumor.lesions.measure import lesion_components

    ct = tiny_data / "volume-1.nii"
    plain = run("segment", ct, "-o", tmp_path / "plain", "--model", tiny_model, "--device", "cpu")
    assert plain.returncode == 0, plain.stderr
    assert "model tiny:1" in plain.stdout  # name and version
    labels = read_label(tmp_path / "plain" / "volume-1_seg.nii.gz")
    result = run(
        "segment",
        ct,
        "-o",
        tmp_path / "rich",
        "--model",
        tiny_model,
        "--device",
        "cpu",
        "--format",
        ".seg.nrrd",
        "--statistics",
        "--preview",
    )
    assert result.returncode == 0, result.stderr
    segmentation = read_label(tmp_path / "rich" / "volume-1.seg.nrrd")
    assert np.array_equal(segmentation.array, labels.array) and segmentation.grid.same_as(labels.grid)
    header = (tmp_path / "rich" / "volume-1.seg.nrrd").read_bytes()[:4000]
    assert b"Segment0_Name:=Liver" in header or not (labels.array == 1).any()
    rows = list(csv.DictReader((tmp_path / "rich" / "volume-1_lesions.csv").open()))
    _, count = lesion_components(labels.array == 2)
    assert len(rows) == count
    if rows:
        assert {"volume_ml", "longest_axial_diameter_mm", "mean_hu"} <= set(rows[0])
    assert (tmp_path / "rich" / "volume-1_preview.png").read_bytes()[:4] == b"\x89PNG"
    small = run(
        "segment", ct, "-o", tmp_path / "big", "--model", tiny_model, "--device", "cpu", "--min-lesion-mm", "100"
    )
    assert small.returncode == 0, small.stderr
    assert not (read_label(tmp_path / "big" / "volume-1_seg.nii.gz").array == 2).any()
