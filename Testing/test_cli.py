"""The command line as a user runs it: python -m livertumor, exit codes and messages."""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "livertumor", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def test_phantom_then_info(tmp_path):
    made = run("phantom", "--out", tmp_path, "--cases", 2, "--shape", 24, 48, 48, "--spacing", 5, 6, 6, "--seed", 4)
    assert made.returncode == 0, made.stderr
    assert "wrote 2 cases" in made.stdout
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["seed"] == 4 and len(manifest["cases"]) == 2
    info = run("info", "--json", tmp_path / "volume-0.nii")
    summary = json.loads(info.stdout)
    assert summary["size_xyz"] == [48, 48, 24] and summary["spacing_xyz_mm"] == [6.0, 6.0, 5.0]
    assert summary["orientation"] == "LPS" and summary["min"] <= -1000


def test_phantom_kinds_give_one_lesion_kind_per_case_in_turn(tmp_path):
    made = run("phantom", "--out", tmp_path, "--cases", 3, "--shape", 24, 64, 64, "--kinds", "metastasis", "cyst")
    assert made.returncode == 0, made.stderr
    cases = json.loads((tmp_path / "manifest.json").read_text())["cases"]
    assert {lesion["kind"] for lesion in cases[0]["lesions"]} == {"metastasis"}
    assert {lesion["kind"] for lesion in cases[1]["lesions"]} == {"cyst"}
    assert run("phantom", "--out", tmp_path / "x", "--kinds", "adenoma").returncode == 2


def test_info_table_on_real_dicom(real_data):
    info = run("info", real_data / "dcmqi/ct-3slice")
    assert info.returncode == 0, info.stderr
    assert "512 x 512 x 3" in info.stdout and "0.8105, 0.8105, 1" in info.stdout


def test_bad_input_exits_2_with_one_clear_line(tmp_path):
    (tmp_path / "junk.nii").write_bytes(b"\x00" * 10)
    result = run("info", tmp_path / "junk.nii")
    assert result.returncode == 2
    assert result.stderr.startswith("livertumor info: error: cannot read") and "Traceback" not in result.stderr


def test_help_explains_options():
    result = run("phantom", "--help")
    assert result.returncode == 0 and "--spacing Z Y X" in result.stdout and "slice thickness first" in result.stdout


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's mallopt")
def test_command_processes_keep_freed_memory_for_reuse():
    # In a child process: the setting is process-wide and belongs to the command's own processes.
    code = "from livertumor.memory import keep_freed_memory; raise SystemExit(0 if keep_freed_memory() else 1)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_cli_backend_option(tiny_model, tiny_data, tmp_path):
    """Runs before any test loads a compiled runtime into this process (see conftest)."""
    import numpy as np

    from livertumor.io import read_label

    outputs = {}
    for backend in ("torch", "openvino"):
        done = run(
            *("segment", tiny_data / "volume-2.nii", "-o", tmp_path / backend, "--model", tiny_model),
            *("--backend", backend, "--stretch", 0.5),
        )
        assert done.returncode == 0, done.stderr
        outputs[backend] = read_label(tmp_path / backend / "volume-2_seg.nii.gz").array
    np.testing.assert_array_equal(outputs["openvino"], outputs["torch"])
    refused = run("segment", tiny_data / "volume-2.nii", "-o", tmp_path / "x", "--backend", "tensorrt")
    assert refused.returncode == 2 and "invalid choice: 'tensorrt'" in refused.stderr
