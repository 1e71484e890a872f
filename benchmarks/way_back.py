"""How labels go back from the model's grid onto the CT's: three ways, on phantoms no model here trained on.

    python benchmarks/way_back.py [--model demo-curriculum] [--cases 30] [--seed 900]

Per phantom the model's sliding window runs once (overlap 0.5, the card's tumour-in-liver kept); its labels
go back onto the phantom's grid (1.5x1.5x2 mm) by ``resample_label``:
* ``nearest``: nearest neighbour (until 2026-12-01 the only way);
* ``one-hot``: the labels' one-hot, interpolated linearly, the highest wins (what a cascade gets);
* ``probabilities``: the network's class probabilities interpolated linearly, the highest wins, the
  post-processing's decisions kept (what ``segment`` does).
The ``truth`` rows are the ceiling: the true labels taken to the model's grid and back, by nearest
neighbour and by their one-hot. Tumour Dice global, liver Dice (liver and tumour against the truth's)
mean and lowest, and on how many phantoms the way beats nearest neighbour on the liver.
"""

from __future__ import annotations

import numpy as np
from demo_targets import one_model_parser, unseen_phantoms  # the benchmarks folder is the script's path
from recipe_evaluate import dice

from livertumor.inference import class_map, drop_tumour_outside_liver, sliding_window
from livertumor.metrics import dice_global, evaluate_pair
from livertumor.models import load_model
from livertumor.preprocess import prepare_ct, resample_label


def main() -> None:
    args = one_model_parser(__doc__.splitlines()[0], cases=30).parse_args()
    loaded = load_model(args.model, "cpu")
    card = loaded.card
    (_, network), *rest = loaded.cascade_stages()
    if rest:
        raise SystemExit("a one-network model is needed: a cascade's stages give no common probabilities")
    ways = ("nearest", "one-hot", "probabilities", "truth, nearest", "truth, one-hot")
    stats: dict[str, list] = {way: [] for way in ways}
    liver: dict[str, list[float]] = {way: [] for way in ways}
    for phantom in unseen_phantoms(args.seed, args.cases):
        prepared = prepare_ct(phantom.ct, card.preprocess)
        probabilities = sliding_window(network, prepared.array, card.preprocess.block, card.architecture.divisor, 0.5)
        labels = class_map(probabilities)
        if card.tumour_in_liver:
            drop_tumour_outside_liver(labels)
        predicted = prepared.with_array(labels)
        coarse_truth = resample_label(phantom.label, prepared.grid)
        grid, truth = phantom.ct.grid, phantom.label.array
        back = {
            "nearest": resample_label(predicted, grid),
            "one-hot": resample_label(predicted, grid, scores={}),
            "probabilities": resample_label(predicted, grid, scores=dict(enumerate(probabilities))),
            "truth, nearest": resample_label(coarse_truth, grid),
            "truth, one-hot": resample_label(coarse_truth, grid, scores={}),
        }
        for way, restored in back.items():
            stats[way].append(evaluate_pair(restored.array, truth, grid.spacing_zyx, "case").stats)
            liver[way].append(dice(restored.array >= 1, truth >= 1))
        print(f"phantom {len(liver['nearest'])}: liver {' / '.join(f'{liver[w][-1]:.4f}' for w in ways)}", flush=True)
    print(f"\n{args.cases} phantoms from seed {args.seed}, model {card.name}:{card.version}\n")
    print("| way back | tumour DG | liver DC, mean | liver DC, lowest | liver better than nearest |")
    print("|---|---|---|---|---|")
    for way in ways:
        base = liver["truth, nearest" if way.startswith("truth") else "nearest"]
        better = sum(a > b for a, b in zip(liver[way], base))
        print(
            f"| {way} | {dice_global(stats[way]):.4f} | {np.mean(liver[way]):.4f} | {min(liver[way]):.4f} "
            f"| {better} of {len(base)} |"
        )


if __name__ == "__main__":
    main()
