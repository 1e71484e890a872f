"""Shared fixtures: the real CT under ../shared/data/real/ and small phantoms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real scans (see its PROVENANCE.md); the tests that use it fail loudly without it."""
    assert REAL.is_dir(), f"real test data missing: expected {REAL} beside the repository (see README)"
    return REAL


def rotation_z(degrees: float) -> np.ndarray:
    """A direction matrix rotated about the z axis: an oblique acquisition."""
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


#: Directions a CT grid can have: standard LPS, LPS with x and y flipped (NIfTI written in RAS), oblique.
DIRECTIONS = {
    "lps": np.eye(3),
    "flipped": np.diag([-1.0, -1.0, 1.0]),
    "oblique": rotation_z(20.0)
    @ np.array([[1.0, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]]),
}


TINY_PREPROCESS = {"spacing": [5.0, 5.0, 5.0], "block": [16, 32, 32], "range_margin": 2}
TINY_SETTINGS = {
    "architecture": {"type": "ResUNet3d", "widths": [4, 8, 16], "encoder_blocks": [1, 1], "decoder_blocks": [1, 1]},
    "preprocess": TINY_PREPROCESS,
    "stage_epochs": [1, 1, 1],
    "iterations_per_epoch": 2,
    "workers": 0,
    "device": "cpu",
}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Five small phantom cases (case 4 lesion-free) in LiTS layout."""
    from livertumor.phantom import write_phantom_dataset

    out = tmp_path_factory.mktemp("tiny-data")
    write_phantom_dataset(out, cases=5, seed=1, shape=(40, 80, 80), spacing_zyx=(5.0, 5.0, 5.0))
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_data, tmp_path_factory) -> Path:
    """A tiny three-stage model trained for a few iterations: real files, real card, not a good model."""
    from livertumor.datasets import find_cases
    from livertumor.training import TrainConfig, split_cases, train_model

    cases = find_cases(tiny_data)
    train, validation = split_cases(cases, 0.4, 0)
    out = tmp_path_factory.mktemp("models") / "tiny"
    train_model(train, validation, TrainConfig.from_json(TINY_SETTINGS), out, name="tiny")
    return out


@pytest.fixture(scope="session", autouse=True)
def _livertumor_home(tmp_path_factory):
    """The user folder (models, compiled graphs) of every test run, the CLI's subprocesses included, is a
    temporary one: tests never read or write the real ~/.livertumor."""
    import os

    previous = os.environ.get("LIVERTUMOR_HOME")
    os.environ["LIVERTUMOR_HOME"] = str(tmp_path_factory.mktemp("livertumor-home"))
    yield
    if previous is None:
        del os.environ["LIVERTUMOR_HOME"]
    else:
        os.environ["LIVERTUMOR_HOME"] = previous


def pytest_collection_modifyitems(items):
    """The tests that load OpenVINO / ONNX Runtime into the test process run last: once their thread pools
    live in a process, a later fork of it (subprocess, data-loader workers) segfaulted in the full suite
    (not reproduced in smaller runs; root cause not found). The library's in-process default is PyTorch
    for the same reason; the command, which runs in its own process, defaults to ``auto``."""
    items.sort(key=lambda item: item.path.name == "test_backends.py")
