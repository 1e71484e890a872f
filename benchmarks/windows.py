"""Sliding-window plan of a trained model: Dice against time for window size, overlap and backend.

    python benchmarks/windows.py [--model demo-curriculum] [--cases 6] [--seed 900]
        [--windows 32x64x64 64x128x128] [--overlaps 0 0.25 0.5] [--stretches 0] [--backends torch openvino]

Each plan segments the same unseen phantoms (seeds from ``--seed``, every 5th lesion-free, as in
``benchmarks/demo_targets.py``) and prints tumour Dice global, liver Dice (mean) and the seconds of all
cases together. The network uses instance norm, whose statistics depend on what a window holds, so a
window larger than the one it was trained on is a measured choice, not a free speed-up; the Gaussian
blending's benefit is read off the overlap column, and what a window grown to fit the volume
(``stretch``, :func:`livertumor.inference.window_plan`) costs off the stretch column.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from demo_targets import unseen_phantoms  # the benchmarks folder is the script's path
from recipe_evaluate import dice

from livertumor import backends
from livertumor.inference import segment, window_plan
from livertumor.metrics import dice_global, evaluate_pair
from livertumor.models import read_card, resolve_model
from livertumor.preprocess import prepare_ct


def window_size(text: str) -> tuple[int, int, int]:
    z, y, x = (int(n) for n in text.lower().split("x"))
    return z, y, x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-curriculum")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=900)
    parser.add_argument("--windows", nargs="+", type=window_size, default=[(32, 64, 64), (64, 128, 128)])
    parser.add_argument("--overlaps", nargs="+", type=float, default=[0.0, 0.25, 0.5])
    parser.add_argument("--stretches", nargs="+", type=float, default=[0.0])
    parser.add_argument("--backends", nargs="+", default=[b for b in ("torch", "openvino") if backends.installed(b)])
    args = parser.parse_args()
    phantoms = unseen_phantoms(args.seed, args.cases)
    for phantom in phantoms[:1]:  # compiled graphs built and cached before timing
        for backend in args.backends:
            for window in args.windows:
                segment(phantom.ct, model=args.model, device="cpu", backend=backend, window=window)
    print(f"model {args.model}; {args.cases} phantoms (seed {args.seed}+), {phantoms[0].ct.shape} voxels each\n")
    print(
        "| backend | window | overlap | stretch | windows per case | tumour DG | liver DC | seconds |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    card = read_card(resolve_model(args.model))
    grid = (prepare_ct(phantoms[0].ct, card.preprocess).shape, card.architecture.divisor)  # same for all
    for backend in args.backends:
        for window in args.windows:
            for overlap in args.overlaps:
                for stretch in args.stretches:
                    row(args.model, phantoms, grid, backend, window, overlap, stretch)


def row(
    model: str,
    phantoms: list,
    grid: tuple[tuple[int, ...], int],
    backend: str,
    window: tuple[int, int, int],
    overlap: float,
    stretch: float,
) -> None:
    """Segment every phantom with one plan and print its table row. ``grid``: the phantoms' shape on the
    model's grid and the network's divisor, for the plan's column."""
    shape, divisor = grid
    planned, starts = window_plan(shape, window, divisor, overlap, stretch)
    stats, livers = [], []
    start = time.perf_counter()
    outputs = [
        segment(p.ct, model=model, device="cpu", backend=backend, window=window, overlap=overlap, stretch=stretch)
        for p in phantoms
    ]
    seconds = time.perf_counter() - start
    for phantom, output in zip(phantoms, outputs):
        labels, truth = output.labels.array, phantom.label.array
        stats.append(evaluate_pair(labels, truth, phantom.ct.grid.spacing_zyx, "case").stats)
        livers.append(dice(labels >= 1, truth >= 1))
    print(
        f"| {backend} | {'x'.join(map(str, window))} | {overlap:g} | {stretch:g} "
        f"| {len(starts)} of {'x'.join(map(str, planned))} | {dice_global(stats):.3f} "
        f"| {np.mean(livers):.3f} | {seconds:.1f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
