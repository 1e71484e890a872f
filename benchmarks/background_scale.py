"""Would a lower bar for "not background" mend the liver's outline? The targets' figures with the model's
background probability scaled by k before the labels are taken:

    python benchmarks/background_scale.py [--model demo-curriculum] [--seed 600 --cases 12] [--scales 1 0.7 0.5]

k < 1 grows the liver (and tumour) wherever background only narrowly wins. The library's sliding window
is wrapped for the measurement only; ``segment`` then takes its labels and its way back from the scaled
probabilities as it would from a model that gave them. The phantoms (``make_phantom`` seeds from
``--seed``, every 5th lesion-free) are the selection phantoms of ``lesion_misses.py``, unseen in training.
"""

from __future__ import annotations

import argparse

from demo_targets import phantom_figures, unseen_phantoms  # the benchmarks folder is the script's path

import livertumor.inference as inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-curriculum")
    parser.add_argument("--seed", type=int, default=600)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.7, 0.5, 0.35, 0.25])
    args = parser.parse_args()
    window = inference.sliding_window

    def scaled_window(*positional, **keywords):
        probabilities = window(*positional, **keywords)
        probabilities[0] *= scale  # the loop's scale below, read at call time
        return probabilities

    inference.sliding_window = scaled_window
    phantoms = unseen_phantoms(args.seed, args.cases)
    print(f"{args.model}, {args.cases} phantoms from seed {args.seed}:\n")
    print("| background scale k | liver DC | tumour DG | recall ≥ 10 mm | recall < 10 mm | worst FP mL, lesion-free |")
    print("|---|---|---|---|---|---|")
    for scale in args.scales:
        labels = [inference.segment(p.ct, model=args.model, device="cpu").labels.array for p in phantoms]
        r = phantom_figures(list(zip(phantoms, labels)))
        print(
            f"| {scale:g} | {r['liver_dc']:.4f} | {r['dg']:.3f} | {r['recall_10']:.2f} | {r['recall_small']:.2f} | "
            f"{r['fp_ml']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
