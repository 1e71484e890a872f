"""Where the demo model's liver errors lie: by distance from the true liver surface (issue 12, liver Dice)

    python benchmarks/liver_outline.py [--model demo-curriculum] [--cases 30] [--seed 900]

For each test phantom (as ``demo_targets.py``: seeds from ``--seed``, every 5th lesion-free) the model's
liver (liver or tumour) from ``segment`` against the truth's. Every wrong voxel is binned by the distance
of its centre from the other side of the truth's surface (scipy's Euclidean distance transform on the
phantom's grid, in mm): a false-liver voxel by its distance to the nearest true liver voxel, a missed one
by its distance to the nearest voxel outside the liver. On the phantoms' 1.5x1.5x2 mm grid the first bin
(< 3 mm) holds exactly the voxels that touch the surface (26-neighbours, at most 2.9 mm apart): errors
of about half of the model's 2.5 mm voxel. Also: the liver Dice with that layer's errors undone, which
bounds what a sub-voxel fix of the outline could give.
"""

from __future__ import annotations

import numpy as np
from demo_targets import one_model_parser, unseen_phantoms  # the benchmarks folder is the script's path
from scipy import ndimage

from livertumor.inference import segment

EDGES_MM = (0.0, 3.0, 5.0, 10.0, np.inf)


def main() -> None:
    args = one_model_parser(__doc__.splitlines()[0], cases=30).parse_args()
    false_liver, missed = np.zeros(len(EDGES_MM) - 1), np.zeros(len(EDGES_MM) - 1)
    dice, dice_without_first_layer = [], []
    for phantom in unseen_phantoms(args.seed, args.cases):
        truth = phantom.label.array >= 1
        predicted = segment(phantom.ct, model=args.model, device="cpu").labels.array >= 1
        spacing = phantom.ct.grid.spacing_zyx
        distance = np.where(
            truth,
            ndimage.distance_transform_edt(truth, sampling=spacing),
            ndimage.distance_transform_edt(~truth, sampling=spacing),
        )
        wrong_outside, wrong_inside = predicted & ~truth, truth & ~predicted
        false_liver += np.histogram(distance[wrong_outside], EDGES_MM)[0]
        missed += np.histogram(distance[wrong_inside], EDGES_MM)[0]
        overlap = 2.0 * (predicted & truth).sum()
        dice.append(overlap / (predicted.sum() + truth.sum()))
        far = distance >= EDGES_MM[1]
        # the first layer's errors undone: false liver there removed, missed liver there added
        fixed = (predicted & (truth | far)) | (truth & ~far)
        dice_without_first_layer.append(2.0 * (fixed & truth).sum() / (fixed.sum() + truth.sum()))
    print(f"\n{args.cases} phantoms from seed {args.seed}, model {args.model}\n")
    print("| distance from the true surface | false liver voxels | share | missed liver voxels | share |")
    print("|---|---|---|---|---|")
    for low, high, wrong_out, wrong_in in zip(EDGES_MM[:-1], EDGES_MM[1:], false_liver, missed):
        print(
            f"| {low:g}-{high:g} mm | {wrong_out:.0f} | {wrong_out / false_liver.sum():.2f} | {wrong_in:.0f} "
            f"| {wrong_in / missed.sum():.2f} |"
        )
    print(
        f"\nliver Dice, mean: {np.mean(dice):.4f}; with the errors within {EDGES_MM[1]:g} mm of the surface "
        f"undone: {np.mean(dice_without_first_layer):.4f}"
    )


if __name__ == "__main__":
    main()
