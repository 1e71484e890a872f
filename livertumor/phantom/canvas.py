"""Painting helpers on a voxel grid: physical coordinates, bounding boxes, ellipsoids, tubes, smooth noise."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..volume import Grid

Window = tuple[slice, slice, slice]


def centred_grid(shape: Sequence[int], spacing_zyx: Sequence[float]) -> Grid:
    """An LPS grid of ``shape`` whose centre voxel sits at the origin of patient space."""
    spacing_xyz = tuple(float(s) for s in spacing_zyx[::-1])
    origin = tuple(-(n - 1) / 2.0 * s for n, s in zip(shape[::-1], spacing_xyz))
    return Grid(tuple(shape), spacing_xyz, origin, np.eye(3))


class Canvas:
    """Physical coordinates (mm, centred: +z superior, +y posterior, +x patient left) of a grid, and the
    index boxes of shapes drawn on it."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.spacing = np.asarray(grid.spacing_zyx)
        self.axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(grid.shape, self.spacing)]

    def box(self, centre: Sequence[float], half: Sequence[float]) -> Window | None:
        """Index box covering ``centre +- half`` (mm), or None if outside the volume."""
        window = []
        for axis, c, h, s, n in zip(self.axes, centre, half, self.spacing, self.grid.shape):
            start = max(0, math.floor((c - h - axis[0]) / s))
            stop = min(n, math.ceil((c + h - axis[0]) / s) + 1)
            if start >= stop:
                return None
            window.append(slice(start, stop))
        return tuple(window)

    def offsets(self, window: Window, centre: Sequence[float]) -> list[np.ndarray]:
        """Broadcastable coordinate offsets (mm) from ``centre`` inside ``window``."""
        parts = [self.axes[i][window[i]] - np.float32(centre[i]) for i in range(3)]
        return [parts[0][:, None, None], parts[1][None, :, None], parts[2][None, None, :]]

    def ellipsoid(self, centre: Sequence[float], semi: Sequence[float], margin: float = 1.0):
        """``(window, rho)``: the normalised ellipsoidal radius (1 on the surface) inside the box of the
        ellipsoid grown by ``margin``; ``(None, None)`` outside the volume."""
        window = self.box(centre, np.asarray(semi) * margin)
        if window is None:
            return None, None
        dz, dy, dx = self.offsets(window, centre)
        rho = np.sqrt((dz / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dx / semi[2]) ** 2)
        return window, rho

    def tube(self, start: np.ndarray, end: np.ndarray, radius: float):
        """``(window, distance)`` from the segment start-end, inside the tube's box."""
        start, end = np.asarray(start, np.float32), np.asarray(end, np.float32)
        low, high = np.minimum(start, end) - radius, np.maximum(start, end) + radius
        window = self.box((low + high) / 2, (high - low) / 2)
        if window is None:
            return None, None
        dz, dy, dx = self.offsets(window, start)
        direction = end - start
        length2 = float(direction @ direction) or 1.0
        t = np.clip((dz * direction[0] + dy * direction[1] + dx * direction[2]) / length2, 0.0, 1.0)
        distance = np.sqrt((dz - t * direction[0]) ** 2 + (dy - t * direction[1]) ** 2 + (dx - t * direction[2]) ** 2)
        return window, distance


def _interpolation_matrix(size: int, coarse: int) -> np.ndarray:
    """``(size, coarse)`` weights of linear interpolation from ``coarse`` evenly spread nodes."""
    position = np.linspace(0, coarse - 1, size, dtype=np.float32)
    nodes = np.arange(coarse, dtype=np.float32)
    return np.maximum(0.0, 1.0 - np.abs(position[:, None] - nodes[None, :]))


def smooth_field(rng: np.random.Generator, shape: Sequence[int], cell_voxels: Sequence[float]) -> np.ndarray:
    """Low-frequency noise, unit variance at its nodes: a coarse random grid (one node per ``cell_voxels``
    along each axis) interpolated linearly to ``shape``, axis by axis as matrix products (fast)."""
    coarse_shape = [max(2, math.ceil(n / max(c, 1.0)) + 2) for n, c in zip(shape, cell_voxels)]
    coarse = rng.standard_normal(coarse_shape).astype(np.float32)
    wz, wy, wx = (_interpolation_matrix(n, c) for n, c in zip(shape, coarse_shape))
    return np.einsum("zc,cyx->zyx", wz, np.einsum("yb,cbx->cyx", wy, coarse @ wx.T), optimize=True)


def gaussian_noise_gain(sigma_voxels: Sequence[float]) -> float:
    """How much ``ndimage.gaussian_filter(sigma, truncate=3)`` shrinks the sd of white noise."""
    gain = 1.0
    for sigma in sigma_voxels:
        delta = np.zeros(31, np.float64)
        delta[15] = 1.0
        kernel = ndimage.gaussian_filter1d(delta, float(sigma), truncate=3.0)
        gain *= float(np.sqrt((kernel**2).sum()))
    return gain
