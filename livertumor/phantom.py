"""Deterministic CT-like abdominal phantoms with liver lesions of three kinds: training, test and demo data.

A phantom is an axial abdominal CT in the portal venous phase, in HU, on an LPS grid centred on the
patient: air, body outline with subcutaneous fat and a muscle wall, visceral fat and bowel-like soft
tissue, spine (cortical shell, cancellous core, discs), ribs over the upper abdomen, aorta and vena cava,
spleen and kidneys (organs of liver-like density, so a network must learn the liver's context), and a
lobulated liver with a branching vessel tree. Lesions follow their typical portal-venous appearance:

* cyst: near water (0-15 HU), homogeneous, sharp edge;
* hemangioma: hypodense (~45 HU) with peripheral nodular enhancement as bright as the blood pool
  (~170 HU); small ones (< 10 mm) "flash-fill" and enhance homogeneously;
* metastasis: hypodense (necrotic) centre with an enhancing rim (target sign) and a faint hypodense halo.

Values follow the radiology literature (e.g. liver ~100-110 HU and aorta ~150-180 HU in portal venous
phase). Partial-volume blur (Gaussian, 0.6 voxel) and Gaussian noise (12 HU) come last. Labels are drawn
from the exact shapes before blurring: 0 background, 1 liver, 2 tumour; the class map holds 0 none,
1 cyst, 2 hemangioma, 3 metastasis.

Every random choice comes from one ``numpy.random.Generator`` seeded per case, so a seed gives the same
volume on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .io import write_json, write_volume
from .volume import Grid, Volume

LESION_CLASSES = ("cyst", "hemangioma", "metastasis")

#: Mean HU of each tissue before blur and noise, the single source for generator and tests.
TISSUE_HU = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 50.0,
    "soft_tissue": 30.0,
    "bone_cortical": 700.0,
    "bone_cancellous": 230.0,
    "disc": 80.0,
    "blood": 165.0,
    "spleen": 115.0,
    "kidney": 170.0,
    "liver": 105.0,
    "liver_vessel": 170.0,
    "cyst": 8.0,
    "hemangioma": 45.0,
    "hemangioma_nodule": 170.0,
    "metastasis_centre": 35.0,
    "metastasis_rim": 135.0,
    "metastasis_halo": 90.0,
}

#: Lesion diameter ranges (mm) and how often each is drawn: small, medium, large.
SIZE_RANGES_MM = ((3.0, 10.0), (10.0, 20.0), (20.0, 60.0))
SIZE_PROBABILITIES = (0.4, 0.3, 0.3)

DEFAULT_SHAPE = (128, 256, 256)
DEFAULT_SPACING_ZYX = (2.0, 1.5, 1.5)
NOISE_HU = 12.0
BLUR_VOXELS = 0.6
#: Every this-many-th case of a data set has no lesion (the 5th, 10th, ...).
LESION_FREE_EVERY = 5


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


@dataclass(frozen=True)
class Phantom:
    """A phantom case: CT (int16 HU), label map, lesion class map and lesion instance map, one grid."""

    ct: Volume
    label: Volume
    lesion_class: Volume
    lesion_id: Volume
    lesions: tuple[LesionInfo, ...]


def _centred_grid(shape: Sequence[int], spacing_zyx: Sequence[float]) -> Grid:
    spacing_xyz = tuple(float(s) for s in spacing_zyx[::-1])
    origin = tuple(-(n - 1) / 2.0 * s for n, s in zip(shape[::-1], spacing_xyz))
    return Grid(tuple(shape), spacing_xyz, origin, np.eye(3))


class _Canvas:
    """Physical coordinates (mm, centred) of the grid and helpers to paint shapes inside bounding boxes."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.spacing = np.asarray(grid.spacing_zyx)
        self.axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(grid.shape, self.spacing)]

    def box(self, centre: Sequence[float], half: Sequence[float]) -> tuple[slice, slice, slice] | None:
        """Index box covering ``centre +- half`` (mm), or None if outside the volume."""
        window = []
        for axis, c, h, s, n in zip(self.axes, centre, half, self.spacing, self.grid.shape):
            start = max(0, math.floor((c - h - axis[0]) / s))
            stop = min(n, math.ceil((c + h - axis[0]) / s) + 1)
            if start >= stop:
                return None
            window.append(slice(start, stop))
        return tuple(window)

    def offsets(self, window: tuple[slice, slice, slice], centre: Sequence[float]) -> list[np.ndarray]:
        """Broadcastable coordinate offsets (mm) from ``centre`` inside ``window``."""
        parts = [self.axes[i][window[i]] - np.float32(centre[i]) for i in range(3)]
        return [parts[0][:, None, None], parts[1][None, :, None], parts[2][None, None, :]]

    def ellipsoid(self, centre: Sequence[float], semi: Sequence[float], margin: float = 1.0):
        """``(window, rho)``: the normalised ellipsoidal radius (1 on the surface) inside the box of the
        ellipsoid grown by ``margin``."""
        window = self.box(centre, np.asarray(semi) * margin)
        if window is None:
            return None, None
        dz, dy, dx = self.offsets(window, centre)
        rho = np.sqrt((dz / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dx / semi[2]) ** 2)
        return window, rho

    def tube(self, start: np.ndarray, end: np.ndarray, radius: float):
        """``(window, distance)`` from the segment start-end, inside the tube's box."""
        low, high = np.minimum(start, end) - radius, np.maximum(start, end) + radius
        centre, half = (low + high) / 2, (high - low) / 2
        window = self.box(centre, half)
        if window is None:
            return None, None
        dz, dy, dx = self.offsets(window, start)
        direction = (end - start).astype(np.float32)
        length2 = float(direction @ direction) or 1.0
        t = np.clip((dz * direction[0] + dy * direction[1] + dx * direction[2]) / length2, 0.0, 1.0)
        distance = np.sqrt((dz - t * direction[0]) ** 2 + (dy - t * direction[1]) ** 2 + (dx - t * direction[2]) ** 2)
        return window, distance


