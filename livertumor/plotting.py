"""Headless matplotlib for the PNGs the library writes (plots, overlays)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .volume import Grid


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: no display needed (servers, Slicer batch runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | os.PathLike, dpi: int = 100) -> None:
    """Write ``figure`` as PNG atomically and release it."""
    from .io import atomic_path

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi)
    pyplot().close(figure)


def radiological_axial(array: np.ndarray, grid: Grid, z: int) -> np.ndarray:
    """Axial slice ``z`` of a ``(z, y, x)`` array on ``grid`` as radiologists view it: the patient's right
    on the image's left, anterior at the top (rows of the result go anterior to posterior, columns
    right to left). The grid's first two index axes must be the patient's left-right and
    anterior-posterior axes, in either order and sense (any axial acquisition)."""
    code = grid.orientation()
    plane = array[z]  # rows follow the j axis, columns the i axis
    columns, rows = code[0], code[1]
    if columns in "PA" and rows in "LR":
        plane, columns, rows = plane.T, rows, columns
    if columns not in "LR" or rows not in "PA":
        raise ValueError(f"a {code} grid has no axial slices along its k axis")
    if columns == "R":
        plane = plane[:, ::-1]
    if rows == "A":
        plane = plane[::-1, :]
    return plane
