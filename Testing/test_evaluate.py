"""`livertumor evaluate` on files: pairing by name, JSON/CSV/plots, refusal of pairs on different grids."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage
from test_cli import run

from livertumor.evaluation import case_key, evaluate_files, pair_files
from livertumor.io import write_volume
from livertumor.metrics import case_metrics
from livertumor.phantom import make_phantom
from livertumor.volume import Volume


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    truth_dir, pred_dir = root / "truth", root / "pred"
    truths, preds = [], []
    for index in range(2):
        phantom = make_phantom(index, (32, 64, 64), (4.0, 5.0, 5.0), lesion_count=3)
        truth = phantom.label
        grown = ndimage.binary_dilation(truth.array == 2)  # a prediction that over-segments every lesion
        pred = truth.with_array(np.where(grown, 2, np.minimum(truth.array, 1)).astype(np.uint8))
        write_volume(phantom.ct, truth_dir / f"volume-{index}.nii.gz")
        write_volume(truth, truth_dir / f"segmentation-{index}.nii.gz")
        write_volume(pred, pred_dir / f"volume-{index}.nrrd")
        truths.append(truth)
        preds.append(pred)
    return root, truths, preds


def test_case_keys_pair_lits_and_suffixed_names():
    assert case_key("segmentation-12.nii") == case_key("volume-12.nrrd") == case_key("volume-12_seg.nii.gz") == "12"
    assert case_key("liver_7_pred.nii.gz") == case_key("liver_7_seg.nii.gz") == case_key("liver_7.mha") == "liver_7"


def test_evaluate_files_matches_direct_metrics(folders):
    root, truths, preds = folders
    evaluation = evaluate_files(pair_files(root / "pred", root / "truth"))
    for case, truth, pred in zip(evaluation.cases, truths, preds):
        assert case.metrics == pytest.approx(case_metrics(pred.array, truth.array, truth.grid.spacing_zyx, label=2))
        assert case.lesions.true_positives == 3


def test_cli_writes_json_csv_and_plots(folders, tmp_path):
    root, _, _ = folders
    result = run(
        "evaluate",
        "--pred",
        root / "pred",
        "--gt",
        root / "truth",
        "--json",
        tmp_path / "r.json",
        "--csv",
        tmp_path / "r.csv",
        "--plots",
        tmp_path / "plots",
    )
    assert result.returncode == 0, result.stderr
    assert "Dice global (DG)" in result.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data["cases"]) == {"0", "1"}
    for row in data["cases"].values():
        assert {"dc", "voe", "rvd", "assd", "msd", "rmsd"} <= set(row) and 0.3 < row["dc"] < 1.0
    assert {"dc", "voe", "rvd", "assd", "msd", "rmsd", "dg"} <= set(data["aggregate"])
    assert data["aggregate"]["recall"] == 1.0
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["case"] for r in rows] == ["0", "1"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        f"{k}.png" for k in ("dc", "voe", "rvd", "assd", "msd", "rmsd")
    )
    assert (tmp_path / "plots" / "dc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pairs_on_different_grids_are_refused(tmp_path):
    label = np.zeros((4, 5, 6), np.uint8)
    write_volume(Volume.from_array(label, spacing=(1, 1, 1)), tmp_path / "truth.nii")
    write_volume(Volume.from_array(label, spacing=(1, 1, 1), origin=(0, 0, 5)), tmp_path / "pred.nii")
    result = run("evaluate", "--pred", tmp_path / "pred.nii", "--gt", tmp_path / "truth.nii")
    assert result.returncode == 2
    assert "are not on the same voxel grid" in result.stderr


def test_missing_predictions_are_named(folders, tmp_path):
    root, _, _ = folders
    (tmp_path / "pred").mkdir()
    write_volume(make_phantom(0, (16, 32, 32), (8, 10, 10)).label, tmp_path / "pred" / "segmentation-0.nii")
    result = run("evaluate", "--pred", tmp_path / "pred", "--gt", root / "truth")
    assert result.returncode == 2 and "segmentation-1.nii.gz has no prediction" in result.stderr


def test_table_says_units_means_over_cases_and_pooled_recall():
    import numpy as np

    from livertumor.evaluation import Evaluation
    from livertumor.metrics import evaluate_pair

    truth_a = np.zeros((10, 20, 20), np.uint8)
    truth_a[2:5, 2:6, 2:6] = 2
    pred_a = truth_a.copy()
    pred_a[2:5, 2:6, 6:8] = 2  # found, 50 % too large
    truth_b = np.zeros_like(truth_a)
    for x in (2, 8, 14):
        truth_b[4:6, 4:6, x : x + 2] = 2
    pred_b = np.zeros_like(truth_a)
    pred_b[8:10, 16:18, 16:18] = 2  # misses all three
    cases = [evaluate_pair(pred_a, truth_a, (1.0, 1.0, 1.0), "a"), evaluate_pair(pred_b, truth_b, (1.0, 1.0, 1.0), "b")]
    table = Evaluation(cases).table()
    header, *_ = table.splitlines()
    assert "RVD %" in header and "ASSD mm" in header
    row_a = next(line for line in table.splitlines() if line.startswith("a "))
    assert "50.000" in row_a  # RVD of +50 % shown in per cent
    mean_row = next(line for line in table.splitlines() if line.startswith("mean of cases"))
    assert mean_row.split()[-1] == "0.500"  # (1 + 0) / 2, not 1 of 4 pooled
    assert "1 of 4 found (pooled recall 0.250)" in table
