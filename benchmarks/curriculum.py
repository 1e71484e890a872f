"""The analogue of the paper's Tables I/II on phantoms: five training schemas, one budget, one test set.

    python benchmarks/curriculum.py --out /tmp/curriculum [--train-cases 16] [--test-cases 6] [--epochs 16]
        [--iterations 80] [--config Resources/Models/demo-curriculum.train.json] [--markdown docs/results/curriculum.md]

Every schema trains the same network from the same seed for the same number of epochs x iterations
(the cascade splits them between its liver and tumour networks), then segments the held-out phantoms
end to end (``segment``: original grid) and is scored with ``livertumor.metrics``: DC, DG, VOE, RVD,
ASSD, MSD, RMSD, recall of lesions < 10 mm, and inference seconds per case.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from livertumor.datasets import find_cases
from livertumor.evaluation import Evaluation
from livertumor.inference import segment
from livertumor.io import read_ct, read_label
from livertumor.memory import keep_freed_memory
from livertumor.metrics import evaluate_pair
from livertumor.phantom import write_phantom_dataset
from livertumor.training import SCHEMAS, TrainConfig, split_cases, train_model

COLUMNS = ("dc", "dg", "voe", "rvd", "assd", "msd", "rmsd")


LEGEND = (
    "Test set: {cases} phantoms never seen in training. DC, VOE, RVD (%), ASSD, MSD and RMSD (mm) are means over "
    "the test cases that hold tumour (as in the paper's test set; LiTS's rules for an empty prediction); DG "
    "pools the voxels of all cases; recall is per lesion (any overlap), < 10 mm by equivalent diameter; FP mL is "
    "the tumour predicted in the lesion-free phantoms, per case; training s sums the logged epochs "
    "(validation included)."
)


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def training_seconds(model: Path) -> float:
    """Seconds of every epoch the run logged (both networks for the cascade), from its CSV logs."""
    total = 0.0
    for log in sorted(model.parent.glob(f"{model.name}.work/*-log.csv")):
        with log.open(newline="") as handle:
            total += sum(float(row["seconds"]) for row in csv.DictReader(handle))
    return total


def summarise(schema: str, results: list, voxel_ml: list[float], seconds: float, train_seconds: float) -> dict:
    """One table row from the test cases' results and each case's voxel volume (mL)."""
    with_tumour = [r for r in results if r.stats.truth_voxels]
    row: dict = {"schema": schema, **Evaluation(with_tumour).aggregate()}
    row["dg"] = Evaluation(results).aggregate()["dg"]
    row["rvd"] = None if row["rvd"] is None else 100 * row["rvd"]
    small = [r.lesions.summary() for r in results]
    found = sum((s["recall_<10mm"] or 0) * s["lesions_<10mm"] for s in small)
    total = sum(s["lesions_<10mm"] for s in small)
    row["small_recall"] = found / total if total else None
    free = [r.stats.pred_voxels * v for r, v in zip(results, voxel_ml) if not r.stats.truth_voxels]
    row["fp_ml"] = statistics.mean(free) if free else None
    row.update(seconds=seconds, training_seconds=train_seconds)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-cases", type=int, default=16)
    parser.add_argument("--test-cases", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=80)
    parser.add_argument("--config", type=Path, default=Path("Resources/Models/demo-curriculum.train.json"))
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 160, 160))
    parser.add_argument("--spacing", type=float, nargs=3, default=(2.5, 2.5, 2.5))
    parser.add_argument("--schemas", nargs="+", default=list(SCHEMAS))
    parser.add_argument("--markdown", type=Path, help="also write the table and command to this file")
    args = parser.parse_args()
    keep_freed_memory()  # as the livertumor command does
    base = TrainConfig.from_json(json.loads(args.config.read_text()))
    data, test = args.out / "train", args.out / "test"
    if not data.exists():
        write_phantom_dataset(data, args.train_cases, seed=100, shape=args.shape, spacing_zyx=args.spacing)
        write_phantom_dataset(test, args.test_cases, seed=200, shape=args.shape, spacing_zyx=args.spacing)
    train, validation = split_cases(find_cases(data), 0.15, 0)
    test_cases = find_cases(test)
    rows = []
    for schema in args.schemas:
        epochs = args.epochs // 2 if schema == "cascade" else args.epochs
        # Tumour-only networks as in the paper (the cascade's two networks have two classes each).
        architecture = replace(base.architecture, classes=2)
        config = replace(
            base,
            schema=schema,
            architecture=architecture,
            epochs=epochs,
            stage_epochs=None,
            iterations_per_epoch=args.iterations,
        )
        model = args.out / f"model-{schema}"
        if not model.exists():
            shutil.rmtree(args.out / f"model-{schema}.work", ignore_errors=True)
            train_model(train, validation, config, model, name=f"bench-{schema}")
        results, seconds, voxel_ml = [], [], []
        for case in test_cases:
            ct = read_ct(case.image)
            truth = read_label(case.label, reference=ct.grid)
            start = time.perf_counter()
            prediction = segment(ct, model=model, device=config.device)
            seconds.append(time.perf_counter() - start)
            results.append(evaluate_pair(prediction.labels.array, truth.array, ct.grid.spacing_zyx, case.name))
            voxel_ml.append(float(np.prod(ct.grid.spacing_zyx)) / 1000)
        rows.append(summarise(schema, results, voxel_ml, statistics.mean(seconds), training_seconds(model)))
        print(f"{schema}: DG {rows[-1]['dg']:.3f}", file=sys.stderr)
    header = [c.upper() for c in COLUMNS] + ["recall", "recall <10 mm", "FP mL, lesion-free", "s / case", "training s"]
    lines = ["| schema | " + " | ".join(header) + " |", "|" + "---|" * (len(header) + 1)]
    for row in rows:
        cells = [_cell(row[key], 3) for key in COLUMNS] + [_cell(row["recall"], 2), _cell(row["small_recall"], 2)]
        cells += [_cell(row["fp_ml"], 1), _cell(row["seconds"], 1), _cell(row["training_seconds"], 0)]
        lines.append(f"| {row['schema']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        command = "python benchmarks/curriculum.py " + " ".join(sys.argv[1:])
        args.markdown.write_text(
            "# Training schemas compared on phantoms (analogue of Li et al., Tables I/II)\n\n"
            f"Command: `{command}`\n\n{LEGEND.format(cases=len(test_cases))}\n\n" + table + "\n"
        )


if __name__ == "__main__":
    main()
