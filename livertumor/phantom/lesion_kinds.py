"""Liver lesion kinds and their CT appearance per contrast phase; one painter for phantoms and real scans.

The features are those radiologists use to tell the three kinds apart on multiphase CT:

* **cyst** (simple hepatic cyst): water attenuation 0-20 HU in every phase, homogeneous, sharp margin,
  imperceptible wall, no enhancement. Mortelé KJ, Ros PR, "Cystic focal liver lesions in the adult:
  differential CT and MR imaging features", RadioGraphics 2001;21:895-910.
* **hemangioma**: unenhanced it follows the blood pool (slightly below liver); after contrast,
  peripheral discontinuous nodular enhancement as bright as the aorta/blood pool, filling in centripetally
  from arterial to portal venous to delayed phase; well defined, lobulated. Small ones (< 10 mm) often
  "flash-fill" (homogeneous, blood-pool bright). Horton KM et al., "CT and MR imaging of benign hepatic
  and biliary tumors", RadioGraphics 1999;19:431-451; Leslie DF et al., "Distinction of hepatic
  hemangioma from hypervascular metastases", AJR 1995;164:625-629.
* **metastasis** (hypovascular, e.g. colorectal): hypodense, ill-defined margin; a thin continuous rim
  of enhancement in the arterial phase; in the portal venous phase a target appearance (hypodense,
  partly necrotic centre, enhancing rim, hypodense perilesional halo); in the delayed phase peripheral
  washout (the rim darker than the centre); often several. Sica GT, Ji H, Ros PR, "CT and MR imaging of
  hepatic metastases", AJR 2000;174:691-698.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LESION_CLASSES = ("cyst", "hemangioma", "metastasis")

#: Lesion diameter ranges (mm) and how often each is drawn.
SIZE_RANGES_MM = ((5.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, 80.0))
SIZE_PROBABILITIES = (0.3, 0.3, 0.25, 0.15)

#: Blood-pool fraction filled by a hemangioma's centripetal enhancement in each contrast phase.
HEMANGIOMA_FILL = {"arterial": 0.2, "portal-venous": 0.5, "delayed": 0.85}
#: Below this diameter (mm) a hemangioma flash-fills.
FLASH_FILL_MM = 10.0
#: A metastasis's enhancing rim is a few mm thick whatever its size (at most this share of the radius):
#: the hypodense core fills most of the lesion.
METASTASIS_RIM_MM = 1.5
METASTASIS_MAX_RIM_SHARE = 0.25
#: A metastasis's appearance fades out to this normalised radius: its ill-defined margin and halo.
METASTASIS_FADE = 1.3
#: Boundary irregularity of each kind (relative radius jitter): sharp cysts, lobulated hemangiomas,
#: irregular metastases.
BOUNDARY_JITTER = {"cyst": 0.02, "hemangioma": 0.07, "metastasis": 0.14}
#: Internal texture sd (HU): cysts homogeneous, metastases heterogeneous.
LESION_TEXTURE_HU = {"cyst": 2.0, "hemangioma": 6.0, "metastasis": 10.0}


def draw_diameter(rng: np.random.Generator) -> float:
    """A lesion diameter (mm) from :data:`SIZE_RANGES_MM`."""
    low, high = SIZE_RANGES_MM[rng.choice(len(SIZE_RANGES_MM), p=SIZE_PROBABILITIES)]
    return float(rng.uniform(low, high))


def draw_kinds(rng: np.random.Generator, count: int | None) -> list[str]:
    """The lesion kinds of one liver: metastatic (1-6 metastases, mostly several; sometimes a cyst) or
    benign (cysts and hemangiomas). ``count`` None draws the number too."""
    if rng.random() < 0.4:
        number = int(rng.choice(6, p=[0.15, 0.2, 0.2, 0.15, 0.15, 0.15])) + 1 if count is None else count
        kinds = ["metastasis"] * number
        if count is None and rng.random() < 0.3:
            kinds.append("cyst")
        elif count is not None and number > 1 and rng.random() < 0.3:
            kinds[-1] = "cyst"
        return kinds
    number = int(rng.integers(1, 4)) if count is None else count
    return [("cyst", "hemangioma")[int(rng.integers(0, 2))] for _ in range(number)]


def lesion_appearance(
    rng: np.random.Generator,
    kind: str,
    phase: str,
    liver_hu: float,
    blood_hu: float,
    diameter_mm: float,
    rho: np.ndarray,
    normalised_offsets: Sequence[np.ndarray],
    texture: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(value, alpha)`` of one lesion inside its box.

    ``rho`` is the lesion's normalised radius (1 on its boundary, jitter included); the lesion label is
    ``rho <= 1``. ``normalised_offsets`` are the (z, y, x) offsets from the centre divided by the
    semi-axes (for hemangioma nodules); ``texture`` a unit-variance smooth field on the box. ``value``
    is the lesion's HU, ``alpha`` (0-1) how much it replaces the tissue beneath: 1 inside, fading over
    a metastasis's ill-defined margin.
    """
    inside = rho <= 1.0
    noise = np.float32(LESION_TEXTURE_HU[kind]) * texture
    if kind == "cyst":
        return np.float32(rng.uniform(2.0, 15.0)) + noise, inside.astype(np.float32)
    if kind == "hemangioma":
        unenhanced = np.float32(blood_hu if phase == "native" else rng.uniform(38.0, 48.0))
        value = np.full(rho.shape, unenhanced, np.float32)
        if phase != "native":
            pool = np.float32(blood_hu * rng.uniform(0.85, 1.0))
            if diameter_mm < FLASH_FILL_MM:
                value[...] = pool
            else:
                value = np.where(_nodules(rng, normalised_offsets, HEMANGIOMA_FILL[phase]), pool, value)
        return value + noise, inside.astype(np.float32)
    if kind == "metastasis":
        core, rim, halo = _metastasis_values(rng, phase, liver_hu)
        rim_start = 1.0 - min(METASTASIS_MAX_RIM_SHARE, METASTASIS_RIM_MM / (diameter_mm / 2))
        value = np.where(rho <= rim_start, core, np.where(rho <= 1.0, rim, halo)).astype(np.float32)
        fade = np.clip((METASTASIS_FADE - rho) / (METASTASIS_FADE - 0.9), 0.0, 1.0).astype(np.float32)
        return value + noise, fade
    raise ValueError(f"unknown lesion kind {kind!r}; known: {', '.join(LESION_CLASSES)}")


