"""The ``livertumor`` command (also ``python -m livertumor``).

Each sub-command lives in a small function taking parsed arguments; errors the library raises on purpose
(:class:`~livertumor.errors.LiverTumorError`) print as one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .errors import LiverTumorError


def _progress_bar(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="case", file=sys.stderr, disable=None)


def cmd_phantom(args: argparse.Namespace) -> int:
    from .phantom import write_phantom_dataset

    with _progress_bar(args.cases, "phantoms") as bar:
        manifest = write_phantom_dataset(
            args.out,
            args.cases,
            seed=args.seed,
            shape=args.shape,
            spacing_zyx=args.spacing,
            suffix=".nii.gz" if args.compress else ".nii",
            progress=lambda done, total: bar.update(1),
        )
    data = json.loads(manifest.read_text())
    lesions = sum(len(case["lesions"]) for case in data["cases"])
    print(f"wrote {args.cases} cases with {lesions} lesions to {args.out} (manifest: {manifest})")
    return 0


def volume_summary(path: Path) -> dict:
    """Geometry and value statistics of any volume file or DICOM folder (what ``info`` prints)."""
    from .io import read_image

    volume = read_image(path)
    grid = volume.grid
    values = volume.array.astype(np.float64, copy=False)
    percentiles = np.percentile(values, [1, 50, 99])
    return {
        "path": str(path),
        "dtype": str(volume.array.dtype),
        "shape_zyx": list(grid.shape),
        "size_xyz": list(grid.shape[::-1]),
        "spacing_xyz_mm": list(grid.spacing),
        "origin_lps_mm": list(grid.origin),
        "direction": grid.direction.round(6).tolist(),
        "orientation": grid.orientation(),
        "oblique": grid.is_oblique(),
        "extent_xyz_mm": [n * s for n, s in zip(grid.shape[::-1], grid.spacing)],
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p1": float(percentiles[0]),
        "median": float(percentiles[1]),
        "p99": float(percentiles[2]),
    }


def cmd_info(args: argparse.Namespace) -> int:
    for path in args.paths:
        summary = volume_summary(path)
        if args.json:
            print(json.dumps(summary))
            continue
        print(f"{summary['path']}")
        print(f"  size (x,y,z)     {' x '.join(map(str, summary['size_xyz']))}  ({summary['dtype']})")
        print(f"  spacing (mm)     {', '.join(f'{s:.4g}' for s in summary['spacing_xyz_mm'])}")
        print(f"  origin LPS (mm)  {', '.join(f'{o:.4g}' for o in summary['origin_lps_mm'])}")
        print(f"  orientation      {summary['orientation']}{' (oblique)' if summary['oblique'] else ''}")
        print(f"  extent (mm)      {', '.join(f'{e:.1f}' for e in summary['extent_xyz_mm'])}")
        print(
            f"  values           min {summary['min']:g}, p1 {summary['p1']:g}, median {summary['median']:g}, "
            f"p99 {summary['p99']:g}, max {summary['max']:g}, mean {summary['mean']:.1f} ± {summary['std']:.1f}"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_files, pair_files
    from .io import write_json, write_text_atomic

    pairs = pair_files(args.pred, args.gt)
    with _progress_bar(len(pairs), "evaluate") as bar:
        evaluation = evaluate_files(
            pairs,
            label=args.label,
            rule=args.match,
            iou_threshold=args.iou,
            lesion_wise_metrics=args.lesion_metrics,
            large=args.large,
            progress=lambda done, total: bar.update(1),
        )
    print(evaluation.table())
    if args.json:
        write_json(args.json, evaluation.to_json())
    if args.csv:
        write_text_atomic(args.csv, evaluation.csv_text())
    if args.plots:
        evaluation.plot(args.plots)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    from .phantom import DEFAULT_SHAPE, DEFAULT_SPACING_ZYX

    parser = argparse.ArgumentParser(
        prog="livertumor",
        description="Liver tumour segmentation and lesion classification on CT (research use, not for diagnosis).",
    )
    parser.add_argument("--version", action="version", version=f"livertumor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    phantom = commands.add_parser(
        "phantom",
        help="write synthetic abdominal CTs with liver lesions (LiTS layout)",
        description="Write N synthetic CT cases (volume-N, segmentation-N with 0 background / 1 liver / 2 tumour, "
        "classes-N with 1 cyst / 2 hemangioma / 3 metastasis) and manifest.json describing every lesion. "
        "Every 5th case has no lesion.",
    )
    phantom.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    phantom.add_argument("--cases", type=int, default=5, help="number of cases (default 5)")
    phantom.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same data (default 0)")
    phantom.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=DEFAULT_SHAPE,
        help=f"voxels per axis, slices first (default {' '.join(map(str, DEFAULT_SHAPE))})",
    )
    phantom.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=DEFAULT_SPACING_ZYX,
        help=f"voxel size in mm, slice thickness first (default {' '.join(map(str, DEFAULT_SPACING_ZYX))})",
    )
    phantom.add_argument("--compress", action="store_true", help="write .nii.gz instead of .nii")
    phantom.set_defaults(run=cmd_phantom)

    info = commands.add_parser(
        "info",
        help="print the geometry and value statistics of volumes",
        description="Print size, spacing, origin (LPS), orientation and HU statistics of each volume "
        "(NIfTI, NRRD, MHA, or a DICOM series folder).",
    )
    info.add_argument("paths", type=Path, nargs="+", help="volume files or DICOM folders")
    info.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    info.set_defaults(run=cmd_info)

    evaluate = commands.add_parser(
        "evaluate",
        help="LiTS metrics of predicted label maps against the truth",
        description="DC, VOE, RVD, ASSD, MSD, RMSD per case (as the LiTS scoring program defines them), "
        "Dice global over the data set, and lesion-wise detection (recall and precision by lesion size). "
        "Pairs on different voxel grids are refused.",
    )
    evaluate.add_argument("--pred", type=Path, required=True, help="predicted label map, or a folder of them")
    evaluate.add_argument(
        "--gt",
        type=Path,
        required=True,
        help="true label map, or a folder; folders pair by name (segmentation-3 = volume-3 = 3; case_pred = case_seg)",
    )
    evaluate.add_argument("--label", type=int, default=2, help="label value evaluated (default 2, tumour)")
    evaluate.add_argument("--json", type=Path, help="write per-case and aggregate results as JSON")
    evaluate.add_argument("--csv", type=Path, help="write one CSV row per case")
    evaluate.add_argument("--plots", type=Path, help="write a PNG box plot per metric into this folder")
    evaluate.add_argument(
        "--match",
        choices=("overlap", "iou"),
        default="overlap",
        help="lesion matching: any shared voxel (default) or IoU of at least --iou; one to one, best IoU first",
    )
    evaluate.add_argument("--iou", type=float, default=0.5, help="IoU needed with --match iou (default 0.5)")
    evaluate.add_argument(
        "--lesion-metrics", action="store_true", help="also average VOE, RVD, ASSD, MSD, RMSD over detected lesions"
    )
    evaluate.add_argument(
        "--large", type=float, default=9001.0, help="value of RVD and distances when one mask is empty (LiTS: 9001)"
    )
    evaluate.set_defaults(run=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``livertumor`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except LiverTumorError as error:
        print(f"livertumor {args.command}: error: {error}", file=sys.stderr)
        return 2
