"""Placing lesions in a liver and painting them: shared by the phantom generator and ``synthesize``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..preprocess import mask_box
from .canvas import Canvas
from .lesion_kinds import BOUNDARY_JITTER, LESION_CLASSES, SIZE_RANGES_MM, draw_diameter, lesion_appearance

#: Where a lesion's centre is drawn: anywhere in the liver, beside a vessel, at the liver's edge.
PLACEMENTS = ("parenchyma", "near-vessel", "subcapsular")
PLACEMENT_PROBABILITIES = (0.55, 0.25, 0.2)
#: The same with half the lesions at the liver's edge: training sets that show more subcapsular lesions.
SURFACE_PLACEMENT_PROBABILITIES = (0.3, 0.2, 0.5)
#: Share of a lesion's ellipsoid that must lie in the liver (subcapsular lesions are cut by the capsule).
MIN_INSIDE = {"parenchyma": 0.85, "near-vessel": 0.8, "subcapsular": 0.55}
#: Lesions never exceed this share of the liver's smallest extent.
MAX_LESION_SHARE = 0.45


@dataclass(frozen=True)
class LesionInfo:
    """One lesion as drawn: what the manifest says about it."""

    id: int
    kind: str
    diameter_mm: float
    volume_ml: float
    voxels: int
    centre_index_zyx: tuple[float, float, float]
    centre_lps_mm: tuple[float, float, float]
    placement: str


@dataclass
class LesionCanvas:
    """What lesions are painted into: the HU array (changed in place), the liver mask, the maps written,
    a unit-variance texture field; for real scans, their own fine residual (a lesion keeps the scan's
    noise grain) and the partial-volume blur of lesion edges (phantoms get theirs from the imaging
    chain)."""

    canvas: Canvas
    hu: np.ndarray
    liver: np.ndarray
    vessels: np.ndarray | None
    lesion_id: np.ndarray
    lesion_class: np.ndarray
    texture: np.ndarray
    residual: np.ndarray | None = None
    edge_sigma_voxels: float | None = None


def place_lesions(
    rng: np.random.Generator,
    target: LesionCanvas,
    kinds: Sequence[str],
    phase: str,
    liver_hu: float,
    blood_hu: float,
    diameters_mm: Sequence[float] | None = None,
    placement_probabilities: Sequence[float] = PLACEMENT_PROBABILITIES,
) -> tuple[LesionInfo, ...]:
    """Draw one lesion per entry of ``kinds`` inside the liver without overlap, paint it, describe it.
    ``diameters_mm`` fixes the sizes (cycling); None draws them. No lesion exceeds
    :data:`MAX_LESION_SHARE` of the liver's smallest extent. ``placement_probabilities`` weighs
    :data:`PLACEMENTS`.

    A lesion with no room left in the liver after 60 tries is skipped (the manifest lists what was
    drawn).
    """
    for kind in kinds:
        if kind not in LESION_CLASSES:
            raise ValueError(f"unknown lesion kind {kind!r}; known: {', '.join(LESION_CLASSES)}")
    if not kinds or not target.liver.any():
        return ()
    canvas, grid = target.canvas, target.canvas.grid
    box = mask_box(target.liver, (1.0, 1.0, 1.0), 0.0)
    pools = _centre_pools(target, box)
    extent = min((s.stop - s.start) * d for s, d in zip(box, canvas.spacing))
    max_diameter_mm = min(SIZE_RANGES_MM[-1][1], MAX_LESION_SHARE * float(extent))
    gap = 2.0 * float(canvas.spacing.max())  # keeps lesions apart even on the coarsest axis
    placed: list[tuple[np.ndarray, float]] = []
    infos = []
    for position, kind in enumerate(kinds):
        number = len(infos) + 1
        for _attempt in range(60):
            placement = PLACEMENTS[rng.choice(len(PLACEMENTS), p=placement_probabilities)]
            pool = pools[placement] if pools[placement].size else pools["parenchyma"]
            drawn = draw_diameter(rng) if not diameters_mm else diameters_mm[position % len(diameters_mm)]
            diameter = min(drawn, max_diameter_mm)
            centre_index = np.array(np.unravel_index(rng.choice(pool), grid.shape))
            centre = np.array([canvas.axes[i][centre_index[i]] for i in range(3)], np.float32)
            if placement == "near-vessel":  # abut the vessel rather than swallow it
                direction = rng.standard_normal(3)
                centre += (diameter / 2 + 1.5) * (direction / np.linalg.norm(direction)).astype(np.float32)
            semi = (diameter / 2 * rng.uniform(0.85, 1.15, 3)).astype(np.float32)
            if any(np.linalg.norm(centre - c) < (diameter + d) / 2 + gap for c, d in placed):
                continue
            window, rho = canvas.ellipsoid(centre, semi, margin=1.4)
            if window is None:
                continue
            jitter = np.float32(BOUNDARY_JITTER[kind]) * target.texture[window]
            rho = rho * (1.0 + jitter)
            liver_box = target.liver[window]
            shape_mask = rho <= 1.0
            inside = shape_mask & liver_box & (target.lesion_id[window] == 0)
            if shape_mask.sum() == 0 or inside.sum() < MIN_INSIDE[placement] * shape_mask.sum():
                continue
            break
        else:
            continue
        placed.append((centre, diameter))
        dz, dy, dx = canvas.offsets(window, centre)
        offsets = (dz / semi[0], dy / semi[1], dx / semi[2])
        texture = target.texture[window]
        value, alpha = lesion_appearance(rng, kind, phase, liver_hu, blood_hu, diameter, rho, offsets, texture)
        if target.edge_sigma_voxels:
            alpha = ndimage.gaussian_filter(alpha, target.edge_sigma_voxels, truncate=3.0)
        alpha = np.where(liver_box, alpha, 0.0).astype(np.float32)
        hu_box = target.hu[window]
        if target.residual is not None:
            value = value + target.residual[window]
        hu_box += alpha * (value - hu_box)
        target.lesion_id[window][inside] = number
        target.lesion_class[window][inside] = LESION_CLASSES.index(kind) + 1
        voxels = int(inside.sum())
        local = np.argwhere(inside).mean(axis=0) + [s.start for s in window]
        infos.append(
            LesionInfo(
                id=number,
                kind=kind,
                diameter_mm=round(float(diameter), 3),
                volume_ml=round(voxels * grid.voxel_volume_ml, 5),
                voxels=voxels,
                centre_index_zyx=tuple(round(float(v), 3) for v in local),
                centre_lps_mm=tuple(round(float(v), 3) for v in grid.index_to_physical(local)),
                placement=placement,
            )
        )
    return tuple(infos)


def _centre_pools(target: LesionCanvas, box: tuple[slice, slice, slice]) -> dict[str, np.ndarray]:
    """Flat indices of candidate lesion centres per placement, computed inside the liver's ``box``."""
    liver = target.liver
    local = liver[box]
    edge = local & ~ndimage.binary_erosion(local)
    near_vessel = np.zeros_like(local) if target.vessels is None else target.vessels[box] & local
    pools = {}
    for name, mask in (("parenchyma", local), ("near-vessel", near_vessel), ("subcapsular", edge)):
        index = np.nonzero(mask)
        pools[name] = np.ravel_multi_index(tuple(i + s.start for i, s in zip(index, box)), liver.shape)
    return pools
