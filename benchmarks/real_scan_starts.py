"""The real scan's targets wherever the scan starts: liver Dice on the organ map's slices and tumour over
the whole scan, for the full real CT cut at several depths below the liver.

    python benchmarks/real_scan_starts.py [--starts 0 10 ... 82] [--backend torch] [--overlap 0.5] MODEL [MODEL ...]

``example_ct_sm`` (the targets' real scan) is the top 30 slices of ``example_ct`` (112 slices of 3 mm,
abdomen and pelvis), voxel for voxel: checked here, since both files carry the same origin. The organ map
labels only those slices, so each cut keeps them and starts ``START`` slices above the full scan's
bottom: 0 is the whole CT, 82 is ``example_ct_sm`` itself. What changes between cuts is only how much of
the patient below the liver the sliding window sees (and so where its windows fall), not the voxels that
are scored. A model whose real-scan figures move with the cut is near its decision boundary there, and one
cut's figure is one draw.

Tumour counts over the whole cut (none is known in this patient, so all of it is false).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from real_liver_errors import LIVER
from recipe_evaluate import REAL, dice  # the benchmarks folder is the script's path

from livertumor.inference import TUMOUR, segment
from livertumor.io import read_ct, read_image

LABELLED = 30  # slices of example_ct_sm, the top of example_ct
CLIP_HU = (-1100, 1207)  # example_ct_sm was clipped to these when it was cut (PROVENANCE.md)


def labelled_scan():
    """The full real CT and the organ map's liver on its top ``LABELLED`` slices (checked voxel for voxel)."""
    full = read_ct(REAL / "example_ct.nii.gz")
    top = np.clip(full.array[-LABELLED:], *CLIP_HU)
    if not np.array_equal(top, read_ct(REAL / "example_ct_sm.nii.gz").array):
        raise SystemExit("example_ct_sm is no longer the top of example_ct: the organ map cannot be placed")
    return full, read_image(REAL / "example_ct_sm_totalseg.nii.gz").array == LIVER


def score_cut(model: str, full, liver: np.ndarray, start: int, backend: str, overlap: float) -> tuple[float, float]:
    """Liver Dice on the labelled slices and whole-cut tumour mL of ``full[start:]``."""
    cut = full.crop((start, 0, 0), full.shape)
    labels = segment(cut, model=model, device="cpu", backend=backend, overlap=overlap).labels.array
    tumour_ml = float((labels == TUMOUR).sum()) * cut.grid.voxel_volume_ml
    return dice(labels[-LABELLED:] >= 1, liver), tumour_ml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--starts", type=int, nargs="+", default=[0, 10, 20, 30, 40, 50, 60, 70, 76, 82])
    parser.add_argument("--backend", default="torch", choices=["torch", "openvino", "onnxruntime"])
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (segment's default)")
    parser.add_argument("--per-start", action="store_true", help="also print each cut's figures")
    args = parser.parse_args()
    full, liver = labelled_scan()
    bottom = full.shape[0] - LABELLED
    if any(not 0 <= start <= bottom for start in args.starts):
        raise SystemExit(f"starts must lie in 0..{bottom}: a later start would cut the labelled slices")
    print(
        "| model | liver DC, mean (lowest-highest) | tumour mL, mean (lowest-highest) | cuts meeting liver ≥ 0.85 "
        "| cuts meeting < 5 mL | cuts meeting both |"
    )
    print("|---|---|---|---|---|---|")
    for model in args.models:
        figures = [score_cut(model, full, liver, start, args.backend, args.overlap) for start in args.starts]
        if args.per_start:
            for start, (liver_dc, tumour_ml) in zip(args.starts, figures):
                print(f"  {model} from slice {start}: liver {liver_dc:.3f}, tumour {tumour_ml:.1f} mL", flush=True)
        livers, tumours = zip(*figures)
        met_liver = [value >= 0.85 for value in livers]
        met_tumour = [value < 5 for value in tumours]
        print(
            f"| {model} | {statistics.mean(livers):.3f} ({min(livers):.3f}-{max(livers):.3f}) | "
            f"{statistics.mean(tumours):.1f} ({min(tumours):.1f}-{max(tumours):.1f}) | "
            f"{sum(met_liver)} of {len(figures)} | {sum(met_tumour)} of {len(figures)} | "
            f"{sum(a and b for a, b in zip(met_liver, met_tumour))} of {len(figures)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
