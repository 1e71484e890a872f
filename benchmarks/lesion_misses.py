"""Which lesions a segmentation model misses, and whether a tumour-probability threshold finds them:

    python benchmarks/lesion_misses.py [--model demo-curriculum] [--selection-seed 600 --selection-cases 12]
        [--test-seed 900 --test-cases 30] [--thresholds 0.5 0.4 0.3 0.2 0.1] [--csv lesions.csv]

Each phantom is segmented once, as ``livertumor.segment`` does with the card's post-processing, keeping
the tumour probability. Per true lesion: kind, phase, diameter, its contrast against the liver around it
(mean HU inside minus mean HU in a 2-voxel shell of liver, in units of that shell's HU spread: the
contrast-to-noise ratio a reader sees), the highest tumour probability inside it, and whether the labels
found it. Then the targets' figures with tumour called where its probability reaches each threshold
inside the predicted liver (0.5 is close to the card's argmax), on selection phantoms (to choose one) and
on test phantoms (to report it); both are ``make_phantom`` seeds no training set here used (training and
validation sets draw their case seeds from a hash of the data set's seed).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from demo_targets import phantom_figures, unseen_phantoms  # the benchmarks folder is the script's path
from scipy import ndimage

from livertumor.inference import segment

CNR_BINS = (0.0, 0.5, 1.0, 2.0, np.inf)
LABEL_NAMES = ("background", "liver", "tumour")
#: Below this contrast-to-noise ratio a lesion is near-isodense (under 1 sd of the liver's values).
VISIBLE_CNR = 1.0


def lesion_rows(phantom, labels: np.ndarray, probability: np.ndarray, seed: int) -> list[dict]:
    """One row per true lesion of ``phantom``: what it is, how visible, and what the model made of it."""
    hu = phantom.ct.array.astype(np.float32)
    ids = phantom.lesion_id.array
    liver = phantom.label.array == 1
    rows = []
    for lesion in phantom.lesions:
        inside = ids == lesion.id
        if not inside.any():
            continue
        shell = ndimage.binary_dilation(inside, iterations=2) & liver & ~inside
        around = hu[shell] if shell.any() else hu[liver]
        spread = float(around.std()) or 1.0
        contrast = float(hu[inside].mean() - around.mean())
        rows.append(
            {
                "seed": seed,
                "phase": phantom.phase,
                "kind": lesion.kind,
                "placement": lesion.placement,
                "diameter_mm": round(lesion.diameter_mm, 1),
                "contrast_hu": round(contrast, 1),
                "cnr": round(abs(contrast) / spread, 2),
                "max_probability": round(float(probability[inside].max()), 3),
                "found": bool((labels[inside] == 2).any()),
                "labelled": LABEL_NAMES[int(np.bincount(labels[inside], minlength=3).argmax())],
            }
        )
    return rows


def thresholded(labels: np.ndarray, probability: np.ndarray, threshold: float) -> np.ndarray:
    """Tumour where its probability reaches ``threshold`` inside the predicted liver, liver elsewhere in it."""
    out = labels.copy()
    organ = labels >= 1
    out[organ] = 1
    out[organ & (probability >= threshold)] = 2
    return out


def found_cells(rows: list[dict]) -> str:
    """Table cells: lesions ≥ 10 mm, how many found, lesions < 10 mm, how many found."""
    large = [r for r in rows if r["diameter_mm"] >= 10]
    small = [r for r in rows if r["diameter_mm"] < 10]
    return f"{len(large)} | {sum(r['found'] for r in large)} | {len(small)} | {sum(r['found'] for r in small)}"


def segmented(model: str, seed: int, count: int) -> list[tuple]:
    """``(phantom, labels, tumour probability)`` for ``count`` unseen phantoms from ``seed`` on."""
    out = []
    for phantom in unseen_phantoms(seed, count):
        result = segment(phantom.ct, model=model, device="cpu", probabilities=True)
        out.append((phantom, result.labels.array, result.tumour_probability.array))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-curriculum")
    parser.add_argument("--selection-seed", type=int, default=600)
    parser.add_argument("--selection-cases", type=int, default=12)
    parser.add_argument("--test-seed", type=int, default=900)
    parser.add_argument("--test-cases", type=int, default=30)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.4, 0.3, 0.2, 0.1])
    parser.add_argument("--csv", type=Path, help="write the per-lesion rows of the test phantoms here")
    args = parser.parse_args()
    sets = {
        f"selection {args.selection_seed}+": segmented(args.model, args.selection_seed, args.selection_cases),
        f"test {args.test_seed}+": segmented(args.model, args.test_seed, args.test_cases),
    }
    sets = {name: cases for name, cases in sets.items() if cases}  # --selection-cases 0: the test set only
    test = sets[f"test {args.test_seed}+"]
    rows = [
        row
        for index, (phantom, labels, probability) in enumerate(test)
        for row in lesion_rows(phantom, labels, probability, args.test_seed + index)
    ]
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f"Lesions of the test phantoms by contrast-to-noise ratio ({args.model}):\n")
    print("| CNR | lesions ≥ 10 mm | found | lesions < 10 mm | found | median max. probability, missed |")
    print("|---|---|---|---|---|---|")
    for low, high in zip(CNR_BINS, CNR_BINS[1:]):
        inside = [r for r in rows if low <= r["cnr"] < high]
        missed = [r["max_probability"] for r in inside if not r["found"]]
        print(f"| {low:g}-{high:g} | {found_cells(inside)} | {np.median(missed) if missed else float('nan'):.2f} |")
    print(f"\nLesions with CNR ≥ {VISIBLE_CNR:g} by placement in the liver:\n")
    print("| placement | lesions ≥ 10 mm | found | lesions < 10 mm | found |")
    print("|---|---|---|---|---|")
    visible = [r for r in rows if r["cnr"] >= VISIBLE_CNR]
    for placement in sorted({r["placement"] for r in visible}):
        print(f"| {placement} | {found_cells([r for r in visible if r['placement'] == placement])} |")
    print("\nMissed lesions ≥ 10 mm:\n")
    print("| seed | phase | kind | placement | diameter mm | contrast HU | CNR | max. probability | mostly labelled |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted((r for r in rows if not r["found"] and r["diameter_mm"] >= 10), key=lambda r: r["cnr"]):
        print(
            f"| {r['seed']} | {r['phase']} | {r['kind']} | {r['placement']} | {r['diameter_mm']} | "
            f"{r['contrast_hu']} | {r['cnr']} | {r['max_probability']} | {r['labelled']} |"
        )
    print("\nTargets by tumour-probability threshold:\n")
    print("| phantoms | threshold | tumour DG | recall ≥ 10 mm | recall < 10 mm | worst FP mL, lesion-free |")
    print("|---|---|---|---|---|---|")
    for name, cases in sets.items():
        for threshold in [None, *args.thresholds]:
            r = phantom_figures(
                [(p, labels if threshold is None else thresholded(labels, q, threshold)) for p, labels, q in cases]
            )
            label = "labels as segmented" if threshold is None else f"{threshold:g}"
            print(
                f"| {name} | {label} | {r['dg']:.3f} | {r['recall_10']:.2f} | {r['recall_small']:.2f} | "
                f"{r['fp_ml']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
