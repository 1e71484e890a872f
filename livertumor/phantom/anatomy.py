"""Seeded CT-like abdominal phantoms: anatomy, contrast phase, lesions, partial volume and scanner noise.

A phantom is an axial CT of the upper abdomen in HU on an LPS grid centred on the patient (+x patient
left, +y posterior, +z superior), lying on the scanner table. From outside in: skin, subcutaneous fat of
varying thickness, the muscle wall, paraspinal and psoas muscles; ribs sloping down to the front with
costal cartilage; the spine (vertebral bodies with cortex, discs, posterior arch, spinal canal); lung
bases above domed hemidiaphragms (the right higher), the heart; aorta and inferior vena cava; spleen,
kidneys (cortex, medulla, sinus fat, collecting system), stomach (wall, fluid, gas to the front),
pancreas, gallbladder; bowel loops with gas among visceral fat. The liver is the union of a right lobe, a
left lobe of varying extent reaching across the midline and a caudate lobe, roughened by a smooth field,
moulded under the diaphragm, split in front by the falciform fissure, with portal and hepatic vein trees
inside. Tissue values per contrast phase come from :mod:`.tissues` (measured on the real scan for the
native phase); the phase is a seeded choice.

Lesions (:mod:`.lesion_kinds`) are drawn in the liver, some beside vessels and some under the capsule.
The imaging chain comes last: white noise is added and the volume blurred once by the system's point
spread (in-plane 0.8-1.3 mm FWHM, slice profile 1-1.5x the slice spacing, and the voxel's own
integration), which both gives partial volume at every edge and correlates the noise as a reconstruction
kernel does; the noise is scaled so its final sd is the one drawn (11.8 HU at 3 mm voxels, measured on the
real scan, higher for smaller voxels). Labels come from the exact shapes: 0 background, 1 liver (with its
vessels), 2 tumour; the class map holds 0 none, 1 cyst, 2 hemangioma, 3 metastasis.

Every random choice comes from one ``numpy.random.Generator`` seeded per case: a seed gives the same
volume on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..volume import Volume
from .canvas import Canvas, centred_grid, gaussian_noise_gain, smooth_field
from .lesion_kinds import draw_kinds
from .placement import (
    PLACEMENT_PROBABILITIES,
    SURFACE_PLACEMENT_PROBABILITIES,
    LesionCanvas,
    LesionInfo,
    place_lesions,
)
from .tissues import (
    MAX_NOISE_GAIN,
    PHASE_PROBABILITIES,
    PHASES,
    REFERENCE_NOISE_HU,
    REFERENCE_VOXEL_MM3,
    tissue_table,
)

#: Values of the optional organ map: the tissue names of :mod:`.tissues`, in this order (0: air).
ORGAN_MAP_TISSUES = tuple(tissue_table("native"))

DEFAULT_SHAPE = (128, 256, 256)
DEFAULT_SPACING_ZYX = (2.0, 1.5, 1.5)
#: :func:`make_phantom`'s anatomy and lesion-placement options, each off by default so that a seed keeps giving
#: the phantom it always gave: what each adds. The ``phantom`` command's flags and ``benchmarks/recipe.py``'s
#: come from it.
ANATOMY_OPTIONS = {
    "lower_right_lobe": "give the liver's right lobe a lower tongue along the lateral wall beside the kidney, as on "
    "real scans",
    "perihepatic_fat": "keep the bowel loops 2-8 mm off the liver with visceral fat, as on real scans",
    "hilar_fat": "a fat sheath around the portal vein where it enters the liver (porta hepatis), outside the liver "
    "label as on real organ maps",
    "surface_lesions": "draw half of the lesions at the liver's edge (a fifth otherwise): training sets that show "
    "more subcapsular lesions",
}


@dataclass(frozen=True)
class Phantom:
    """A case: CT (int16 HU), label map, lesion class map and lesion instance map on one grid; the
    contrast phase and the lesions as drawn."""

    ct: Volume
    label: Volume
    lesion_class: Volume
    lesion_id: Volume
    lesions: tuple[LesionInfo, ...]
    phase: str
    organs: Volume | None = None


class _Painter:
    """The HU volume being built, the tissue table of its phase, the unit-variance texture field and,
    on request, the map of which tissue each voxel holds (index into :data:`ORGAN_MAP_TISSUES`)."""

    def __init__(
        self, canvas: Canvas, table: dict[str, tuple[float, float]], texture: np.ndarray, organ_map: bool
    ) -> None:
        self.canvas, self.table, self.texture = canvas, table, texture
        self.hu = np.full(canvas.grid.shape, table["air"][0], np.float32)
        self.organs = np.zeros(canvas.grid.shape, np.uint8) if organ_map else None  # replaced by fill()

    def paint(self, window, mask: np.ndarray | None, tissue: str) -> None:
        """Give ``tissue`` (mean + texture) to ``mask`` inside ``window`` (None: nothing is drawn)."""
        if window is None:
            return
        mean, sd = self.table[tissue]
        box = self.hu[window]
        if mask is None:
            box[...] = np.float32(mean) + np.float32(sd) * self.texture[window]
        else:
            box[mask] = np.float32(mean) + np.float32(sd) * self.texture[window][mask]
        if self.organs is not None:
            self.organs[window][... if mask is None else mask] = ORGAN_MAP_TISSUES.index(tissue)

    def fill(self, layers: np.ndarray) -> None:
        """Set every voxel to its tissue in ``layers`` (indices into :data:`ORGAN_MAP_TISSUES`)."""
        means = np.array([self.table[name][0] for name in ORGAN_MAP_TISSUES], np.float32)
        spreads = np.array([self.table[name][1] for name in ORGAN_MAP_TISSUES], np.float32)
        self.hu = means[layers]
        self.hu += spreads[layers] * self.texture
        if self.organs is not None:
            self.organs = layers

    def paint_tube(self, start, end, radius: float, tissue: str, claim: np.ndarray | None = None) -> None:
        window, distance = self.canvas.tube(np.asarray(start), np.asarray(end), radius)
        if window is not None:
            mask = distance <= radius
            self.paint(window, mask, tissue)
            if claim is not None:
                claim[window] |= mask


def make_phantom(
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing_zyx: Sequence[float] = DEFAULT_SPACING_ZYX,
    lesion_count: int | None = None,
    kinds: Sequence[str] | None = None,
    phase: str | None = None,
    organ_map: bool = False,
    diameters_mm: Sequence[float] | None = None,
    lower_right_lobe: bool = False,
    perihepatic_fat: bool = False,
    hilar_fat: bool = False,
    surface_lesions: bool = False,
) -> Phantom:
    """Generate one phantom case.

    ``phase`` None draws the contrast phase (:data:`.tissues.PHASE_PROBABILITIES`). ``lesion_count``
    None draws a metastatic liver (1-6 metastases, sometimes a cyst) or a benign one (1-3 cysts or
    hemangiomas); ``kinds`` fixes each lesion's kind, cycling when shorter than the count. Anatomy scales
    down to fit a small field of view; lesion sizes stay in mm (5-80 mm) but never exceed
    :data:`.placement.MAX_LESION_SHARE` of the liver's smallest extent. ``organ_map`` also returns which tissue
    each voxel holds (before lesions; :data:`ORGAN_MAP_TISSUES`), for measuring the phantom;
    ``diameters_mm`` fixes the lesions' sizes (cycling). ``lower_right_lobe`` gives the right lobe a lower
    tongue along the lateral wall beside the kidney, where the real scan's lower liver lies (a model trained
    without it misses that part: docs/results/demo-model.md). ``perihepatic_fat`` keeps the bowel loops
    2-8 mm off the liver with visceral fat, as on the real scan, where 43 % of the tissue within 3 mm of
    the liver is fat against 10-18 % in phantoms without it (docs/results/phantom.md). ``hilar_fat`` puts a
    fat sheath around the portal vein where it enters the liver (the porta hepatis), left out of the liver
    label as on the real scan's organ map. ``surface_lesions`` places half of the lesions at the liver's edge
    (:data:`.placement.SURFACE_PLACEMENT_PROBABILITIES`), for training sets. All are off by default, so every
    seed still gives the phantom it gave before.
    """
    rng = np.random.default_rng(seed)
    if phase is None:
        phase = PHASES[int(rng.choice(len(PHASES), p=PHASE_PROBABILITIES))]
    table = tissue_table(phase)
    grid = centred_grid(shape, spacing_zyx)
    canvas = Canvas(grid)
    spacing = canvas.spacing
    texture = smooth_field(rng, grid.shape, 8.0 / spacing)  # ~8 mm parenchymal texture
    detail = smooth_field(rng, grid.shape, 5.0 / spacing)  # ~5 mm: roughness, lesion margins
    painter = _Painter(canvas, table, texture, organ_map or perihepatic_fat)  # the fat step finds bowel in the map
    body = _Body(rng, canvas, lower_right_lobe, hilar_fat)
    bowel = smooth_field(rng, grid.shape, 14.0 / spacing)  # ~14 mm: bowel loops
    body.paint_background(painter, detail, bowel)
    del bowel
    occupied = np.zeros(grid.shape, bool)  # solid organs the liver must leave alone
    body.paint_heart(painter)
    body.paint_spine_and_muscles(painter, occupied)
    body.paint_ribs(painter)
    body.paint_organs(rng, painter, occupied, detail)
    liver, vessels = body.paint_liver(rng, painter, occupied, detail)
    if perihepatic_fat:
        body.paint_perihepatic_fat(rng, painter, occupied, detail, liver)
    del occupied

    lesion_id = np.zeros(grid.shape, np.uint8)
    lesion_class = np.zeros(grid.shape, np.uint8)
    if lesion_count is None and not kinds:
        lesion_kinds = draw_kinds(rng, None)
    else:
        count = len(kinds) if lesion_count is None else int(lesion_count)
        lesion_kinds = [kinds[i % len(kinds)] for i in range(count)] if kinds else draw_kinds(rng, count)
    lesions = place_lesions(
        rng,
        LesionCanvas(canvas, painter.hu, liver, vessels, lesion_id, lesion_class, detail),
        lesion_kinds,
        phase,
        liver_hu=table["liver"][0],
        blood_hu=table["blood"][0],
        diameters_mm=diameters_mm,
        placement_probabilities=SURFACE_PLACEMENT_PROBABILITIES if surface_lesions else PLACEMENT_PROBABILITIES,
    )
    del texture, detail, vessels

    hu = _image(rng, painter.hu, spacing)
    label = liver.astype(np.uint8)
    label[lesion_id > 0] = 2
    return Phantom(
        ct=Volume(hu, grid),
        label=Volume(label, grid),
        lesion_class=Volume(lesion_class, grid),
        lesion_id=Volume(lesion_id, grid),
        lesions=lesions,
        phase=phase,
        organs=Volume(painter.organs, grid) if organ_map else None,
    )


def _image(rng: np.random.Generator, hu: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The scanner's view of ``hu``: white noise, then one point-spread blur (partial volume and noise
    correlation together), rounded to int16."""
    fwhm_xy = rng.uniform(0.8, 1.3)
    thickness = spacing[0] * rng.uniform(1.0, 1.5)
    fwhm = np.array([thickness, fwhm_xy, fwhm_xy])
    sigma = np.sqrt((fwhm / 2.355 / spacing) ** 2 + 1.0 / 12.0)  # + the voxel's own box integration
    voxel_mm3 = float(np.prod(spacing))
    noise_hu = REFERENCE_NOISE_HU * min(MAX_NOISE_GAIN, max(1.0, np.sqrt(REFERENCE_VOXEL_MM3 / voxel_mm3)))
    noise_hu *= rng.uniform(0.8, 1.25)
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu / gaussian_noise_gain(sigma))
    blurred = _blur_slices(hu, float(sigma[0]))
    for axis in (1, 2):
        ndimage.gaussian_filter1d(blurred, float(sigma[axis]), axis=axis, output=blurred, truncate=3.0)
    return np.clip(np.rint(blurred), -1024, 3071).astype(np.int16)


