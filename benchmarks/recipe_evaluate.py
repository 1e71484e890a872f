"""End-to-end check of recipe-diagnosis models: each model segments the recipe's validation phantoms and the
real non-contrast CT on their own grids (``livertumor.segment``); prints liver and tumour Dice per phantom,
and liver Dice against the TotalSegmentator organ map (label 5) and predicted tumour mL on the real CT.

    python benchmarks/recipe_evaluate.py --data /tmp/recipe-long/validation MODEL [MODEL ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from livertumor.datasets import find_cases
from livertumor.inference import segment
from livertumor.io import read_ct, read_image, read_label

REAL = Path(__file__).resolve().parents[2] / "shared/data/real/totalsegmentator"


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    return 2 * float((prediction & truth).sum()) / max(1, int(prediction.sum() + truth.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    real_ct = read_ct(REAL / "example_ct_sm.nii.gz")
    real_liver = read_image(REAL / "example_ct_sm_totalseg.nii.gz").array == 5
    print("| model | phantom liver DC | phantom tumour DC | real CT liver DC | real CT tumour mL |")
    print("|---|---|---|---|---|")
    for model in args.models:
        liver, tumour = [], []
        for case in find_cases(args.data):
            ct = read_ct(case.image)
            truth = read_label(case.label, reference=ct.grid).array
            labels = segment(ct, model=model, device="cpu").labels.array
            liver.append(dice(labels == 1, truth == 1))
            tumour.append(dice(labels == 2, truth == 2))
        labels = segment(real_ct, model=model, device="cpu").labels.array
        tumour_ml = float((labels == 2).sum()) * real_ct.grid.voxel_volume_ml
        print(
            f"| {model} | {' / '.join(f'{v:.2f}' for v in liver)} | {' / '.join(f'{v:.2f}' for v in tumour)} "
            f"| {dice(labels >= 1, real_liver):.2f} | {tumour_ml:.1f} |"
        )


if __name__ == "__main__":
    main()
