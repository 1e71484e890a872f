"""Validation curves of several training runs in one figure, from their epoch logs (``*-log.csv``):

    python benchmarks/plot_logs.py --out docs/results/figure.png "label one=/tmp/a/work/joint-log.csv" ...
        [--baseline "version 5=0.374"] [--ylabel TEXT]

Each log's validation tumour Dice global per epoch (``path@column`` plots another column of the log, e.g.
``@dg_raw``, the Dice without the card's post-processing); ``--baseline`` draws a labelled horizontal line
(e.g. the starting model's score on the same validation cases).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from livertumor.plotting import pyplot, save_figure


def labelled(text: str) -> tuple[str, str]:
    """``label=value`` split at its last ``=``."""
    label, _, value = text.rpartition("=")
    if not label:
        raise argparse.ArgumentTypeError(f"expected label=value, got {text!r}")
    return label, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=labelled, help="label=path of an epoch log")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--baseline", type=labelled, action="append", default=[], help="label=Dice")
    parser.add_argument("--ylabel", default="validation tumour Dice global", help="for logs plotting other columns")
    args = parser.parse_args()
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for label, source in args.logs:
        path, _, column = source.partition("@")
        with open(path, newline="") as handle:
            scores = [float(row[column or "dg"] or "nan") for row in csv.DictReader(handle)]
        axis.plot(range(1, len(scores) + 1), scores, marker="o", label=label)
    for (label, value), style in zip(args.baseline, ["--", ":", "-."] * len(args.baseline)):
        axis.axhline(float(value), color="grey", linestyle=style, label=label)
    axis.set_xlabel("epoch")
    axis.set_ylabel(args.ylabel)
    axis.legend(fontsize="small")
    figure.tight_layout()
    save_figure(figure, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