def _blur_slices(volume: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur along z (truncated at 3 sigma, edges repeated), as sums of whole shifted slabs:
    several times faster than a strided 1D filter along the slowest axis."""
    radius = int(3.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = volume * taps[radius]
    depth = volume.shape[0]
    index = np.arange(depth)
    for offset in range(1, radius + 1):
        weight = taps[radius + offset]
        for shift in (offset, -offset):
            inner = slice(max(0, -shift), depth - max(0, shift))
            out[inner] += weight * volume[inner.start + shift : inner.stop + shift]
            source = np.clip(index + shift, 0, depth - 1)
            edge = np.flatnonzero(source != index + shift)  # slices beyond the ends repeat the end slice
            if edge.size:
                out[edge] += weight * volume[source[edge]]
    return out


class _Body:
    """Case-specific body frame (sizes, positions) and the painting of each anatomical group."""

    def __init__(
        self, rng: np.random.Generator, canvas: Canvas, lower_right_lobe: bool = False, hilar_fat: bool = False
    ) -> None:
        self.canvas = canvas
        self.lower_right_lobe = lower_right_lobe
        self.hilar_fat = hilar_fat
        z, y, x = canvas.axes
        fov = np.asarray(canvas.grid.shape) * canvas.spacing
        self.s_xy = float(min(1.0, 0.45 * fov[2] / 165.0, 0.45 * fov[1] / 135.0))
        self.s_z = float(min(1.0, fov[0] / 260.0))
        self.bx = 165.0 * self.s_xy * rng.uniform(0.88, 1.06)
        self.by = 118.0 * self.s_xy * rng.uniform(0.88, 1.06)
        self.x0 = rng.uniform(-6.0, 6.0) * self.s_xy
        self.y0 = -0.05 * fov[1] + rng.uniform(-5.0, 5.0) * self.s_xy  # room for the table behind
        self.dome = z[-1] - 0.14 * fov[0] + rng.uniform(-10.0, 10.0) * self.s_z
        self.fat = rng.uniform(0.05, 0.16)
        self.liver_scale = rng.uniform(0.88, 1.12)
        self.left_lobe = rng.uniform(0.0, 1.0)
        self.has_gallbladder = rng.random() < 0.85
        self.has_table = rng.random() < 0.9
        u = (x[None, :] - self.x0) / self.bx
        v = (y[:, None] - self.y0) / self.by
        self.u, self.v = u, v
        # superelliptic (boxy) abdomen, wider with a gentle swell along z
        self.r2 = (np.abs(u) ** 2.4 + np.abs(v) ** 2.4) ** (1 / 2.4)
        phase = rng.uniform(0, np.pi)
        self.taper = (1.0 + 0.05 * np.sin(z / max(fov[0], 1.0) * np.pi + phase)).astype(np.float32)
        theta = np.arctan2(v, u)
        self.fat_t = (self.fat * (1.0 - 0.4 * np.sin(theta))).astype(np.float32)  # thinner over the back
        self.muscle_t = np.float32(0.065)
        # Hemidiaphragm domes, curved both ways: the right higher, lower to the sides, the front and most
        # to the back (costophrenic recesses).
        depth = 50 * self.s_z * (np.maximum(v - 0.05, 0.0) ** 2 / 0.3 + np.minimum(v + 0.1, 0.0) ** 2 / 0.5)
        right = self.dome - 60 * self.s_z * (u + 0.42) ** 2 / 0.3 - depth
        left = self.dome - 15 * self.s_z - 60 * self.s_z * (u - 0.42) ** 2 / 0.3 - depth
        self.diaphragm = np.maximum(right, left).astype(np.float32)
        self.spine_y = self.y0 + 0.56 * self.by
        self.vertebra = (16.0 * self.s_xy, 20.0 * self.s_xy)  # semi-axes y, x

    # -- helpers ---------------------------------------------------------------------------------------
    def point(self, dz: float, v: float, u: float) -> np.ndarray:
        """A point ``dz`` mm (scaled) below the dome, at body-relative ``v`` (posterior) and ``u`` (left)."""
        return np.array([self.dome + dz * self.s_z, self.y0 + v * self.by, self.x0 + u * self.bx], np.float32)

    # -- groups ----------------------------------------------------------------------------------------
    def paint_background(self, painter: _Painter, detail: np.ndarray, bowel: np.ndarray) -> None:
        """Body wall, viscera, table, lung bases and diaphragm, drawn in one pass as a map of tissues."""
        radius = self.r2[None] / self.taper[:, None, None]  # body-relative, 1 on the skin
        wall = 1.0 - self.fat_t[None]
        self.interior = radius <= wall - self.muscle_t
        index = ORGAN_MAP_TISSUES.index
        layers = np.zeros(painter.hu.shape, np.uint8)
        layers[radius <= 1.0] = index("fat")
        layers[(radius > wall - self.muscle_t) & ((radius <= wall) | ((radius > 0.985) & (radius <= 1.0)))] = index(
            "muscle"
        )
        del radius
        # viscera: bowel loops (wall, fluid and gas lumen) among visceral fat
        loops = self.interior & (bowel > -0.5)
        layers[loops] = index("bowel")
        loops &= (bowel > 0.5) & (detail > -0.3)
        layers[loops] = index("gastric_fluid")
        layers[loops & (painter.texture > 0.9)] = index("bowel_gas")
        del loops
        if self.has_table:
            y, x = self.canvas.axes[1], self.canvas.axes[2]
            table_y = self.y0 + 1.08 * self.by + 6.0 - 0.0006 * (x - self.x0) ** 2
            plate = (y[:, None] >= table_y[None, :]) & (y[:, None] <= table_y[None, :] + 5.0)
            plate &= np.abs(x - self.x0)[None, :] < 1.2 * self.bx
            layers[:, plate] = index("table")
        # lung bases above the diaphragm, a thin diaphragm muscle under them
        z = self.canvas.axes[0][:, None, None]
        above = self.interior & (z > self.diaphragm[None])
        layers[self.interior & (z > self.diaphragm[None] - 5.0)] = index("muscle")
        layers[above] = index("lung")
        painter.fill(layers)
        self.above_diaphragm = above

    def paint_heart(self, painter: _Painter) -> None:
        """The heart on the diaphragm: myocardium around the blood pool."""
        above = self.above_diaphragm
        centre = self.point(55, -0.2, 0.12)
        window, rho = self.canvas.ellipsoid(centre, np.array([60 * self.s_z, 0.42 * self.by, 0.36 * self.bx]))
        if window is not None:
            heart = (rho <= 1.0) & above[window]
            painter.paint(window, heart, "myocardium")
            painter.paint(window, heart & (rho <= 0.78), "blood")

    def paint_spine_and_muscles(self, painter: _Painter, occupied: np.ndarray) -> None:
        """Paraspinal and psoas muscles, vertebrae (cortex, cancellous bone, discs, arch, canal), aorta, IVC;
        drawn inside the box around the spine."""
        canvas, s_xy, s_z = self.canvas, self.s_xy, self.s_z
        z = canvas.axes[0]
        semi_y, semi_x = self.vertebra
        canal_y = self.spine_y + semi_y + 10.0 * s_xy
        low_y, high_y = self.spine_y - 0.16 * self.by, self.spine_y + 0.56 * self.by
        window = canvas.box((0.0, (low_y + high_y) / 2, self.x0), (1e6, (high_y - low_y) / 2, 0.3 * self.bx))
        if window is None:
            return
        full_z = (slice(None), *window[1:])
        y = canvas.axes[1][window[1]][:, None]
        x = canvas.axes[2][window[2]][None, :]
        radius = self.r2[window[1:]][None] / self.taper[:, None, None]
        inside_wall = radius <= 1.0 - self.fat_t[window[1:]][None]
        interior = self.interior[full_z]
        top = self.dome - 120 * s_z
        grow = np.clip((top - z) / (90 * s_z), 0.0, 1.0)[:, None, None]
        for side in (-1.0, 1.0):
            paraspinal = ((y - (self.spine_y + 0.33 * self.by)) / (0.2 * self.by)) ** 2 + (
                (x - (self.x0 + side * 0.15 * self.bx)) / (0.12 * self.bx)
            ) ** 2 <= 1.0
            painter.paint(full_z, paraspinal[None] & inside_wall, "muscle")
            psoas = ((y - (self.spine_y - 0.05 * self.by)) / (0.1 * self.by)) ** 2 + (
                (x - (self.x0 + side * 0.19 * self.bx)) / (0.1 * self.bx)
            ) ** 2
            painter.paint(full_z, (psoas[None] <= grow**2) & interior, "muscle")
        period = 32.0 * s_z
        bone_z = (((z - self.dome) % period) / period > 0.22)[:, None, None]
        dy, dx = (y - self.spine_y) / semi_y, (x - self.x0) / semi_x
        body = dy**2 + dx**2 <= 1.0
        cancellous = dy**2 + dx**2 <= 0.88**2
        canal_r = 9.0 * s_xy
        canal_d = np.sqrt((y - canal_y) ** 2 + (x - self.x0) ** 2)
        canal = canal_d <= canal_r
        arch = (canal_d <= canal_r + 6.0 * s_xy) & ~canal
        spinous = (np.abs(x - self.x0) <= 4.0 * s_xy) & (y > canal_y) & (y < canal_y + 30.0 * s_xy)
        painter.paint(full_z, bone_z & (body | arch | spinous)[None], "bone_cortical")
        painter.paint(full_z, bone_z & cancellous[None], "bone_cancellous")
        painter.paint(full_z, ~bone_z & body[None], "disc")
        painter.paint(full_z, np.broadcast_to(canal[None], bone_z.shape[:1] + canal.shape), "csf")
        occupied[full_z] |= (body | canal | arch)[None]
        # great vessels: aorta in front of the spine (slightly left), IVC to the right
        bottom, top_z = z[0] - 1.0, z[-1] + 1.0
        aorta_y = self.spine_y - semi_y - 12.0 * s_xy
        ivc = (self.y0 + 0.24 * self.by, self.x0 - 0.15 * self.bx)
        for centre_y, centre_x in ((aorta_y, self.x0 + 0.06 * self.bx), ivc):
            start, end = (bottom, centre_y, centre_x), (top_z, centre_y, centre_x)
            painter.paint_tube(start, end, 11.0 * s_xy, "blood", occupied)

    def paint_ribs(self, painter: _Painter) -> None:
        """Ribs in the body wall from the lower thorax down, anterior ends lower, cartilage in front."""
        canvas, s_z = self.canvas, self.s_z
        z = canvas.axes[0]
        ring_r = 1.0 - self.fat_t - 0.5 * self.muscle_t
        ring = np.abs(self.r2 - ring_r) <= 0.028
        anterior_midline = (np.abs(self.u) < 0.12) & (self.v < 0)
        ring &= ~anterior_midline & (self.v < 0.75)
        iy, ix = np.nonzero(ring)
        if iy.size == 0:
            return
        v, u = self.v[iy, 0], self.u[0, ix]
        cartilage = (np.abs(u) < 0.4) & (v < -0.4)
        half = 5.0 * s_z + 0.5 * canvas.spacing[0]
        lowest = self.dome - 150 * s_z
        for level in np.arange(z[-1] + 60 * s_z, lowest, -28.0 * s_z):
            centre = level - 55.0 * s_z * (1.0 - v) / 2.0  # the rib drops towards the front
            keep = centre > lowest
            hits = np.abs(z[:, None] - centre[None, :]) <= half
            hits &= keep[None, :]
            kz, k = np.nonzero(hits)
            if kz.size == 0:
                continue
            for tissue, part in (("rib", ~cartilage[k]), ("cartilage", cartilage[k])):
                painter.hu[kz[part], iy[k[part]], ix[k[part]]] = painter.table[tissue][0]
                if painter.organs is not None:
                    painter.organs[kz[part], iy[k[part]], ix[k[part]]] = ORGAN_MAP_TISSUES.index(tissue)

    def paint_organs(
        self, rng: np.random.Generator, painter: _Painter, occupied: np.ndarray, detail: np.ndarray
    ) -> None:
        canvas, s_z, s_xy = self.canvas, self.s_z, self.s_xy
        interior = self.interior
        # kidneys: cortex, medulla, sinus fat and the collecting system (contrast in the delayed phase)
        for side, drop in ((-1.0, 150.0), (1.0, 135.0)):
            centre = self.point(-drop, 0.5, side * 0.33)
            semi = np.array([52 * s_z, 26 * s_xy, 24 * s_xy]) * rng.uniform(0.9, 1.1)
            window, rho = canvas.ellipsoid(centre, semi)
            if window is None:
                continue
            kidney = (rho <= 1.0) & interior[window]
            medial = canvas.offsets(window, centre)[2] * side < 0
            painter.paint(window, kidney, "kidney_cortex")
            painter.paint(window, kidney & (rho <= 0.72), "kidney_medulla")
            painter.paint(window, kidney & (rho <= 0.5) & medial, "fat")
            painter.paint(window, kidney & (rho <= 0.32) & medial, "urine")
            occupied[window] |= kidney
        # spleen: a crescent behind the stomach, left upper quadrant
        centre = self.point(-55, 0.3, 0.62)
        semi = np.array([50 * s_z, 0.36 * self.by, 0.2 * self.bx]) * rng.uniform(0.8, 1.2)
        window, rho = canvas.ellipsoid(centre, semi)
        if window is not None:
            hollow_centre = centre + np.array([0, -0.35 * semi[1], -0.8 * semi[2]], np.float32)
            dz, dy, dx = canvas.offsets(window, hollow_centre)
            hollow = (dz / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dx / semi[2]) ** 2 <= 0.7
            spleen = (rho <= 1.0) & ~hollow & interior[window] & ~occupied[window]
            painter.paint(window, spleen, "spleen")
            occupied[window] |= spleen
        # stomach: wall, fluid, gas rising to the front (the patient lies supine)
        centre = self.point(-55, -0.2, 0.28)
        semi = np.array([45 * s_z, 0.28 * self.by, 0.22 * self.bx]) * rng.uniform(0.85, 1.15)
        window, rho = canvas.ellipsoid(centre, semi)
        if window is not None:
            stomach = (rho <= 1.0) & interior[window] & ~occupied[window]
            dy = canvas.offsets(window, centre)[1]
            painter.paint(window, stomach, "bowel")
            lumen = stomach & (rho <= 0.85)
            painter.paint(window, lumen, "gastric_fluid")
            painter.paint(window, lumen & (dy < -rng.uniform(0.2, 0.5) * semi[1]), "bowel_gas")
            occupied[window] |= stomach
        # pancreas: head by the duodenum, body over the aorta, tail to the splenic hilum; lobulated
        points = [self.point(-118, 0.06, -0.12), self.point(-106, 0.05, 0.04), self.point(-88, 0.28, 0.42)]
        for (start, end), radius in zip(zip(points, points[1:]), (14.0, 10.0)):
            window, distance = canvas.tube(start, end, radius * s_xy)
            if window is None:
                continue
            pancreas = (distance <= radius * s_xy) & interior[window] & ~occupied[window]
            painter.paint(window, pancreas & (detail[window] > -0.8), "pancreas")
            occupied[window] |= pancreas
        # gallbladder under the liver's right lobe
        if self.has_gallbladder:
            centre = self.point(-112, -0.22, -0.3)
            semi = np.array([32 * s_z, 15 * s_xy, 14 * s_xy]) * rng.uniform(0.8, 1.2)
            window, rho = canvas.ellipsoid(centre, semi)
            if window is not None:
                gallbladder = (rho <= 1.0) & interior[window]
                painter.paint(window, gallbladder, "gallbladder")
                occupied[window] |= gallbladder

    def paint_liver(
        self, rng: np.random.Generator, painter: _Painter, occupied: np.ndarray, detail: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The liver's lobes moulded under the diaphragm, its fissure and vessels; returns (liver, vessels)."""
        canvas, s_z, s_xy, k = self.canvas, self.s_z, self.s_xy, self.liver_scale
        right_centre = self.point(-78 * k, 0.02, -0.45)
        right_semi = np.array([82 * s_z, 0.58 * self.by, 0.42 * self.bx]) * k * rng.uniform(0.92, 1.08, 3)
        left_extent = self.left_lobe
        left_centre = self.point(-45 * k, -0.38, -0.08 + 0.22 * left_extent)
        left_semi = np.array([38 * s_z, 0.26 * self.by, (0.22 + 0.24 * left_extent) * self.bx]) * k
        caudate_centre = self.point(-62 * k, 0.22, -0.06)
        caudate_semi = np.array([30 * s_z, 0.14 * self.by, 0.1 * self.bx]) * k
        parts = ((right_centre, right_semi), (left_centre, left_semi), (caudate_centre, caudate_semi))
        low = np.min([c - s for c, s in parts], axis=0)
        high = np.max([c + s for c, s in parts], axis=0)
        window = canvas.box((low + high) / 2, (high - low) / 2 * 1.1)
        liver = np.zeros(canvas.grid.shape, bool)
        vessels = np.zeros(canvas.grid.shape, bool)
        if window is None:
            return liver, vessels
        rho = np.full([s.stop - s.start for s in window], np.inf, np.float32)
        for centre, semi in parts:
            dz, dy, dx = canvas.offsets(window, centre)
            rho = np.minimum(rho, np.sqrt((dz / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dx / semi[2]) ** 2))
        rho -= np.float32(0.07) * detail[window]
        z = canvas.axes[0][window[0]][:, None, None]
        below_diaphragm = z <= self.diaphragm[window[1:]][None] - 5.0
        local = (rho <= 1.0) & self.interior[window] & below_diaphragm & ~occupied[window]
        # falciform fissure: a short fat cleft in the front of the liver's lower half, between the lobes
        dz, dy, dx = canvas.offsets(window, left_centre)
        fissure_x = left_centre[2] - left_semi[2] * 0.55
        cleft = (np.abs(canvas.offsets(window, (0, 0, fissure_x))[2]) <= max(1.5, 0.6 * canvas.spacing[2])) & (
            dy < -0.45 * left_semi[1]
        )
        cleft = cleft & (dz < 0.0)
        painter.paint(window, local & cleft, "fat")
        local &= ~cleft
        liver[window] = local
        painter.paint(window, local, "liver")
        # portal vein: from the confluence behind the pancreas neck to the hilum, then into both lobes
        hilum = self.point(-88 * k, 0.05, -0.2)
        confluence = self.point(-104, 0.12, 0.02)
        portal = np.zeros(canvas.grid.shape, bool) if self.hilar_fat else None  # the vein the hilar fat leaves
        painter.paint_tube(confluence, hilum, 7.0 * s_xy, "portal_vein", claim=portal)
        first_branches = [(confluence, hilum)]
        targets = {"portal_vein": [right_centre, left_centre, right_centre - np.float32([40 * s_z, 0, 0])]}
        ivc_top = np.array([self.dome - 12 * s_z, self.y0 + 0.24 * self.by, self.x0 - 0.15 * self.bx], np.float32)
        targets["hepatic_vein"] = [
            self.point(-60 * k, -0.2, -0.7),
            self.point(-55 * k, -0.35, -0.3),
            self.point(-45 * k, -0.4, 0.05 + 0.2 * left_extent),
        ]
        for tissue, root, radius in (("portal_vein", hilum, 6.0), ("hepatic_vein", ivc_top, 5.5)):
            tree = np.zeros(canvas.grid.shape, bool)
            branches = [(root, np.asarray(t, np.float32), radius * s_xy + 0.5, 0) for t in targets[tissue]]
            while branches:
                start, target, vessel_r, depth = branches.pop()
                end = start + (target - start) * rng.uniform(0.6, 0.9)
                window_t, distance = canvas.tube(start, end, vessel_r)
                if window_t is not None:
                    tree[window_t] |= distance <= vessel_r
                if tissue == "portal_vein" and depth == 0:
                    first_branches.append((start, end))
                if depth < 2:
                    for _ in range(2):
                        spread = rng.uniform(-0.35, 0.35, 3).astype(np.float32) * right_semi
                        branches.append((end, end + (end - start) * 0.8 + spread, max(1.0, vessel_r * 0.62), depth + 1))
            tree &= liver
            painter.paint(window, tree[window], tissue)
            vessels |= tree
            if tissue == "portal_vein" and portal is not None:
                portal |= tree
        if self.lower_right_lobe:
            self.paint_lower_right_lobe(rng, painter, occupied, detail, liver)
        if portal is not None:
            self.paint_hilar_fat(rng, painter, detail, liver, vessels, portal, first_branches)
        return liver, vessels

    def paint_hilar_fat(
        self,
        rng: np.random.Generator,
        painter: _Painter,
        detail: np.ndarray,
        liver: np.ndarray,
        vessels: np.ndarray,
        portal: np.ndarray,
        first_branches: list[tuple[np.ndarray, np.ndarray]],
    ) -> None:
        """The porta hepatis: a fat sheath 2-4 mm thick, irregular, around the portal trunk where it enters the
        liver and its first branches for 10-25 mm past the hilum, cut out of ``liver`` and ``vessels`` (the
        real scan's organ map leaves the hilum out of the liver). The vein stays inside it. On the real
        non-contrast scan a model trained without it marks that fat-and-vein mix (~25 HU) as tumour."""
        reach = rng.uniform(10.0, 25.0)
        sheath = np.zeros(liver.shape, bool)
        trunk_radius = 7.0 * self.s_xy
        for number, (start, end) in enumerate(first_branches):
            length = float(np.linalg.norm(end - start))
            if number > 0 and length > reach:  # branches: only their first ``reach`` mm
                end = start + (end - start) * (reach / length)
            thickness = rng.uniform(2.0, 4.0)
            radius = trunk_radius + thickness
            window, distance = self.canvas.tube(start, end, radius * 1.5)
            if window is not None:
                sheath[window] |= distance <= radius + 0.5 * thickness * detail[window]
        sheath &= liver
        painter.paint((slice(None),) * 3, sheath & ~portal, "fat")
        liver &= ~sheath
        vessels &= ~sheath

    def paint_perihepatic_fat(
        self, rng: np.random.Generator, painter: _Painter, occupied: np.ndarray, detail: np.ndarray, liver: np.ndarray
    ) -> None:
        """Visceral fat instead of bowel loops (wall, fluid, gas) within a margin of 2-8 mm around the liver,
        irregular along the surface; organs (the stomach included) keep their contact with it."""
        canvas = self.canvas
        margin = rng.uniform(2.0, 8.0)
        reach = int(np.ceil(1.5 * margin / canvas.spacing.min())) + 1  # 1.5 margins past the liver's box
        found = ndimage.find_objects(liver.astype(np.uint8))
        if not found:
            return
        window = tuple(slice(max(0, s.start - reach), min(n, s.stop + reach)) for s, n in zip(found[0], liver.shape))
        distance = ndimage.distance_transform_edt(~liver[window], sampling=canvas.spacing)
        near = distance <= margin * (1.0 + 0.5 * detail[window])
        index = ORGAN_MAP_TISSUES.index
        loops = np.isin(painter.organs[window], [index("bowel"), index("gastric_fluid"), index("bowel_gas")])
        painter.paint(window, near & loops & ~occupied[window], "fat")

    def paint_lower_right_lobe(
        self, rng: np.random.Generator, painter: _Painter, occupied: np.ndarray, detail: np.ndarray, liver: np.ndarray
    ) -> None:
        """The right lobe's lower tongue: down the lateral wall, lateral to the right kidney, reaching 2-6 cm
        below the lobe's body (drawn), added to ``liver``. On the real scan's organ map the lower liver is
        such a tongue, not the rounded mid-depth end of the lobe's ellipsoid."""
        canvas, k = self.canvas, self.liver_scale
        length = rng.uniform(0.0, 1.0)
        centre = self.point(-(130 + 20 * length) * k, 0.2 + rng.uniform(-0.08, 0.08), -0.72)
        semi = np.array([(48 + 22 * length) * self.s_z, 0.34 * self.by, 0.17 * self.bx]) * k
        window, rho = canvas.ellipsoid(centre, semi)
        if window is None:
            return
        rho = rho - np.float32(0.07) * detail[window]  # the same roughness as the lobes'
        tongue = (rho <= 1.0) & self.interior[window] & ~occupied[window] & ~liver[window]
        painter.paint(window, tongue, "liver")
        liver[window] |= tongue
