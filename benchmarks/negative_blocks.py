"""What the paper's weighted Dice (eq. 1-2, eps 1) pays on blocks with and without tumour, per checkpoint.

    cd benchmarks && python negative_blocks.py --data FOLDER [--spacing 2.0] [--block 48 80 80] CHECKPOINT ...

Blocks of the model's size (``--block``'s for the checkpoints) centred on random liver-or-tumour voxels of
the first ``--cases`` phantoms of ``--data`` (near what training draws: it centres its whole-volume blocks in
the labelled region's box); each CHECKPOINT on the ``--spacing`` grid, and the shipped demo model on its
own. Printed per weights: the median summed tumour probability of the blocks without tumour, and the mean
loss of each kind of block. A block without tumour earns up to a whole point of loss as its summed tumour
probability falls below one voxel (docs/results/demo-model.md, the 2.0 mm continuation).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rescore_checkpoints import checkpoint_network  # the benchmarks folder is the script's path

from livertumor.data import TUMOUR, prepare_case
from livertumor.datasets import find_cases
from livertumor.losses import weighted_dice_loss
from livertumor.models import load_model


def block_losses(network: torch.nn.Module, cases, block: tuple[int, ...], per_case: int, seed: int = 0):
    """(summed tumour probability of each tumour-free block, its loss), and the losses of the tumour blocks."""
    rng = np.random.default_rng(seed)
    free, with_tumour = [], []
    network.eval()
    for case in cases:
        points = np.argwhere(case.label >= 1)
        for point in points[rng.integers(len(points), size=per_case)]:
            start = [max(0, min(c - b // 2, n - b)) for c, b, n in zip(point, block, case.image.shape)]
            window = tuple(slice(a, a + b) for a, b in zip(start, block))
            image = torch.from_numpy(np.ascontiguousarray(case.image[window], np.float32))[None, None]
            target = torch.from_numpy(case.label[window].astype(np.int64))[None]
            with torch.no_grad():
                logits = network(image)
            loss = float(weighted_dice_loss(logits, target))
            if (target == TUMOUR).any():
                with_tumour.append(loss)
            else:
                free.append((float(torch.softmax(logits, 1)[0, TUMOUR].sum()), loss))
    return free, with_tumour


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="training cases (the run's train folder)")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--blocks", type=int, default=6, help="blocks per case")
    parser.add_argument("--spacing", type=float, default=2.0, help="the checkpoints' grid, isotropic mm")
    parser.add_argument("--block", type=int, nargs=3, help="the checkpoints' blocks (default: the shipped model's)")
    parser.add_argument("checkpoints", nargs="+", type=Path)
    args = parser.parse_args()
    shipped = load_model("demo-curriculum")
    cases = find_cases(args.data)[: args.cases]
    finer = replace(shipped.card.preprocess, spacing=(args.spacing,) * 3)
    if args.block:
        finer = replace(finer, block=tuple(args.block))
    runs = [("shipped demo model", shipped.networks["tumour"], shipped.card.preprocess)]
    runs += [(path.name, checkpoint_network(path, shipped), finer) for path in args.checkpoints]
    print("| weights | tumour-free blocks: median summed tumour probability | their loss | tumour blocks: loss |")
    print("|---|---|---|---|")
    prepared = {}
    for name, network, preprocess in runs:
        key = preprocess.spacing
        if key not in prepared:
            prepared[key] = [prepare_case(case, preprocess) for case in cases]
        free, with_tumour = block_losses(network, prepared[key], tuple(preprocess.block), args.blocks)
        mass, loss = np.median([m for m, _ in free]), np.mean([v for _, v in free])
        print(f"| {name} | {mass:.1f} ({len(free)} blocks) | {loss:.2f} | {np.mean(with_tumour):.2f} |")


if __name__ == "__main__":
    main()
