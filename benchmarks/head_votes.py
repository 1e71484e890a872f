"""Can an untrained network mark tumour at all? Each seed's head, read before any training step.

    python benchmarks/head_votes.py [--config benchmarks/configs/curriculum-cpu.train.json] [--classes 3]
        [--seeds 0 1 2 3 4] [--probe DATA_DIR] [--head-width N] [--summary-only]

The network's last layer is a 1x1x1 convolution over ReLU features f_k >= 0, so a voxel's tumour logit
minus class j's logit is (b_tumour - b_j) + sum_k (w_tumour,k - w_j,k) f_k. The "head margin" is the best
that difference can be, over all classes j at once, per unit of feature mass, biases aside:
max over f >= 0 with sum f = 1 of min_j (w_tumour - w_j) . f (a linear programme). Below zero, no input
can rank tumour first: a gradient through the softmax at tumour voxels is then all that can start the
run, and it vanishes as p(1 - p). "voting channels" counts the features that favour tumour over every other
class. With ``--probe``, "initial peak p" is the highest tumour probability the untrained network gives
anywhere in the first phantom of that dataset (prepared as the config says). A seed seeds the network as
the Trainer does. ``--head-width`` sets the head's feature count (``ResUNetConfig.head_width``; the demo's is its
full-resolution width, 4), to ask how often a wider head starts dead.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from collapse import initial_peak  # the benchmarks folder is the script's path
from scipy.optimize import linprog

from livertumor.data import prepare_case
from livertumor.datasets import find_cases
from livertumor.networks import ResUNet3d, round_up
from livertumor.training import TrainConfig


def head_margin(weight: torch.Tensor) -> float:
    """max over the feature simplex of the smallest tumour-minus-other logit difference, ``weight`` being
    the head's last (classes, channels, 1, 1, 1) weights with tumour last."""
    rows = weight[:, :, 0, 0, 0].double().numpy()
    differences = rows[-1] - rows[:-1]  # (other classes, channels)
    channels = differences.shape[1]
    solution = linprog(
        c=[0.0] * channels + [-1.0],
        A_ub=np.hstack([-differences, np.ones((len(differences), 1))]),
        b_ub=np.zeros(len(differences)),
        A_eq=[[1.0] * channels + [0.0]],
        b_eq=[1.0],
        bounds=[(0, None)] * channels + [(None, None)],
    )
    return float(-solution.fun)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, default=Path(__file__).resolve().parent / "configs/curriculum-cpu.train.json"
    )
    parser.add_argument("--classes", type=int, choices=(2, 3), default=3, help="2: tumour only; 3: + liver")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    parser.add_argument("--probe", type=Path, help="a phantom dataset; its first case gives the initial peak p")
    parser.add_argument("--head-width", type=int, help="the head's feature channels (default: the config's)")
    parser.add_argument("--summary-only", action="store_true", help="print only the counts over all seeds")
    args = parser.parse_args()
    base = TrainConfig.from_json(json.loads(args.config.read_text()))
    head_width = args.head_width or base.architecture.head_width
    architecture = replace(base.architecture, classes=args.classes, head_width=head_width)
    probe = None
    if args.probe and not args.summary_only:  # the summary has no peak column
        image = prepare_case(find_cases(args.probe)[0], base.preprocess).image
        padded = round_up(image.shape, architecture.divisor)
        probe = np.pad(image, [(0, after - side) for side, after in zip(image.shape, padded)], mode="edge")
    if not args.summary_only:
        print("| seed | head margin | voting channels | initial peak p |\n|---|---|---|---|")
    margins, votes_per_seed = [], []
    for seed in args.seeds:
        torch.manual_seed(seed)  # as the Trainer seeds its own network
        network = ResUNet3d(architecture)
        weight = network.head[-1].weight.detach()
        votes = int((weight[-1] > weight[:-1]).all(dim=0).sum())
        margins.append(head_margin(weight))
        votes_per_seed.append(votes)
        if not args.summary_only:
            peak = "-" if probe is None else f"{initial_peak(network, probe, probe.shape):.3f}"
            print(f"| {seed} | {margins[-1]:+.2f} | {votes} | {peak} |", flush=True)
    counts = ", ".join(f"<= {limit}: {sum(m <= limit for m in margins)}" for limit in (0.0, 0.3, 0.5))
    few = f"0: {votes_per_seed.count(0)}, <= 1: {sum(v <= 1 for v in votes_per_seed)}"
    heads = f"{len(margins)} seeds, {network.head[-1].in_channels} head channels, {args.classes} classes"
    print(f"{heads}; head margin {counts}; voting channels {few}")


if __name__ == "__main__":
    main()
