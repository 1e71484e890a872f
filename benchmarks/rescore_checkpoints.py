"""Training checkpoints scored two ways on validation phantoms: tumour Dice global of the raw labels, and of
the labels after the card's post-processing (tumour kept in the largest liver component), as
``livertumor segment`` gives them.

    python benchmarks/rescore_checkpoints.py --data /tmp/avg/validation [--model demo-curriculum]
        [--overlap 0.25] CHECKPOINT [CHECKPOINT ...]

A CHECKPOINT is a training work folder's ``*-best.safetensors`` or ``*-last.safetensors`` (the averaged
weights where the run kept them, else the trained ones), or ``model`` for the model's own weights. The
model's card gives the network and the preprocessing. Validation in runs before 2026-11-30 scored the raw
labels only, so a best epoch could be chosen by the false tumour outside the liver.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from livertumor.data import prepare_case
from livertumor.datasets import find_cases
from livertumor.inference import TUMOUR, class_map, drop_tumour_outside_liver, sliding_window
from livertumor.metrics import dice_global, mask_stats
from livertumor.models import load_model
from livertumor.networks import ResUNet3d
from livertumor.training import checkpoint_weights


def checkpoint_network(path: Path, model) -> torch.nn.Module:
    """The network of a training checkpoint, as the run would save it (averaged weights where it kept them)."""
    network = ResUNet3d(model.card.architecture)
    network.load_state_dict(checkpoint_weights(path))
    return network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of validation cases")
    parser.add_argument("--model", default="demo-curriculum", help="the model whose card the checkpoints share")
    parser.add_argument("--overlap", type=float, default=0.25, help="as in training's validation")
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    model = load_model(args.model)
    card = model.card
    cases = [prepare_case(case, card.preprocess) for case in find_cases(args.data)]
    print("| weights | tumour DG, raw labels | tumour DG, tumour kept in the liver |\n|---|---|---|")
    for name in args.checkpoints:
        network = model.networks["tumour"] if name == "model" else checkpoint_network(Path(name), model)
        raw, kept = [], []
        for case in cases:
            probabilities = sliding_window(
                network, case.image, tuple(card.preprocess.block), card.architecture.divisor, args.overlap
            )
            classes = class_map(probabilities)
            truth, spacing = case.scored("tumour"), case.grid.spacing_zyx
            raw.append(mask_stats(classes == TUMOUR, truth, spacing))
            drop_tumour_outside_liver(classes)
            kept.append(mask_stats(classes == TUMOUR, truth, spacing))
        print(f"| {name} | {dice_global(raw):.3f} | {dice_global(kept):.3f} |", flush=True)


if __name__ == "__main__":
    main()
