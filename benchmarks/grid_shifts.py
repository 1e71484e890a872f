"""Does averaging over shifted model grids sharpen the demo model's outlines? (issue 12, measured, not used)

    python benchmarks/grid_shifts.py [--model demo-curriculum] [--cases 12] [--seed 900]

The model sees the CT on a 2.5 mm grid, and most of its liver error lies in the outer 5 mm of the liver
(``docs/results/demo-model.md``). Test-time averaging over grids shifted by half a voxel samples the
anatomy at points between the first grid's: each shifted grid gets its own sliding window (overlap 0.5),
each class's probability is interpolated linearly onto the CT's grid, the grids' probabilities are
averaged, and the highest class wins, with the tumour kept to the largest liver component as the card
says. 1 grid is that pipeline unshifted; 2 adds the (½, ½, ½) voxel shift, 4 the three shifts by half a
voxel along two axes, 8 every corner of the half-voxel cube. ``segment`` (the shipped way) is the first
row. Phantoms as in ``demo_targets.py`` (seeds from ``--seed``, every 5th lesion-free).
"""

from __future__ import annotations

import time

import numpy as np
from demo_targets import (  # the benchmarks folder is the script's path
    one_model_parser,
    phantom_figures,
    unseen_phantoms,
)

from livertumor.inference import drop_tumour_outside_liver, segment, sliding_window
from livertumor.models import load_model
from livertumor.preprocess import AIR_HU, body_box, grid_with_spacing, resample_to_grid, window_hu
from livertumor.volume import Grid, Volume

HALF = (0.0, 0.5)
SHIFTS = {
    1: [(0.0, 0.0, 0.0)],
    2: [(0.0, 0.0, 0.0), (0.5, 0.5, 0.5)],
    4: [(0.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5)],
    8: [(x, y, z) for x in HALF for y in HALF for z in HALF],
}


def probabilities_on_ct(ct: Volume, loaded, shift_voxels: tuple[float, float, float]) -> np.ndarray:
    """Class probabilities (C, D, H, W) on ``ct``'s grid from the model's grid moved by ``shift_voxels``
    (x, y, z, in the model's voxels); otherwise as ``prepare_ct`` prepares the CT."""
    config = loaded.card.preprocess
    cropped = ct.crop(*body_box(ct)) if config.crop_body else ct
    grid = grid_with_spacing(cropped.grid, config.spacing)
    origin = np.asarray(grid.origin) + grid.direction @ (np.asarray(shift_voxels) * np.asarray(grid.spacing))
    grid = Grid(grid.shape, grid.spacing, tuple(origin), grid.direction)
    resampled = resample_to_grid(cropped, grid, config.interpolation, AIR_HU)
    image = window_hu(resampled.array, config.window_width, config.window_center)
    scores = sliding_window(
        loaded.networks["tumour"], image, tuple(config.block), loaded.card.architecture.divisor, overlap=0.5
    )
    # outside the model's box: background for certain
    fills = [1.0] + [0.0] * (len(scores) - 1)
    return np.stack(
        [resample_to_grid(resampled.with_array(s), ct.grid, "linear", f).array for s, f in zip(scores, fills)]
    )


def main() -> None:
    args = one_model_parser(__doc__.splitlines()[0], cases=12).parse_args()
    loaded = load_model(args.model)
    rows = {"segment": []} | {f"{count} grid{'s' * (count > 1)}": [] for count in SHIFTS}
    seconds = dict.fromkeys(rows, 0.0)
    for phantom in unseen_phantoms(args.seed, args.cases):
        started = time.perf_counter()
        rows["segment"].append((phantom, segment(phantom.ct, model=args.model, device="cpu").labels.array))
        seconds["segment"] += time.perf_counter() - started
        total, done, spent = 0.0, 0, 0.0
        for (name, cases), count in zip(list(rows.items())[1:], SHIFTS):
            started = time.perf_counter()
            for shift in SHIFTS[count][done:]:  # each list extends the one before
                total = total + probabilities_on_ct(phantom.ct, loaded, shift)
            done = count
            labels = total.argmax(0).astype(np.uint8)
            if loaded.card.tumour_in_liver:
                drop_tumour_outside_liver(labels)
            cases.append((phantom, labels))
            spent += time.perf_counter() - started
            seconds[name] += spent  # what this many grids cost from scratch
    print(f"\n{args.cases} phantoms from seed {args.seed}, model {args.model}\n")
    print("| way | tumour DG | DG, contrast | recall ≥ 10 mm | recall < 10 mm | worst FP mL | liver DC | s / case |")
    print("|---|---|---|---|---|---|---|---|")
    for name, cases in rows.items():
        f = phantom_figures(cases)
        print(
            f"| {name} | {f['dg']:.4f} | {f['dg_enhanced']:.4f} | {f['recall_10']:.2f} | {f['recall_small']:.2f} "
            f"| {f['fp_ml']:.2f} | {f['liver_dc']:.4f} | {seconds[name] / args.cases:.1f} |"
        )


if __name__ == "__main__":
    main()
