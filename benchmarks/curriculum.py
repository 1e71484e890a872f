"""The analogue of the paper's Tables I/II on phantoms: five training schemas, one budget, one test set.

    python benchmarks/curriculum.py --out /tmp/curriculum [--train-cases 16] [--test-cases 6] [--epochs 12]
        [--iterations 60] [--config Resources/Models/demo-curriculum.train.json] [--markdown docs/results/curriculum.md]

Every schema trains the same network from the same seed for the same number of epochs x iterations
(the cascade splits them between its liver and tumour networks), then segments the held-out phantoms
end to end (``segment``: original grid) and is scored with ``livertumor.metrics``: DC, DG, VOE, RVD,
ASSD, MSD, RMSD, recall of lesions < 10 mm, and inference seconds per case.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from livertumor.datasets import find_cases
from livertumor.evaluation import Evaluation
from livertumor.inference import segment
from livertumor.io import read_ct, read_label
from livertumor.memory import keep_freed_memory
from livertumor.metrics import evaluate_pair
from livertumor.phantom import write_phantom_dataset
from livertumor.training import SCHEMAS, TrainConfig, split_cases, train_model

COLUMNS = ("dc", "dg", "voe", "rvd", "assd", "msd", "rmsd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-cases", type=int, default=16)
    parser.add_argument("--test-cases", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=60)
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
        started = time.perf_counter()
        if not model.exists():
            shutil.rmtree(args.out / f"model-{schema}.work", ignore_errors=True)
            train_model(train, validation, config, model, name=f"bench-{schema}")
        train_seconds = time.perf_counter() - started
        results, seconds = [], []
        for case in test_cases:
            ct = read_ct(case.image)
            truth = read_label(case.label, reference=ct.grid)
            start = time.perf_counter()
            prediction = segment(ct, model=model, device=config.device)
            seconds.append(time.perf_counter() - start)
            results.append(evaluate_pair(prediction.labels.array, truth.array, ct.grid.spacing_zyx, case.name))
        aggregate = Evaluation(results).aggregate()
        small = [r.lesions.summary() for r in results]
        found = sum((s["recall_<10mm"] or 0) * s["lesions_<10mm"] for s in small)
        total = sum(s["lesions_<10mm"] for s in small)
        rows.append((schema, aggregate, found / total if total else None, statistics.mean(seconds), train_seconds))
        print(f"{schema}: DG {aggregate['dg']:.3f}", file=sys.stderr)
    header = "| schema | " + " | ".join(c.upper() for c in COLUMNS) + " | recall <10 mm | s / case | training s |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 4)]
    for schema, aggregate, small_recall, per_case, train_seconds in rows:
        cells = [f"{aggregate[c]:.3f}" if aggregate[c] is not None else "-" for c in COLUMNS]
        recall = "-" if small_recall is None else f"{small_recall:.2f}"
        lines.append(f"| {schema} | " + " | ".join(cells) + f" | {recall} | {per_case:.1f} | {train_seconds:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        command = "python benchmarks/curriculum.py " + " ".join(sys.argv[1:])
        args.markdown.write_text(
            "# Training schemas compared on phantoms (analogue of Li et al., Tables I/II)\n\n"
            f"Command: `{command}`\n\nTest set: {len(test_cases)} phantoms never seen in training; metrics as "
            "in `livertumor.metrics` (DC and the distance metrics are means over cases; DG pools voxels).\n\n"
            + table
            + "\n"
        )


if __name__ == "__main__":
    main()
