"""Where a model's liver and tumour go wrong on the real non-contrast CT: missed and extra liver by organ of
the TotalSegmentator map, the missed liver's distance to the predicted one, each tumour component of
0.3 mL or more (size, slices, median HU, organs under it), and a figure of four slices.

    python benchmarks/real_liver_errors.py [--figure docs/results/real-liver-errors.png] MODEL [MODEL ...]

The organ map (``example_ct_sm_totalseg.nii.gz``) comes from a model, not a hand: a good approximate
reference for the liver and its neighbours, not ground truth. The figure (first model) outlines the map's
liver in green, the predicted liver in red and predicted tumour in yellow, in radiological orientation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from recipe_evaluate import REAL  # the benchmarks folder is the script's path
from scipy import ndimage

from livertumor.inference import segment
from livertumor.io import read_ct, read_image
from livertumor.plotting import pyplot, radiological_axial, save_figure

LIVER = 5
#: TotalSegmentator v2 "total" classes near the liver (the rest are named by number).
ORGANS = {
    0: "no organ",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    52: "aorta",
    63: "inferior vena cava",
    64: "portal and splenic vein",
}
FIGURE_SLICES = (3, 10, 18, 27)


def by_organ(mask: np.ndarray, organs: np.ndarray, voxel_ml: float) -> str:
    """The mL of ``mask`` in each organ of the map, largest first."""
    values, counts = np.unique(organs[mask], return_counts=True)
    ranked = sorted(zip(values.tolist(), counts.tolist()), key=lambda pair: -pair[1])
    return ", ".join(f"{ORGANS.get(v, f'class {v}')} {c * voxel_ml:.1f}" for v, c in ranked[:6]) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()
    ct = read_ct(REAL / "example_ct_sm.nii.gz")
    organs = read_image(REAL / "example_ct_sm_totalseg.nii.gz").array
    liver, voxel_ml = organs == LIVER, ct.grid.voxel_volume_ml
    for number, model in enumerate(args.models):
        labels = segment(ct, model=model, device="cpu").labels.array
        predicted = labels >= 1
        missed = liver & ~predicted
        near = ndimage.binary_dilation(predicted, np.ones((1, 3, 3), bool), iterations=2)
        per_slice = missed.sum((1, 2)) / np.maximum(liver.sum((1, 2)), 1)
        print(f"{model}: liver {liver.sum() * voxel_ml:.0f} mL in the map, {predicted.sum() * voxel_ml:.0f} predicted")
        print(
            f"  missed {missed.sum() * voxel_ml:.0f} mL, mean {ct.array[missed].mean():.0f} HU (found liver "
            f"{ct.array[liver & predicted].mean():.0f} HU); {(missed & near).sum() / max(missed.sum(), 1):.2f} of it "
            "within 2 in-plane voxels of the predicted liver"
        )
        print("  share of each slice's liver missed, z from 0: " + " ".join(f"{share:.2f}" for share in per_slice))
        print(f"  liver or tumour outside the map's liver, mL: {by_organ(predicted & ~liver, organs, voxel_ml)}")
        print(f"  tumour, mL: {by_organ(labels == 2, organs, voxel_ml)}")
        components, _ = ndimage.label(labels == 2)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            component = components[box] == index  # within its bounding box: one pass over the volume in all
            if component.sum() * voxel_ml >= 0.3:
                print(
                    f"    component of {component.sum() * voxel_ml:.1f} mL, slices {box[0].start}-{box[0].stop - 1}, "
                    f"median {np.median(ct.array[box][component]):.0f} HU: "
                    f"{by_organ(component, organs[box], voxel_ml)}"
                )
        if number == 0 and args.figure:
            plt = pyplot()
            figure, axes = plt.subplots(1, len(FIGURE_SLICES), figsize=(4 * len(FIGURE_SLICES), 4.4))
            for axis, z in zip(axes, FIGURE_SLICES):
                axis.imshow(radiological_axial(ct.array, ct.grid, z), cmap="gray", vmin=-160, vmax=240)
                for mask, colour in ((liver, "lime"), (predicted, "red"), (labels == 2, "yellow")):
                    axis.contour(radiological_axial(mask, ct.grid, z), [0.5], colors=colour, linewidths=1)
                axis.set_title(f"slice {z} of {ct.shape[0]}")
                axis.axis("off")
            figure.suptitle(f"{model} on example_ct_sm: map's liver green, predicted liver red, tumour yellow")
            figure.tight_layout()
            save_figure(figure, args.figure)


if __name__ == "__main__":
    main()
