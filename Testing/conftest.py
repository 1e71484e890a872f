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
