"""The analogue of the paper's Tables I/II on phantoms: five training schemas, one budget, one test set.

    python benchmarks/curriculum.py --out /tmp/curriculum [--train-cases 16] [--test-cases 6] [--epochs 16]
        [--iterations 80] [--seeds 0 1 2] [--classes 2] [--jobs 1] [--device cpu] [--phantom-workers 1]
        [--whole-batch 1] [--patch-batch 2] [--loader-workers 1] [--lr-schedule step|poly] [--loss NAME]
        [--config Resources/Models/demo-curriculum.train.json] [--markdown docs/results/curriculum.md]
        [--head-width N] [--tumour-fraction F]

Every schema trains the same network for the same number of epochs x iterations (the cascade splits them
between its liver and tumour networks) once per training seed (weights' initialisation and the blocks
drawn), then segments the held-out phantoms end to end (``segment``: original grid) and is scored with
``livertumor.metrics``: DC, DG, VOE, RVD, ASSD, MSD, RMSD, recall of lesions < 10 mm, and inference
seconds per case. The networks segment tumour only, as in the paper (``--classes 2``), or liver and tumour
at once, as the demo model (``--classes 3``); the cascade's two networks have two classes either way.
With several seeds the table gives each column's mean ± sd over them, and a second table each seed's DG.

``--whole-batch`` / ``--patch-batch`` / ``--loader-workers`` override the settings' (1, 2, 1) for every
schema alike: on a GPU, 16 whole 32x64x64 blocks per step hold the voxels of one of the paper's
64x256x256 sub-volumes and cost about one batch-1 step (docs/results/training.md).

``--jobs N`` runs N schema/seed runs at once, each in its own process (on a GPU they share it; on the
CPU they share its cores). A run's row is kept in ``OUT/result-SCHEMA-SEED.json``: a finished run is
read back, not trained again; ``--jobs 0`` only tabulates the finished runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.stats

from livertumor.datasets import find_cases
from livertumor.evaluation import Evaluation
from livertumor.inference import segment
from livertumor.io import read_ct, read_label
from livertumor.losses import LOSSES
from livertumor.memory import keep_freed_memory
from livertumor.metrics import evaluate_pair
from livertumor.phantom import write_phantom_dataset
from livertumor.plotting import pyplot, save_figure
from livertumor.training import LR_SCHEDULES, SCHEMAS, TrainConfig, split_cases, train_model

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


def run_config(base: TrainConfig, schema: str, seed: int, args: argparse.Namespace) -> TrainConfig:
    """The settings of one schema/seed run: ``--classes`` classes (2, tumour only, as in the paper; 3 adds
    the liver, as the demo model; the cascade's two networks have two classes each), the budget split
    over the schema's stages."""
    return replace(
        base,
        schema=schema,
        architecture=replace(
            base.architecture,
            classes=2 if schema == "cascade" else args.classes,
            head_width=args.head_width or base.architecture.head_width,
        ),
        epochs=args.epochs // 2 if schema == "cascade" else args.epochs,
        stage_epochs=None,
        iterations_per_epoch=args.iterations,
        seed=seed,
        device=args.device or base.device,
        whole_batch=args.whole_batch or base.whole_batch,
        patch_batch=args.patch_batch or base.patch_batch,
        workers=base.workers if args.loader_workers is None else args.loader_workers,
        lr_schedule=args.lr_schedule or base.lr_schedule,
        loss=args.loss or base.loss,
        tumour_fraction=base.tumour_fraction if args.tumour_fraction is None else args.tumour_fraction,
    )


def run_one(base: TrainConfig, schema: str, seed: int, args: argparse.Namespace) -> dict:
    """Train (unless done) and test one schema with one seed; returns its table row."""
    train, validation = split_cases(find_cases(args.out / "train"), 0.15, 0)
    config = run_config(base, schema, seed, args)
    model = args.out / f"model-{schema}-seed{seed}"
    if not model.exists():
        shutil.rmtree(args.out / f"{model.name}.work", ignore_errors=True)
        train_model(train, validation, config, model, name=f"bench-{schema}")
    results, seconds, voxel_ml = [], [], []
    for case in find_cases(args.out / "test"):
        ct = read_ct(case.image)
        truth = read_label(case.label, reference=ct.grid)
        start = time.perf_counter()
        prediction = segment(ct, model=model, device=config.device)
        seconds.append(time.perf_counter() - start)
        results.append(evaluate_pair(prediction.labels.array, truth.array, ct.grid.spacing_zyx, case.name))
        voxel_ml.append(float(np.prod(ct.grid.spacing_zyx)) / 1000)
    row = summarise(schema, results, voxel_ml, statistics.mean(seconds), training_seconds(model))
    return {**row, "seed": seed}


def result_path(out: Path, schema: str, seed: int) -> Path:
    return out / f"result-{schema}-seed{seed}.json"


def _cell_spread(values: list[float | None], digits: int) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    if len(present) == 1:
        return f"{present[0]:.{digits}f}"
    return f"{statistics.mean(present):.{digits}f} ± {statistics.stdev(present):.{digits}f}"


KEYS = (*COLUMNS, "recall", "small_recall", "fp_ml", "seconds", "training_seconds")
DIGITS = (3,) * len(COLUMNS) + (2, 2, 1, 1, 0)


def tables(rows: list[dict], schemas: list[str], seeds: list[int]) -> str:
    """Mean ± sd over seeds per schema, then each seed's DG and three-stage's gap to each schema, paired by seed."""
    header = [c.upper() for c in COLUMNS] + ["recall", "recall <10 mm", "FP mL, lesion-free", "s / case", "training s"]
    lines = ["| schema | " + " | ".join(header) + " |", "|" + "---|" * (len(header) + 1)]
    by_schema = {schema: [r for r in rows if r["schema"] == schema] for schema in schemas}
    for schema, runs in by_schema.items():
        cells = [_cell_spread([r[key] for r in runs], digits) for key, digits in zip(KEYS, DIGITS)]
        lines.append(f"| {schema} | " + " | ".join(cells) + " |")
    if len(seeds) > 1:
        lines += [
            "",
            "| schema | " + " | ".join(f"DG, seed {s}" for s in seeds) + " |",
            "|" + "---|" * (len(seeds) + 1),
        ]
        for schema, runs in by_schema.items():
            dg = {r["seed"]: r["dg"] for r in runs}
            lines.append(f"| {schema} | " + " | ".join(_cell(dg.get(s), 3) for s in seeds) + " |")
        lines += ["", *paired_gaps(rows, schemas, seeds)]
    return "\n".join(lines)


def paired_gaps(rows: list[dict], schemas: list[str], seeds: list[int], reference: str = "three-stage") -> list[str]:
    """The paper's claim seed by seed: ``reference``'s test DG minus each other schema's on the same training
    seed, with the mean ± sd and 95 % t interval of those differences and the seeds ``reference`` won.

    Pairing by seed removes what a seed does to every schema alike: the non-cascade schemas share the
    initial weights, and naive and whole-to-patch their first blocks too. An interval that excludes 0 is a
    gap beyond the spread between seeds."""
    dg = {(r["schema"], r["seed"]): r["dg"] for r in rows}
    lines = [
        f"| {reference} minus | per seed | mean ± sd | 95 % interval | {reference} ahead |",
        "|---|---|---|---|---|",
    ]
    for schema in schemas:
        paired = [s for s in seeds if (reference, s) in dg and (schema, s) in dg]
        if schema == reference or len(paired) < 2:
            continue
        gaps = [dg[reference, s] - dg[schema, s] for s in paired]
        mean, sd = statistics.mean(gaps), statistics.stdev(gaps)
        half = float(scipy.stats.t.ppf(0.975, len(gaps) - 1)) * sd / len(gaps) ** 0.5
        lines.append(
            f"| {schema} | {', '.join(f'{g:+.3f}' for g in gaps)} | {mean:+.3f} ± {sd:.3f} "
            f"| {mean - half:+.3f} to {mean + half:+.3f} | {sum(g > 0 for g in gaps)} of {len(gaps)} |"
        )
    return lines if len(lines) > 2 else []


def validation_curves(out: Path, schemas: list[str], seeds: list[int], path: Path) -> None:
    """Validation tumour DG per epoch of every run (the cascade's: its tumour network's, in the true liver's
    box): one panel per schema, one line per seed."""
    plt = pyplot()
    columns = 1 + (len(seeds) - 1) // 12  # a legend column per 12 seeds keeps it within the panels' height
    legend_width = 1.05 * columns
    figure, axes = plt.subplots(
        1, len(schemas), figsize=(3.2 * len(schemas) + legend_width, 3.2), sharey=True, squeeze=False
    )
    # past ten seeds the default cycle repeats its colours, so spread them over a colour map
    colours = plt.get_cmap("turbo")(np.linspace(0, 1, len(seeds))) if len(seeds) > 10 else [None] * len(seeds)
    for axis, schema in zip(axes[0], schemas):
        for seed, colour in zip(seeds, colours):
            work = out / f"model-{schema}-seed{seed}.work"
            log = next(
                (work / f"{task}-log.csv" for task in ("tumour", "joint") if (work / f"{task}-log.csv").exists()), None
            )
            if log:
                with log.open(newline="") as handle:
                    scores = [float(row["dg"] or "nan") for row in csv.DictReader(handle)]
                axis.plot(range(1, len(scores) + 1), scores, marker=".", color=colour, label=f"seed {seed}")
        axis.set_title(schema)
        axis.set_xlabel("epoch")
    axes[0][0].set_ylabel("validation tumour DG")
    labelled = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.tight_layout(rect=(0, 0, 1 - legend_width / figure.get_figwidth(), 1))
    figure.legend(labelled.values(), labelled.keys(), loc="center right", fontsize="small", ncol=columns)
    save_figure(figure, path)


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
    parser.add_argument("--classes", type=int, choices=(2, 3), default=2, help="2: tumour only (the paper); 3: + liver")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds per schema")
    parser.add_argument("--jobs", type=int, default=1, help="schema/seed runs at once, each in its own process")
    parser.add_argument("--device", help="where to train and segment (default: the config's)")
    parser.add_argument("--phantom-workers", type=int, default=1, help="processes writing the phantoms")
    parser.add_argument("--whole-batch", type=int, help="whole-volume blocks per step (default: the settings')")
    parser.add_argument("--patch-batch", type=int, help="tumour patches per step (default: the settings')")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="within each stage (default: the settings')")
    parser.add_argument("--loss", choices=list(LOSSES), help="the training loss (default: the settings')")
    parser.add_argument("--loader-workers", type=int, help="data-loading processes per run (default: the settings')")
    parser.add_argument("--head-width", type=int, help="channels of the head's last features (default: the settings')")
    parser.add_argument(
        "--tumour-fraction", type=float, help="share of whole blocks drawn around a tumour (default: the settings')"
    )
    parser.add_argument("--run", nargs=2, metavar=("SCHEMA", "SEED"), help=argparse.SUPPRESS)  # one run, in a job
    parser.add_argument("--markdown", type=Path, help="also write the table and command to this file")
    args = parser.parse_args()
    keep_freed_memory()  # as the livertumor command does
    base = TrainConfig.from_json(json.loads(args.config.read_text()))
    if args.run:
        schema, seed = args.run[0], int(args.run[1])
        row = run_one(base, schema, seed, args)
        result_path(args.out, schema, seed).write_text(json.dumps(row))
        return
    data, test = args.out / "train", args.out / "test"
    if not data.exists():
        shape, spacing, workers = args.shape, args.spacing, args.phantom_workers
        write_phantom_dataset(data, args.train_cases, seed=100, shape=shape, spacing_zyx=spacing, workers=workers)
        write_phantom_dataset(test, args.test_cases, seed=200, shape=shape, spacing_zyx=spacing, workers=workers)
    runs = [(schema, seed) for seed in args.seeds for schema in args.schemas]
    pending = [run for run in runs if args.jobs and not result_path(args.out, *run).exists()]
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            schema, seed = pending.pop(0)
            command = [sys.executable, __file__, *sys.argv[1:], "--run", schema, str(seed)]
            running.append(subprocess.Popen(command))
        for process in list(running):
            if process.poll() is not None:
                running.remove(process)
                if process.returncode:
                    print(f"a run failed ({process.args[-2:]}): exit {process.returncode}", file=sys.stderr)
        time.sleep(1)
    rows = [json.loads(result_path(args.out, *run).read_text()) for run in runs if result_path(args.out, *run).exists()]
    for row in rows:
        print(f"{row['schema']} seed {row['seed']}: DG {row['dg']:.3f}", file=sys.stderr)
    table = tables(rows, args.schemas, args.seeds)
    print(table)
    if args.markdown:
        command = "python benchmarks/curriculum.py " + " ".join(sys.argv[1:])
        curves = args.markdown.with_name(args.markdown.stem + "-curves.png")
        validation_curves(args.out, args.schemas, args.seeds, curves)
        args.markdown.write_text(
            "# Training schemas compared on phantoms (analogue of Li et al., Tables I/II)\n\n"
            f"Command: `{command}`\n\n{LEGEND.format(cases=args.test_cases)}\n\n" + table + "\n\n"
            f"![validation curves]({curves.name})\n"
        )


if __name__ == "__main__":
    main()
