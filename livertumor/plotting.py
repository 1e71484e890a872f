"""Headless matplotlib for the PNGs the library writes (plots, overlays)."""

from __future__ import annotations

import os


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
