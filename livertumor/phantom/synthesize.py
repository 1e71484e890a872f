"""Synthetic lesions in real scans: the label-free route to training data from healthy livers.

Seeded cysts, hemangiomas and metastases (:mod:`.lesion_kinds`) are painted into the liver of a real CT,
with their HU set relative to the scan's own liver (its median) and blood pool (the phase's), inside the
liver mask only. The scan keeps its noise grain inside each lesion (its fine residual, CT minus a 1-voxel
Gaussian, is added back) and every lesion edge is softened by the scan's partial volume (a 0.5-voxel
Gaussian). Voxels outside the painted lesions keep their exact values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import LiverTumorError
from ..io import check_ct_values, read_image
from ..preprocess import mask_box
from ..volume import Volume
from .anatomy import Phantom
from .canvas import Canvas, smooth_field
from .dataset import manifest_header, write_cases
from .lesion_kinds import draw_kinds
from .placement import LesionCanvas, LesionInfo, place_lesions
from .tissues import PHASES, tissue_table

#: Room (mm) kept around the liver's box for lesion edges and metastasis halos.
BOX_MARGIN_MM = 30.0
PARTIAL_VOLUME_SIGMA_VOXELS = 0.5


def estimate_phase(ct: np.ndarray, liver: np.ndarray) -> str:
    """The contrast phase whose liver attenuation (:mod:`.tissues`) is nearest the scan's median liver HU."""
    liver_hu = float(np.median(ct[liver]))
    return min(PHASES, key=lambda phase: abs(tissue_table(phase)["liver"][0] - liver_hu))


def _liver_mask(liver: Volume, liver_label: int | None, source: str) -> np.ndarray:
    mask = liver.array != 0 if liver_label is None else liver.array == liver_label
    if not mask.any():
        which = "a non-zero voxel" if liver_label is None else f"a voxel of label {liver_label}"
        raise LiverTumorError(f"the liver mask {source} has no liver: not {which} in it")
    return mask


def synthesize_case(
    ct: Volume,
    liver: Volume,
    seed: int = 0,
    phase: str | None = None,
    liver_label: int | None = None,
    kinds: Sequence[str] | None = None,
) -> Phantom:
    """Paint seeded lesions into the liver of ``ct`` (HU) and return the case on the CT's own grid.

    ``liver`` is a mask or organ map on the same grid (``liver_label`` picks the liver's value; None: any
    non-zero voxel). ``phase`` None estimates the contrast phase from the liver's HU
    (:func:`estimate_phase`); ``kinds`` None draws a metastatic or benign liver as the phantoms do.
    The label map is 1 in the liver mask and 2 in the lesions; the CT keeps its dtype.
    """
    ct.grid.require_same(liver.grid, "the CT", "its liver mask")
    check_ct_values(ct, "the CT")
    mask = _liver_mask(liver, liver_label, "given")
    rng = np.random.default_rng(seed)
    source = ct.array.astype(np.float32)
    phase = estimate_phase(source, mask) if phase is None else phase
    table = tissue_table(phase)
    spacing = np.asarray(ct.grid.spacing_zyx)
    window = mask_box(mask, spacing, BOX_MARGIN_MM)
    start, stop = [s.start for s in window], [s.stop for s in window]
    hu = source[window].copy()
    liver_box = mask[window]
    canvas = Canvas(ct.grid.crop(tuple(start), tuple(stop)))
    residual = hu - ndimage.gaussian_filter(hu, 1.0, truncate=3.0)
    lesion_id = np.zeros(hu.shape, np.uint8)
    lesion_class = np.zeros(hu.shape, np.uint8)
    target = LesionCanvas(
        canvas,
        hu,
        liver_box,
        None,
        lesion_id,
        lesion_class,
        smooth_field(rng, hu.shape, 4.0 / spacing),
        residual=residual,
        edge_sigma_voxels=PARTIAL_VOLUME_SIGMA_VOXELS,
    )
    lesion_kinds = list(kinds) if kinds is not None else draw_kinds(rng, None)
    lesions = place_lesions(
        rng,
        target,
        lesion_kinds,
        phase,
        liver_hu=float(np.median(source[mask])),
        blood_hu=table["blood"][0],
    )
    out_ct = ct.array.copy()
    painted = np.asarray(hu)
    if np.issubdtype(out_ct.dtype, np.integer):
        info = np.iinfo(out_ct.dtype)
        painted = np.clip(np.rint(painted), info.min, info.max)
    changed = painted != source[window]
    out_ct[window][changed] = painted[changed].astype(out_ct.dtype)
    label = mask.astype(np.uint8)
    full_id = np.zeros(ct.shape, np.uint8)
    full_class = np.zeros(ct.shape, np.uint8)
    full_id[window] = lesion_id
    full_class[window] = lesion_class
    label[full_id > 0] = 2
    lesions = tuple(_shift_info(info, start) for info in lesions)
    return Phantom(
        ct=ct.with_array(out_ct),
        label=ct.with_array(label),
        lesion_class=ct.with_array(full_class),
        lesion_id=ct.with_array(full_id),
        lesions=lesions,
        phase=phase,
    )


def _shift_info(info: LesionInfo, start: Sequence[int]) -> LesionInfo:
    """A lesion's description with its centre index moved from the liver's box to the whole CT."""
    centre = tuple(round(float(c + s), 3) for c, s in zip(info.centre_index_zyx, start))
    return replace(info, centre_index_zyx=centre)


def synthesize(
    ct: str | os.PathLike | Volume,
    liver: str | os.PathLike | Volume,
    out: str | os.PathLike,
    cases: int = 1,
    seed: int = 0,
    phase: str | None = None,
    liver_label: int | None = None,
    suffix: str = ".nii.gz",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``cases`` seeded variants of a real CT with synthetic lesions in its liver, in the LiTS
    layout (``volume-N``, ``segmentation-N`` 0/1/2, ``classes-N`` 1 cyst / 2 hemangioma / 3 metastasis)
    with ``manifest.json`` under ``out``; returns the manifest's path. See :func:`synthesize_case`."""
    ct_volume = ct if isinstance(ct, Volume) else read_image(ct)
    liver_volume = liver if isinstance(liver, Volume) else read_image(liver)
    if phase is not None and phase not in PHASES:
        raise LiverTumorError(f"unknown contrast phase {phase!r}; known: {', '.join(PHASES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = manifest_header(
        "livertumor.phantom.synthesize",
        seed,
        source_ct=None if isinstance(ct, Volume) else str(ct),
        source_liver=None if isinstance(liver, Volume) else str(liver),
        liver_label=liver_label,
    )
    return write_cases(
        out,
        manifest,
        cases,
        seed,
        suffix,
        progress,
        lambda index, case_seed: synthesize_case(
            ct_volume, liver_volume, case_seed, phase=phase, liver_label=liver_label
        ),
    )