def _nodules(rng: np.random.Generator, offsets: Sequence[np.ndarray], fill: float) -> np.ndarray:
    """Peripheral enhancing nodules that grow towards the centre as ``fill`` rises (centripetal)."""
    radius = np.float32(0.18 + 0.9 * fill)
    nodules = np.zeros(np.broadcast_shapes(*(o.shape for o in offsets)), bool)
    for _ in range(int(rng.integers(5, 10))):
        direction = rng.standard_normal(3)
        centre = 0.88 * direction / np.linalg.norm(direction)
        distance2 = sum((offsets[i] - np.float32(centre[i])) ** 2 for i in range(3))
        nodules |= distance2 <= radius**2 * np.float32(rng.uniform(0.7, 1.2))
    return nodules


def _metastasis_values(rng: np.random.Generator, phase: str, liver_hu: float) -> tuple[float, float, float]:
    """Core, rim and perilesional HU of a hypovascular metastasis relative to the liver in ``phase``."""
    if phase == "native":
        core = liver_hu - rng.uniform(15.0, 25.0)
        return core, core + rng.uniform(0.0, 5.0), liver_hu - 5.0
    if phase == "arterial":
        return liver_hu - rng.uniform(20.0, 30.0), liver_hu + rng.uniform(25.0, 45.0), liver_hu
    if phase == "portal-venous":
        core = max(25.0, liver_hu - rng.uniform(45.0, 65.0))
        return core, liver_hu + rng.uniform(5.0, 20.0), liver_hu - rng.uniform(12.0, 20.0)
    if phase == "delayed":  # peripheral washout: the rim ends darker than the centre
        core = liver_hu - rng.uniform(20.0, 30.0)
        return core, core - rng.uniform(10.0, 20.0), liver_hu - 8.0
    raise ValueError(f"unknown contrast phase {phase!r}")
