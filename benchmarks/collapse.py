"""Does a tumour-only run with the paper's loss die at its start? Validation DG of short runs per seed and
head initialisation.

    python benchmarks/collapse.py --out /tmp/collapse [--seeds 0 1 2] [--priors 0.01 none] [--epochs 2]
        [--iterations 90] [--batch 1] [--init-seed N] [--head kaiming|zero|balanced] [--train-cases 40]

Each run trains the demo's network with two classes (background, tumour), the naive schema, the paper's
weighted Dice at ``--batch`` whole blocks a step (the paper's 1), on the schema comparison's phantoms
(``curriculum.py``: seed 100, 96x160x160 at 2.5 mm, 15 % validating). ``--priors``: the head's initial
tumour probability (``ResUNetConfig.foreground_prior``; ``none`` is a zero bias, 50 %). A run whose
validation DG stays 0 marks no tumour voxel at all: on the GPU such a seed never recovered in 1,080 steps
(docs/results/curriculum.md). A seed sets both the initial weights and the blocks drawn; ``--init-seed``
takes the initial weights from another seed, to tell the two apart. "initial peak p" is the highest
tumour probability the untrained network gives in a central block of the first validation phantom.
``--head`` sets the head's last convolution at the start (its biases keep the prior): ``kaiming`` as the
library does; ``zero``, every voxel at the prior; ``balanced``, Kaiming magnitudes with signs alternating
over the channels and a zero background row, so every foreground class has features voting for it.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from livertumor.data import prepare_case
from livertumor.datasets import find_cases
from livertumor.networks import ResUNet3d
from livertumor.phantom import write_phantom_dataset
from livertumor.training import TrainConfig, split_cases, train_model

SETTINGS = Path(__file__).resolve().parents[1] / "Resources/Models/demo-curriculum.train.json"


@torch.no_grad()
def start_head(weight: torch.Tensor, kind: str) -> None:
    """Overwrite the head's last (classes, channels, 1, 1, 1) weights as ``--head`` says."""
    if kind == "zero":
        weight.zero_()
    elif kind == "balanced":
        signs = torch.tensor([(-1.0) ** k for k in range(weight.shape[1])])[None, :, None, None, None]
        weight.copy_(weight.abs() * signs)
        weight[0].zero_()


def initial_peak(network: ResUNet3d, image: np.ndarray, block: tuple[int, ...]) -> float:
    """The highest tumour probability ``network`` gives in the block at the centre of ``image``."""
    centre = tuple(slice((side - size) // 2, (side - size) // 2 + size) for side, size in zip(image.shape, block))
    with torch.no_grad():
        logits = network.eval()(torch.from_numpy(np.ascontiguousarray(image[centre]))[None, None])
    return float(torch.softmax(logits, dim=1)[0, -1].max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--priors", nargs="+", default=["0.01", "none"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=90)
    parser.add_argument("--batch", type=int, default=1, help="whole-volume blocks per step")
    parser.add_argument("--init-seed", type=int, help="initial weights from this seed (default: the run's seed)")
    parser.add_argument("--head", choices=("kaiming", "zero", "balanced"), default="kaiming")
    parser.add_argument("--train-cases", type=int, default=40)
    args = parser.parse_args()
    data = args.out / "train"
    if not data.exists():
        write_phantom_dataset(data, args.train_cases, seed=100, shape=(96, 160, 160), spacing_zyx=(2.5, 2.5, 2.5))
    train, validation = split_cases(find_cases(data), 0.15, 0)
    base = TrainConfig.from_json(json.loads(SETTINGS.read_text()))
    probe = prepare_case(validation[0], base.preprocess).image
    print(
        "| head prior | head weights | batch | seed (blocks) | seed (initial weights) | initial peak p "
        "| validation DG per epoch | training loss per epoch |\n|---|---|---|---|---|---|---|---|"
    )
    for prior in args.priors:
        architecture = replace(base.architecture, classes=2, foreground_prior=None if prior == "none" else float(prior))
        for seed in args.seeds:
            config = replace(
                base,
                schema="naive",
                architecture=architecture,
                epochs=args.epochs,
                stage_epochs=None,
                iterations_per_epoch=args.iterations,
                seed=seed,
                whole_batch=args.batch,
            )
            init_seed = seed if args.init_seed is None else args.init_seed
            head = "" if args.head == "kaiming" else f"-{args.head}head"
            model = args.out / f"model-{prior}{head}-batch{args.batch}-seed{seed}-init{init_seed}"
            torch.manual_seed(init_seed)  # as the Trainer seeds its own network
            network = ResUNet3d(architecture)
            start_head(network.head[-1].weight, args.head)
            peak = initial_peak(network, probe, base.preprocess.block)
            if not model.exists():
                train_model(train, validation, config, model, name="collapse", initial={"tumour": network.state_dict()})
            with open(args.out / f"{model.name}.work" / "tumour-log.csv", newline="") as handle:
                rows = list(csv.DictReader(handle))
            scores = ", ".join(f"{float(row['dg'] or 0):.3f}" for row in rows)
            losses = ", ".join(f"{float(row['loss']):.3f}" for row in rows)
            row = f"| {prior} | {args.head} | {args.batch} | {seed} | {init_seed} | {peak:.3f} | {scores} | {losses} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
