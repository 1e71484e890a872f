"""Tissue attenuation per contrast phase: the one table the phantom generator and its tests read.

Each entry is ``(mean HU, texture sd HU)``: the mean of the tissue before noise, and the spread of its
own low-frequency texture (organ parenchyma, fat strands, muscle marbling), which the scanner noise adds
to.

Native phase: measured on the real non-contrast scan ``../shared/data/real/totalsegmentator/
example_ct_sm.nii.gz`` against its TotalSegmentator organ map ``example_ct_sm_totalseg.nii.gz`` (voxels
eroded by one to leave partial volume out; mean ± sd of CT values, which include the scan's noise of
11.8 HU measured as the local residual inside the liver):

============== ======================= ==============================
structure       map label(s)            measured mean ± sd (HU)
============== ======================= ==============================
liver           5                       46.6 ± 12.9
spleen          1                       34.9 ± 12.3
kidneys         2, 3                    13.0 ± 23.3, 19.4 ± 16.1
gallbladder     4                       3.4 ± 11.3
pancreas        7                       3.3 ± 25.9 (fatty)
aorta / IVC     52 / 63                 42.2 ± 12.7 / 41.0 ± 12.5
portal vein     64                      40.8 ± 11.9
spinal cord     79                      16.1 ± 16.6
back muscles    86, 87                  26.4 ± 17.2, 24.0 ± 18.4
psoas           88, 89                  38.3 ± 14.7, 38.2 ± 14.5
vertebrae       30-32 (L2-T12)          123.6-136.4 ± 67-106
ribs            98-115                  175-270 ± 65-112
costal cartil.  117                     112.2 ± 14.4
lung bases      11, 14                  -767 / -790 ± 57-68
fat (unlabelled body voxels -200..-30)  -99.8 ± 16.7
air outside the body                    -981 ± 40
============== ======================= ==============================

The texture sd is what is left after the noise is taken out: liver sqrt(12.9² - 11.8²) ≈ 5 HU.

Contrast phases: typical enhancement of a 1.5-2 ml/kg, 300-370 mgI/ml injection at ~35 s (late
arterial), ~70 s (portal venous) and 3-5 min (delayed), from Bae KT, "Intravenous contrast medium
administration and scan timing at CT", Radiology 2010;256:32-61 (aortic peak ~250-350 HU arterial,
hepatic parenchyma +50-60 HU over native in the portal venous phase, equilibrium blood ~110-130 HU),
and the kidney's corticomedullary/nephrographic/excretory phases of Yuh BI, Cohan RH, "Different
phases of renal enhancement", AJR 1999;173:747-755. Native organs keep the measured values above; each
phase adds its enhancement to them.
"""

from __future__ import annotations

PHASES = ("native", "arterial", "portal-venous", "delayed")
#: How often each phase is drawn for a phantom: portal venous is the routine liver protocol.
PHASE_PROBABILITIES = (0.2, 0.2, 0.4, 0.2)

_NATIVE = {
    "air": (-1000.0, 0.0),
    "lung": (-790.0, 65.0),
    "fat": (-100.0, 12.0),
    "muscle": (27.0, 12.0),
    "bowel": (20.0, 12.0),
    "bowel_gas": (-900.0, 40.0),
    "gastric_fluid": (15.0, 8.0),
    "bone_cortical": (420.0, 60.0),
    "bone_cancellous": (110.0, 35.0),
    "rib": (230.0, 50.0),
    "cartilage": (112.0, 10.0),
    "disc": (80.0, 10.0),
    "csf": (16.0, 4.0),
    "blood": (42.0, 3.0),
    "myocardium": (40.0, 4.0),
    "portal_vein": (41.0, 3.0),
    "hepatic_vein": (41.0, 3.0),
    "liver": (47.0, 5.0),
    "spleen": (35.0, 4.0),
    "kidney_cortex": (20.0, 14.0),
    "kidney_medulla": (14.0, 14.0),
    "urine": (8.0, 3.0),
    "pancreas": (6.0, 22.0),
    "gallbladder": (4.0, 3.0),
    "table": (150.0, 20.0),
}

#: Enhancement over native (HU) per phase; tissues not named do not enhance.
_ENHANCEMENT = {
    "arterial": {
        "blood": 260.0,
        "myocardium": 80.0,
        "portal_vein": 110.0,
        "hepatic_vein": 10.0,
        "liver": 18.0,
        "spleen": 85.0,
        "kidney_cortex": 170.0,
        "kidney_medulla": 50.0,
        "pancreas": 85.0,
        "muscle": 15.0,
        "bowel": 40.0,
    },
    "portal-venous": {
        "blood": 130.0,
        "myocardium": 70.0,
        "portal_vein": 140.0,
        "hepatic_vein": 120.0,
        "liver": 58.0,
        "spleen": 85.0,
        "kidney_cortex": 165.0,
        "kidney_medulla": 140.0,
        "pancreas": 75.0,
        "muscle": 25.0,
        "bowel": 45.0,
    },
    "delayed": {
        "blood": 75.0,
        "myocardium": 45.0,
        "portal_vein": 75.0,
        "hepatic_vein": 75.0,
        "liver": 38.0,
        "spleen": 55.0,
        "kidney_cortex": 120.0,
        "kidney_medulla": 125.0,
        "urine": 550.0,
        "pancreas": 50.0,
        "muscle": 25.0,
        "bowel": 30.0,
    },
}

#: Extra texture per phase: the spleen's arciform (zebra) enhancement in the arterial phase.
_TEXTURE = {"arterial": {"spleen": 28.0, "kidney_medulla": 15.0}}


def tissue_table(phase: str) -> dict[str, tuple[float, float]]:
    """``{tissue: (mean HU, texture sd HU)}`` in ``phase`` (one of :data:`PHASES`)."""
    if phase not in PHASES:
        raise ValueError(f"unknown contrast phase {phase!r}; known: {', '.join(PHASES)}")
    enhancement = _ENHANCEMENT.get(phase, {})
    texture = _TEXTURE.get(phase, {})
    return {name: (mean + enhancement.get(name, 0.0), texture.get(name, sd)) for name, (mean, sd) in _NATIVE.items()}


#: Scanner noise measured on the real scan (3 mm voxels): 11.8 HU. Finer voxels are noisier
#: (sd ∝ 1/sqrt(voxel volume)), capped at 1.5x; each case draws a dose factor around it.
REFERENCE_NOISE_HU = 11.8
REFERENCE_VOXEL_MM3 = 27.0
MAX_NOISE_GAIN = 1.5