def _interpolation_matrix(size: int, coarse: int) -> np.ndarray:
    """``(size, coarse)`` weights of linear interpolation from ``coarse`` evenly spread nodes."""
    position = np.linspace(0, coarse - 1, size, dtype=np.float32)
    nodes = np.arange(coarse, dtype=np.float32)
    return np.maximum(0.0, 1.0 - np.abs(position[:, None] - nodes[None, :]))


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], cell: int = 8) -> np.ndarray:
    """Low-frequency noise of unit variance at the nodes: a coarse random grid (one node per ``cell``
    voxels) interpolated linearly to ``shape``, axis by axis as matrix products (fast)."""
    coarse = rng.standard_normal([max(2, n // cell + 2) for n in shape]).astype(np.float32)
    wz, wy, wx = (_interpolation_matrix(n, c) for n, c in zip(shape, coarse.shape))
    return np.einsum("zc,cyx->zyx", wz, np.einsum("yb,cbx->cyx", wy, coarse @ wx.T), optimize=True)


def _draw_lesion_count(rng: np.random.Generator) -> int:
    return int(rng.integers(1, 7))


def _draw_diameter(rng: np.random.Generator) -> float:
    low, high = SIZE_RANGES_MM[rng.choice(len(SIZE_RANGES_MM), p=SIZE_PROBABILITIES)]
    return float(rng.uniform(low, high))


def make_phantom(
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing_zyx: Sequence[float] = DEFAULT_SPACING_ZYX,
    lesion_count: int | None = None,
    kinds: Sequence[str] | None = None,
) -> Phantom:
    """Generate one phantom case.

    ``lesion_count`` None draws 1-6 lesions; ``kinds`` (default: drawn uniformly) fixes each lesion's kind,
    cycling when shorter than the count. Anatomy scales down to fit a small field of view; lesion sizes
    stay in mm (3-60 mm diameter) but never exceed 45% of the liver's smallest semi-axis.
    """
    rng = np.random.default_rng(seed)
    grid = _centred_grid(shape, spacing_zyx)
    canvas = _Canvas(grid)
    fov = np.asarray(grid.shape) * canvas.spacing  # z, y, x in mm
    scale_xy = float(min(1.0, 0.45 * fov[2] / 165.0, 0.45 * fov[1] / 120.0))
    scale_z = float(min(1.0, fov[0] / 240.0))
    z, y, x = canvas.axes
    hu = np.full(grid.shape, TISSUE_HU["air"], dtype=np.float32)

    # Body: an elliptic cylinder whose size varies gently along z; fat, muscle wall, abdominal contents.
    body_x, body_y = 165.0 * scale_xy * rng.uniform(0.9, 1.05), 120.0 * scale_xy * rng.uniform(0.9, 1.05)
    taper = (1.0 + 0.06 * np.sin(z / max(fov[0], 1.0) * np.pi + rng.uniform(0, np.pi))).astype(np.float32)
    radius = np.sqrt((x[None, None, :] / body_x) ** 2 + (y[None, :, None] / body_y) ** 2) / taper[:, None, None]
    hu[radius <= 1.0] = TISSUE_HU["fat"]
    hu[radius <= 0.93] = TISSUE_HU["muscle"]
    interior = radius <= 0.87
    texture = _smooth_field(rng, grid.shape, cell=6)
    visceral = np.where(texture > 0.6, TISSUE_HU["fat"], TISSUE_HU["soft_tissue"] + 8.0 * texture)
    hu[interior] = visceral[interior]
    del radius, visceral

    def paint(window, field, limit, value) -> None:
        """Set ``hu`` to ``value`` where ``field <= limit`` inside ``window`` (None: outside the volume)."""
        if window is not None:
            hu[window][field <= limit] = value

    # Spine: vertebral bodies with discs, behind the abdominal cavity.
    spine_y, spine_r = 0.62 * body_y, 17.0 * scale_xy
    period = 30.0 * scale_z
    for level_z in np.arange(z[0] - period, z[-1] + period, period):
        window, rho = canvas.ellipsoid((level_z, spine_y, 0.0), (period * 0.42, spine_r, spine_r * 1.1))
        paint(window, rho, 1.0, TISSUE_HU["bone_cortical"])
        paint(window, rho, 0.8, TISSUE_HU["bone_cancellous"])
        window, rho = canvas.ellipsoid((level_z + period / 2, spine_y, 0.0), (period * 0.08 + 1.0, spine_r, spine_r))
        paint(window, rho, 1.0, TISSUE_HU["disc"])

    # Aorta (left, in front of the spine) and inferior vena cava (right).
    for centre_x, vessel_r, value in ((12.0 * scale_xy, 11.0, "blood"), (-22.0 * scale_xy, 10.0, "blood")):
        start = np.array([z[0] - 1, spine_y - spine_r - vessel_r * scale_xy, centre_x], np.float32)
        window, distance = canvas.tube(start, start + np.array([fov[0] + 2, 0, 0], np.float32), vessel_r * scale_xy)
        paint(window, distance, vessel_r * scale_xy, TISSUE_HU[value])

    # Organs of liver-like density: spleen (left) and kidneys (both sides, lower).
    liver_z = z[0] + 0.62 * fov[0]
    organs = (
        ((liver_z, 0.25 * body_y, 0.62 * body_x), (55 * scale_z, 45 * scale_xy, 28 * scale_xy), "spleen"),
        ((liver_z - 70 * scale_z, 0.45 * body_y, 0.4 * body_x), (50 * scale_z, 30 * scale_xy, 25 * scale_xy), "kidney"),
        (
            (liver_z - 80 * scale_z, 0.45 * body_y, -0.4 * body_x),
            (50 * scale_z, 30 * scale_xy, 25 * scale_xy),
            "kidney",
        ),
    )
    for centre, semi, name in organs:
        window, rho = canvas.ellipsoid(centre, semi)
        paint(window, rho, 1.0, TISSUE_HU[name])

    # Ribs over the upper abdomen: small bone rods in the muscle wall, every ~25 mm.
    rib_period = 25.0 * scale_z
    for rib_z in np.arange(liver_z - 40 * scale_z, z[-1], rib_period):
        for angle in np.linspace(0.2, np.pi - 0.2, 7):
            for side in (-1.0, 1.0):
                centre = (rib_z, -0.9 * body_y * np.sin(angle), side * 0.9 * body_x * np.cos(angle) * 1.0)
                window, rho = canvas.ellipsoid(centre, (5.0 * scale_z + 1, 5.0 * scale_xy + 1, 5.0 * scale_xy + 1))
                paint(window, rho, 1.0, TISSUE_HU["bone_cortical"] - 100)

    # Liver: a lobulated ellipsoid in the right upper abdomen (-x is patient right in LPS).
    liver_centre = np.array([liver_z, -0.08 * body_y, -0.38 * body_x], np.float32)
    liver_semi = np.array([75 * scale_z, 0.62 * body_y, 0.5 * body_x], np.float32) * rng.uniform(0.9, 1.1, 3)
    lobes = rng.uniform(-1, 1, (3, 2)).astype(np.float32)
    liver_window, rho = canvas.ellipsoid(liver_centre, liver_semi, margin=1.15)
    dz, dy, dx = canvas.offsets(liver_window, liver_centre)
    wobble = 1.0 + 0.1 * (
        lobes[0, 0] * np.sin(2.5 * dx / liver_semi[2] + lobes[0, 1] * 3)
        + lobes[1, 0] * np.sin(2.5 * dy / liver_semi[1] + lobes[1, 1] * 3)
        + lobes[2, 0] * np.sin(2.5 * dz / liver_semi[0] + lobes[2, 1] * 3)
    )
    inside_body = interior[liver_window]
    liver_local = (rho <= wobble) & inside_body
    liver = np.zeros(grid.shape, bool)
    liver[liver_window] = liver_local
    hu[liver] = TISSUE_HU["liver"] + 6.0 * texture[liver]
    del rho, dz, dy, dx, wobble, texture

    # Vessel tree: branches from a hilum near the liver's medial side, halving in radius at each split.
    hilum = liver_centre + np.array([0, 0.1, 0.5], np.float32) * liver_semi
    vessels = np.zeros(grid.shape, bool)
    branches = [(hilum, 5.0 * scale_xy + 1.0, 0)]
    while branches:
        start, vessel_r, depth = branches.pop()
        for _ in range(3 if depth == 0 else 2):
            target = liver_centre + rng.uniform(-0.75, 0.75, 3).astype(np.float32) * liver_semi
            end = start + (target - start) * (0.6 if depth < 2 else 1.0)
            window, distance = canvas.tube(start, end, vessel_r)
            if window is not None:
                vessels[window] |= distance <= vessel_r
            if depth < 2:
                branches.append((end, max(1.0, vessel_r * 0.65), depth + 1))
    vessels &= liver
    hu[vessels] = TISSUE_HU["liver_vessel"]
    del vessels

    lesion_id = np.zeros(grid.shape, np.uint8)
    lesion_class = np.zeros(grid.shape, np.uint8)
    lesions = _place_lesions(rng, canvas, hu, liver, lesion_id, lesion_class, liver_semi, lesion_count, kinds)

    hu = ndimage.gaussian_filter(hu, sigma=BLUR_VOXELS, output=np.float32, truncate=3.0)
    hu += rng.standard_normal(grid.shape, dtype=np.float32) * np.float32(NOISE_HU)
    ct = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    label = liver.astype(np.uint8)
    label[lesion_id > 0] = 2
    return Phantom(
        ct=Volume(ct, grid),
        label=Volume(label, grid),
        lesion_class=Volume(lesion_class, grid),
        lesion_id=Volume(lesion_id, grid),
        lesions=lesions,
    )


def _place_lesions(
    rng: np.random.Generator,
    canvas: _Canvas,
    hu: np.ndarray,
    liver: np.ndarray,
    lesion_id: np.ndarray,
    lesion_class: np.ndarray,
    liver_semi: np.ndarray,
    lesion_count: int | None,
    kinds: Sequence[str] | None,
) -> tuple[LesionInfo, ...]:
    """Draw lesions inside the liver without overlap, paint them into ``hu`` and the maps, describe them."""
    count = _draw_lesion_count(rng) if lesion_count is None else int(lesion_count)
    liver_voxels = np.flatnonzero(liver)
    if count == 0 or liver_voxels.size == 0:
        return ()
    grid = canvas.grid
    gap = 2.0 * float(canvas.spacing.max())  # keeps lesions apart even on the coarsest axis
    max_diameter = 0.9 * float(liver_semi.min())
    placed: list[tuple[np.ndarray, float]] = []
    infos = []
    for number in range(1, count + 1):
        kind = kinds[(number - 1) % len(kinds)] if kinds else LESION_CLASSES[int(rng.integers(0, 3))]
        if kind not in LESION_CLASSES:
            raise ValueError(f"unknown lesion kind {kind!r}; known: {', '.join(LESION_CLASSES)}")
        for _attempt in range(50):
            diameter = min(_draw_diameter(rng), max_diameter)
            centre_index = np.array(np.unravel_index(rng.choice(liver_voxels), grid.shape), np.float32)
            centre = np.array([canvas.axes[i][int(centre_index[i])] for i in range(3)], np.float32)
            semi = diameter / 2 * rng.uniform(0.85, 1.15, 3).astype(np.float32)
            if any(np.linalg.norm(centre - c) < (diameter + d) / 2 + gap for c, d in placed):
                continue
            window, rho = canvas.ellipsoid(centre, semi, margin=1.2)
            if window is None:
                continue
            shape_mask = rho <= 1.0
            inside = shape_mask & liver[window]
            if shape_mask.sum() == 0 or inside.sum() < 0.8 * shape_mask.sum():
                continue
            break
        else:
            continue  # the liver has no room left for a lesion of this size
        placed.append((centre, diameter))
        _paint_lesion(rng, canvas, hu[window], rho, inside, liver[window], kind, diameter, window, centre)
        lesion_id[window][inside] = number
        lesion_class[window][inside] = LESION_CLASSES.index(kind) + 1
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
            )
        )
    return tuple(infos)


def _paint_lesion(
    rng: np.random.Generator,
    canvas: _Canvas,
    hu_box: np.ndarray,
    rho: np.ndarray,
    inside: np.ndarray,
    liver_box: np.ndarray,
    kind: str,
    diameter: float,
    window: tuple[slice, slice, slice],
    centre: np.ndarray,
) -> None:
    """Give a lesion its kind's appearance inside its box (``hu_box`` is a view into the volume)."""
    if kind == "cyst":
        hu_box[inside] = TISSUE_HU["cyst"] + rng.uniform(-6, 6)
        return
    if kind == "hemangioma":
        if diameter < 10.0:  # flash-filling: enhances homogeneously
            hu_box[inside] = TISSUE_HU["hemangioma_nodule"] - 20.0
            return
        hu_box[inside] = TISSUE_HU["hemangioma"]
        dz, dy, dx = canvas.offsets(window, centre)
        nodules = np.zeros(inside.shape, bool)
        for _ in range(int(rng.integers(4, 9))):
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            spot = direction * diameter / 2 * 0.8
            radius = max(diameter * 0.15, 2.5)
            nodules |= (dz - spot[0]) ** 2 + (dy - spot[1]) ** 2 + (dx - spot[2]) ** 2 <= radius**2
        hu_box[inside & nodules] = TISSUE_HU["hemangioma_nodule"]
        return
    # Metastasis: faint hypodense halo in the liver around it, enhancing rim, hypodense centre.
    halo = (rho > 1.0) & (rho <= 1.15) & liver_box
    hu_box[halo] = TISSUE_HU["metastasis_halo"]
    hu_box[inside] = TISSUE_HU["metastasis_rim"]
    rim_fraction = 0.7 if diameter >= 8.0 else 0.5
    hu_box[inside & (rho <= rim_fraction)] = TISSUE_HU["metastasis_centre"]


def phantom_case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` in a data set seeded ``seed`` (cases are independent and reproducible)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def write_phantom_dataset(
    out: str | Path,
    cases: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing_zyx: Sequence[float] = DEFAULT_SPACING_ZYX,
    suffix: str = ".nii",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``cases`` phantoms in LiTS layout (``volume-N``, ``segmentation-N``, plus ``classes-N`` with
    the lesion kinds) and ``manifest.json`` under ``out``. Every 5th case has no lesion.

    Returns the manifest's path. ``progress(done, total)`` is called after each case.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "generator": "livertumor.phantom",
        "seed": seed,
        "shape_zyx": list(shape),
        "spacing_zyx_mm": list(spacing_zyx),
        "labels": {"0": "background", "1": "liver", "2": "tumour"},
        "classes": {str(i + 1): kind for i, kind in enumerate(LESION_CLASSES)},
        "cases": [],
    }
    for index in range(cases):
        lesion_free = (index + 1) % LESION_FREE_EVERY == 0
        case_seed = phantom_case_seed(seed, index)
        phantom = make_phantom(case_seed, shape, spacing_zyx, lesion_count=0 if lesion_free else None)
        names = {kind: f"{kind}-{index}{suffix}" for kind in ("volume", "segmentation", "classes")}
        write_volume(phantom.ct, out / names["volume"])
        write_volume(phantom.label, out / names["segmentation"])
        write_volume(phantom.lesion_class, out / names["classes"])
        manifest["cases"].append(
            {"index": index, "seed": case_seed, **names, "lesions": [asdict(info) for info in phantom.lesions]}
        )
        if progress:
            progress(index + 1, cases)
    path = out / "manifest.json"
    write_json(path, manifest)
    return path
