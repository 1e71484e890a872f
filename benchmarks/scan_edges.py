"""Does a model's liver depend on where the scan ends? Two measurements, for the real scan's missed lower liver:

    python benchmarks/scan_edges.py [--cases 6] [--seed 900] [--slabs 90] MODEL [MODEL ...]

* **Short phantoms.** Each test phantom (seeds 900 on, as ``demo_targets.py`` draws them) is cut to a slab
  through its liver, 90 mm by default (the real ``example_ct_sm`` is 30 slices of 3 mm, cut through the
  liver at both ends; ``--slabs`` gives other thicknesses), and segmented as a scan of its own; its liver
  Dice is set beside the full scan's prediction on the same voxels. A model that needs the liver's ends in
  view loses Dice here.
* **What lies past the real scan's top.** At the network's 2.0 mm grid the real scan has 45 slices, three
  fewer than the 48-slice window, so the sliding window fills three slices past its top with the window's
  lowest grey (-60 HU; ``inference.sliding_window``). The scan is segmented with 15 mm more on top filled
  three ways (repeated top slice, air, the scan mirrored), scored on its own 30 slices: how far the liver
  Dice moves with voxels that are not the patient's.
"""

from __future__ import annotations

import argparse

import numpy as np
from real_liver_errors import LIVER
from recipe_evaluate import REAL, dice  # the benchmarks folder is the script's path

from livertumor.inference import segment
from livertumor.io import read_ct, read_image
from livertumor.phantom import make_phantom
from livertumor.volume import Grid, Volume

EXTRA_SLICES = 5  # 15 mm of the real scan's 3 mm slices: past the window's three padded 2 mm slices


def extended_on_top(ct: Volume, how: str) -> Volume:
    """``ct`` with :data:`EXTRA_SLICES` more slices past its last: its last slice repeated, air, or mirrored."""
    if how == "air":
        extra = np.full((EXTRA_SLICES, *ct.shape[1:]), -1000, ct.array.dtype)
        array = np.concatenate([ct.array, extra])
    else:
        array = np.pad(ct.array, ((0, EXTRA_SLICES), (0, 0), (0, 0)), mode={"repeat": "edge", "mirror": "reflect"}[how])
    return Volume(array, Grid(array.shape, ct.grid.spacing, ct.grid.origin, ct.grid.direction))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=900)
    parser.add_argument("--slabs", type=float, nargs="+", default=[90.0], help="slab thicknesses, mm")
    args = parser.parse_args()
    full_dice = {(model, mm): [] for model in args.models for mm in args.slabs}
    slab_dice = {(model, mm): [] for model in args.models for mm in args.slabs}
    for number in range(args.cases):
        phantom = make_phantom(args.seed + number, lesion_count=0 if (number + 1) % 5 == 0 else None)
        truth = phantom.label.array >= 1
        rows = np.flatnonzero(truth.any((1, 2)))
        full = {model: segment(phantom.ct, model=model, device="cpu").labels.array >= 1 for model in args.models}
        for mm in args.slabs:
            depth = max(1, round(mm / phantom.ct.grid.spacing_zyx[0]))
            start = int(np.random.default_rng(number).integers(rows[0], max(rows[0], rows[-1] - depth) + 1))
            short = phantom.ct.crop((start, 0, 0), (start + depth, *phantom.ct.shape[1:]))
            within = truth[start : start + depth]
            for model in args.models:
                full_dice[model, mm].append(dice(full[model][start : start + depth], within))
                slab = segment(short, model=model, device="cpu").labels.array >= 1
                slab_dice[model, mm].append(dice(slab, within))
    print("| model | slab mm | phantom slab in the full scan | phantom slab as a scan (lowest) |")
    print("|---|---|---|---|")
    for (model, mm), values in slab_dice.items():
        print(
            f"| {model} | {mm:g} | {np.mean(full_dice[model, mm]):.4f} | {np.mean(values):.4f} ({min(values):.4f}) |",
            flush=True,
        )
    ct = read_ct(REAL / "example_ct_sm.nii.gz")
    liver = read_image(REAL / "example_ct_sm_totalseg.nii.gz").array == LIVER
    ways = ("repeat", "air", "mirror")
    print(f"\n| model | real scan | {' | '.join(ways)} |")
    print("|---|---|" + "---|" * len(ways))
    for model in args.models:
        real = [dice(segment(ct, model=model, device="cpu").labels.array >= 1, liver)]
        for how in ways:
            labels = segment(extended_on_top(ct, how), model=model, device="cpu").labels.array[: ct.shape[0]]
            real.append(dice(labels >= 1, liver))
        print(f"| {model} | " + " | ".join(f"{value:.3f}" for value in real) + " |", flush=True)


if __name__ == "__main__":
    main()
