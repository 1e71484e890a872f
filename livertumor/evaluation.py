"""Evaluating predicted label maps against the truth from files: pairing, metrics, JSON, CSV and plots."""

from __future__ import annotations

import csv
import io as _io
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import LABEL_SUFFIXES
from .errors import DatasetError, MissingPairError
from .io import read_image, volume_stem, volume_suffix
from .metrics import LARGE, METRIC_KEYS, CaseResult, dice_global, evaluate_pair, mean_metrics
from .plotting import pyplot, save_figure

_LITS_KEY = re.compile(r"^(?:volume|segmentation)-(\d+)$")
_PRED_SUFFIXES = ("_pred", "_prediction", *LABEL_SUFFIXES)


def case_key(path: str | os.PathLike) -> str:
    """The name a prediction and its truth share: ``segmentation-3``, ``volume-3`` and ``volume-3_seg``
    -> ``3``; ``case_pred`` / ``case_seg`` / ``case`` -> ``case``."""
    stem = volume_stem(path)
    for suffix in _PRED_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    match = _LITS_KEY.match(stem)
    return match.group(1) if match else stem


def pair_files(pred: str | os.PathLike, truth: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """``(name, prediction, truth)`` triples: two files, or two folders matched by :func:`case_key`.

    Raises :class:`MissingPairError` naming each prediction without truth and each truth without prediction.
    """
    pred, truth = Path(pred), Path(truth)
    if pred.is_file() and truth.is_file():
        return [(case_key(truth), pred, truth)]
    if not (pred.is_dir() and truth.is_dir()):
        raise DatasetError(f"--pred {pred} and --gt {truth} must both be files or both be folders (and exist)")

    def index(folder: Path) -> dict[str, Path]:
        files = sorted(p for p in folder.iterdir() if p.is_file() and volume_suffix(p))
        # A LiTS folder also holds the CTs (volume-N) and maybe other maps: its label maps are segmentation-N.
        for prefix in ("segmentation-", "volume-"):
            lits = [p for p in files if _LITS_KEY.match(volume_stem(p)) and p.name.startswith(prefix)]
            if lits:
                files = lits
                break
        return {case_key(p): p for p in files}

    preds, truths = index(pred), index(truth)
    missing = [f"{truths[k].name} has no prediction" for k in sorted(set(truths) - set(preds))]
    missing += [f"{preds[k].name} has no truth" for k in sorted(set(preds) - set(truths))]
    if missing:
        raise MissingPairError("; ".join(missing))
    if not preds:
        raise DatasetError(f"{pred} and {truth} hold no volumes")
    return [(key, preds[key], truths[key]) for key in sorted(preds)]


@dataclass
class Evaluation:
    """Results of a data set: per case and in aggregate."""

    cases: list[CaseResult]

    def aggregate(self) -> dict:
        """Mean of each metric over cases (undefined values skipped), Dice global and lesion totals."""
        out: dict = dict(mean_metrics(case.metrics for case in self.cases))
        out["dg"] = dice_global(case.stats for case in self.cases)
        reports = [case.lesions for case in self.cases if case.lesions is not None]
        tp = sum(r.true_positives for r in reports)
        truth = sum(len(r.truth) for r in reports)
        predicted = sum(len(r.pred) for r in reports)
        detected = sum(sum(m.matched is not None for m in r.pred) for r in reports)
        out.update(
            lesions=truth,
            tp=tp,
            fn=truth - tp,
            fp=predicted - detected,
            recall=tp / truth if truth else None,
            precision=detected / predicted if predicted else None,
        )
        return out

    def to_json(self) -> dict:
        """``{"cases": {name: row}, "aggregate": {...}}`` with the keys dc, voe, rvd, assd, msd, rmsd, dg."""
        return {"cases": {case.name: case.row() for case in self.cases}, "aggregate": self.aggregate()}

    def csv_text(self) -> str:
        """One row per case."""
        rows = [case.row() for case in self.cases]
        columns = list(dict.fromkeys(key for row in rows for key in row))
        buffer = _io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    def table(self) -> str:
        """A plain-text table for the terminal: per case and the mean over cases (RVD in per cent,
        distances in mm); the pooled figures (DG, lesions found) below it."""
        header = f"{'case':<20}" + "".join(f"{_HEADERS[k]:>9}" for k in METRIC_KEYS) + f"{'recall':>8}"
        lines = [header, "-" * len(header)]
        recalls = []
        for case in self.cases:
            recall = case.lesions.summary()["recall"] if case.lesions else None
            if recall is not None:
                recalls.append(recall)
            lines.append(
                f"{case.name:<20}" + "".join(_metric_cell(k, case.metrics[k]) for k in METRIC_KEYS) + _cell(recall, 8)
            )
        aggregate = self.aggregate()
        lines.append("-" * len(header))
        means = "".join(_metric_cell(k, aggregate[k]) for k in METRIC_KEYS)
        mean_recall = float(np.mean(recalls)) if recalls else None
        lines.append(f"{'mean of cases':<20}{means}{_cell(mean_recall, 8)}")
        lines.append(f"Dice global (DG): {_cell(aggregate['dg'], 0).strip()} (all cases' voxels pooled)")
        pooled = "" if aggregate["recall"] is None else f" (pooled recall {aggregate['recall']:.3f})"
        lines.append(
            f"lesions: {aggregate['tp']} of {aggregate['lesions']} found{pooled}, {aggregate['fp']} false positives"
        )
        return "\n".join(lines)

    def plot(self, folder: str | os.PathLike) -> list[Path]:
        """One PNG per metric in ``folder``: a box plot with every case drawn as a point (few cases make
        a box plot alone misleading); returns the files written."""
        plt = pyplot()

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        rng = np.random.default_rng(0)
        for key in METRIC_KEYS:
            scale = 100.0 if key == "rvd" else 1.0
            values = [scale * case.metrics[key] for case in self.cases if case.metrics[key] is not None]
            figure, axis = plt.subplots(figsize=(3, 4))
            if values:
                axis.boxplot(values)
                axis.scatter(1 + rng.uniform(-0.08, 0.08, len(values)), values, s=14, color="k", zorder=3)
            axis.set_title(f"{_HEADERS[key]} (n = {len(values)} cases)", fontsize=9)
            axis.set_ylabel(_HEADERS[key])
            axis.set_xticks([])
            figure.tight_layout()
            path = folder / f"{key}.png"
            save_figure(figure, path)
            written.append(path)
        return written


#: Column titles with units; RVD is shown in per cent (the JSON and CSV keep it as a fraction).
_HEADERS = {"dc": "DC", "voe": "VOE", "rvd": "RVD %", "assd": "ASSD mm", "msd": "MSD mm", "rmsd": "RMSD mm"}


def _metric_cell(key: str, value: float | None) -> str:
    return _cell(None if value is None else value * (100.0 if key == "rvd" else 1.0))


def _cell(value: float | None, width: int = 9) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def evaluate_files(
    pairs: Sequence[tuple[str, Path, Path]],
    label: int | None = 2,
    rule: str = "overlap",
    iou_threshold: float = 0.5,
    lesion_wise_metrics: bool = False,
    large: float = LARGE,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Read each pair, refuse pairs on different grids, and compute every metric."""
    results = []
    for done, (name, pred_path, truth_path) in enumerate(pairs, start=1):
        truth = read_image(truth_path)
        pred = read_image(pred_path)
        truth.grid.require_same(pred.grid, f"the truth {truth_path}", f"the prediction {pred_path}")
        results.append(
            evaluate_pair(
                pred.array,
                truth.array,
                truth.grid.spacing_zyx,
                name,
                label,
                rule,
                iou_threshold,
                lesion_wise_metrics,
                large,
            )
        )
        if progress:
            progress(done, len(pairs))
    return Evaluation(results)
