"""Training checkpoints on the real scans, epoch by epoch: the liver Dice of the non-contrast CT against its
organ map and the tumour marked on each real scan (none is known in any of them, so all of it counts as
false), as ``livertumor segment`` gives them (the card's post-processing included).

    python benchmarks/real_scan_curve.py [--model demo-curriculum] [--log WORK/joint-log.csv]
        [--figure docs/results/real-scan-curve.png] CHECKPOINT [CHECKPOINT ...]

A CHECKPOINT is a training checkpoint (``*-last.safetensors``, or one named with its epoch number: those a
run keeps, ``TASK-epoch-NNN.safetensors`` with ``keep_epochs``, or a copy such as ``epoch-7.safetensors``)
or ``model`` for the model's own weights; the model's card gives the network and the preprocessing. With
``--log`` the figure also draws the run's validation tumour Dice on the phantoms, to show whether the epochs
that fit the phantoms best also do best on the patient.
"""

from __future__ import annotations

import argparse
import csv
import re
import tempfile
from pathlib import Path

import numpy as np
from real_liver_errors import LIVER
from recipe_evaluate import REAL, dice
from rescore_checkpoints import checkpoint_network

from livertumor.inference import TUMOUR, segment
from livertumor.io import read_ct, read_image
from livertumor.models import load_model, save_model
from livertumor.plotting import pyplot, save_figure

SCANS = {
    "example_ct_sm": "example_ct_sm.nii.gz",
    "example_ct": "example_ct.nii.gz",
    "example_ct_dicom": "example_ct_dicom",
}


def epoch_of(name: str) -> int | None:
    """The epoch number in a checkpoint's file name, if any."""
    found = re.findall(r"\d+", Path(name).stem)
    return int(found[-1]) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-curriculum", help="the model whose card the checkpoints share")
    parser.add_argument("--log", type=Path, help="the run's log (validation DG per epoch), for the figure")
    parser.add_argument("--figure", type=Path)
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    model = load_model(args.model)
    scans = {name: read_ct(REAL / path) for name, path in SCANS.items()}
    liver = read_image(REAL / "example_ct_sm_totalseg.nii.gz").array == LIVER
    header = " | ".join(f"{name} tumour mL" for name in scans)
    print(f"| weights | example_ct_sm liver DC | {header} |\n|---|---|" + "---|" * len(scans))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.checkpoints:
            weights = model.networks["tumour"] if name == "model" else checkpoint_network(Path(name), model)
            saved = Path(folder) / f"model-{len(rows)}"
            save_model(saved, {"tumour": weights}, model.card)
            tumour_ml, liver_dice = [], 0.0
            for scan_name, ct in scans.items():
                labels = segment(ct, model=str(saved), device="cpu").labels.array
                tumour_ml.append(float((labels == TUMOUR).sum()) * ct.grid.voxel_volume_ml)
                if scan_name == "example_ct_sm":
                    liver_dice = dice(labels >= 1, liver)
            rows.append((name, liver_dice, tumour_ml))
            print(f"| {name} | {liver_dice:.3f} | " + " | ".join(f"{ml:.1f}" for ml in tumour_ml) + " |", flush=True)
    plotted = [(epoch_of(row[0]), row) for row in rows if epoch_of(row[0]) is not None]
    if args.figure and not plotted:
        print(f"no figure: no checkpoint's file name holds an epoch number ({args.figure} not written)")
    elif args.figure:
        plt = pyplot()
        figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        x = [epoch for epoch, _ in plotted]
        top.plot(x, [row[1] for _, row in plotted], marker="o", label="real CT liver Dice (example_ct_sm)")
        if args.log:
            with open(args.log, newline="") as handle:
                validation = [float(row["dg"] or 0.0) for row in csv.DictReader(handle)]
            top.plot(range(1, len(validation) + 1), validation, marker=".", label="phantom validation tumour DG")
        top.axhline(0.85, color="grey", linestyle=":", label="real liver target 0.85")
        top.legend(fontsize=8)
        for index, scan_name in enumerate(scans):
            bottom.plot(x, [row[2][index] for _, row in plotted], marker="o", label=scan_name)
        bottom.axhline(5.0, color="grey", linestyle=":", label="target < 5 mL (example_ct_sm)")
        bottom.set_ylabel("false tumour, mL (log scale)")
        bottom.set_xlabel("epoch")
        bottom.legend(fontsize=8)
        bottom.set_yscale("log")
        bottom.set_ylim(bottom=1.0, top=max(10.0, float(np.max([row[2] for _, row in plotted]))) * 1.5)
        figure.tight_layout()
        save_figure(figure, args.figure)


if __name__ == "__main__":
    main()
