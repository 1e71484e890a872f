"""The ``livertumor`` command (also ``python -m livertumor``).

Each sub-command lives in a small function taking parsed arguments; errors the library raises on purpose
(:class:`~livertumor.errors.LiverTumorError`) print as one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .errors import LiverTumorError
from .memory import keep_freed_memory


def _progress_bar(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="case", file=sys.stderr, disable=None)


class _OneLineParser(argparse.ArgumentParser):
    """Option errors as one line (``livertumor CMD: error: ...``) and exit 2, without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind: type, low: float, high: float, low_open: bool = False):
    """An argparse type: a ``kind`` number within ``low..high`` (``low`` excluded if ``low_open``)."""

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not (low < value if low_open else low <= value) or not value <= high or value != value:
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"{text} is outside {bracket}{low:g}, {high:g}]")
        return value

    return convert


def _json_file(text: str) -> dict:
    """An argparse type: a JSON file holding an object (settings)."""
    try:
        data = json.loads(Path(text).read_text())
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise argparse.ArgumentTypeError(f"{text} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"{text} holds a JSON {type(data).__name__}, not an object of settings")
    return data


COUNT = _number(int, 1, 100_000)
SEED = _number(int, 0, 2**32 - 1)


def check_outputs(outputs: Sequence[tuple[Path, str]], inputs: Sequence[Path | None], overwrite: bool) -> None:
    """Refuse before any work what would destroy something: an output that is one of the inputs (even
    with ``--overwrite``), two results bound for one path (``outputs`` pairs each path with what it
    holds), or an existing file without ``--overwrite``."""
    from .errors import ImageWriteError
    from .io import same_file

    claimed: dict[str, str] = {}
    for path, what in outputs:
        for source in inputs:
            if source is not None and same_file(path, source):
                raise ImageWriteError(f"{path} is an input of this run; write the {what} elsewhere")
        key = os.path.realpath(path)
        if key in claimed:
            raise ImageWriteError(
                f"{claimed[key]} and {what} would both be written to {path}; give them different names or folders"
            )
        claimed[key] = what
        if path.exists() and not overwrite:
            raise ImageWriteError(f"{path} exists; pass --overwrite to replace it")


def check_empty_folder(folder: Path, overwrite: bool) -> None:
    """A command that fills a folder with its own file names refuses one holding files already."""
    from .errors import ImageWriteError

    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ImageWriteError(
            f"{folder} is not empty; pass --overwrite to write over what is there, or choose a new folder"
        )
    if folder.exists() and not folder.is_dir():
        raise ImageWriteError(f"{folder} is a file, not a folder")


def _report_dataset(manifest: Path, out: Path) -> None:
    data = json.loads(manifest.read_text())
    lesions = [lesion["kind"] for case in data["cases"] for lesion in case["lesions"]]
    kinds = ", ".join(f"{lesions.count(kind)} {kind}" for kind in dict.fromkeys(sorted(lesions))) or "none"
    phases = ", ".join(sorted({case["phase"] for case in data["cases"]}))
    print(
        f"wrote {len(data['cases'])} cases with {len(lesions)} lesions ({kinds}; phases: {phases}) to {out} "
        f"(manifest: {manifest})"
    )


def cmd_phantom(args: argparse.Namespace) -> int:
    from .io import folder_lock
    from .phantom import ANATOMY_OPTIONS, write_phantom_dataset

    check_empty_folder(args.out, args.overwrite)
    with folder_lock(args.out), _progress_bar(args.cases, "phantoms") as bar:
        manifest = write_phantom_dataset(
            args.out,
            args.cases,
            seed=args.seed,
            shape=args.shape,
            spacing_zyx=args.spacing,
            suffix=".nii.gz" if args.compress else ".nii",
            progress=lambda done, total: bar.update(1),
            phases=args.phases,
            kinds=args.kinds,
            workers=args.workers,
            **{option: getattr(args, option) for option in ANATOMY_OPTIONS},
        )
    _report_dataset(manifest, args.out)
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    from .io import folder_lock
    from .phantom import synthesize

    check_empty_folder(args.out, args.overwrite)
    check_outputs([(args.out, "output folder")], [args.ct, args.liver], overwrite=True)
    with folder_lock(args.out), _progress_bar(args.cases, "cases") as bar:
        manifest = synthesize(
            args.ct,
            args.liver,
            args.out,
            cases=args.cases,
            seed=args.seed,
            phase=args.phase,
            liver_label=args.liver_label,
            progress=lambda done, total: bar.update(1),
        )
    _report_dataset(manifest, args.out)
    return 0


def volume_summary(path: Path, series: str | None = None) -> dict:
    """Geometry and value statistics of any volume file or DICOM folder (what ``info`` prints);
    ``series`` picks one DICOM series of a folder that holds several."""
    from .io import read_image

    volume = read_image(path, series)
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
        summary = volume_summary(path, args.series)
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

    outputs = [(p, what) for p, what in ((args.json, "JSON"), (args.csv, "CSV"), (args.plots, "plots")) if p]
    check_outputs(outputs, [args.pred, args.gt], overwrite=True)  # results are replaced, inputs never
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


#: Environment variable naming the prefix of ``--progress json`` event lines (see :meth:`Reporter.json`).
EVENT_PREFIX_VARIABLE = "LIVERTUMOR_EVENT_PREFIX"


class Reporter:
    """Progress for people (a bar on stderr) or for programs (``--progress json``: one JSON object per
    line on stdout, flushed, which the Slicer modules parse)."""

    def __init__(self, mode: str, description: str) -> None:
        self.mode, self.description, self.bar = mode, description, None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc=description, file=sys.stderr, disable=None, bar_format="{l_bar}{bar}|")

    def fraction(self, value: float, message: str) -> None:
        if self.bar is not None:
            self.bar.n = round(100 * value)
            # the message goes in the description: tqdm starts a postfix with ", "
            self.bar.set_description_str(f"{self.description}: {message}" if message else self.description)
        elif self.mode == "json":
            self.json(progress=round(value, 4), message=message)

    def json(self, **data) -> None:
        if self.mode == "json":
            # A caller that reads events from the merged output (the Slicer modules) sets a per-run
            # prefix: lines without it are log text whatever they hold, so no file or card name printed
            # elsewhere can pose as an event.
            print(os.environ.get(EVENT_PREFIX_VARIABLE, "") + json.dumps(data, default=str), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _training_event_printer(reporter: Reporter):
    last_eta: dict[str, float] = {}

    def on_event(event: dict) -> None:
        if reporter.mode == "json":
            reporter.json(**event)
            return
        if event["event"] == "plan":
            stages = "; ".join(
                f"stage {s['stage']} {s['kind']}: {s['epochs']} epochs x {s['iterations']} iterations, "
                f"learning rate {s['learning_rate']:g}"
                for s in event["stages"]
            )
            resumed = f", resuming after {event['starting_at']}" if event["starting_at"] else ""
            print(f"{event['task']} plan: {stages} ({event['total_iterations']} iterations{resumed})", file=sys.stderr)
        elif event["event"] == "iteration":
            last_eta["s"] = event["eta_s"]
            reporter.fraction(
                event["done_iterations"] / event["total_iterations"],
                f"{event['task']} stage {event['stage'] + 1} ({event['kind']}) epoch {event['epoch'] + 1}: "
                f"loss {event['loss']:.3f}, {_duration(event['eta_s'])} left",
            )
        elif event["event"] == "epoch":
            dice = "-" if event.get("dg") is None else f"{event['dg']:.3f}"
            print(
                f"\n{event['task']} epoch {event['done']}/{event['total']} (stage {event['stage']}, {event['kind']}): "
                f"loss {event['loss']:.4f}, validation DG {dice}"
                + (f", {_duration(last_eta['s'])} left" if "s" in last_eta else ""),
                file=sys.stderr,
            )
        elif event["event"] == "validation-plan":
            print(f"validation: {event['note']}", file=sys.stderr)
        elif event["event"] in ("resumed", "saved", "preparing"):
            print(json.dumps(event, default=str), file=sys.stderr)

    return on_event


def _duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _train_config(args: argparse.Namespace):
    from .training import TrainConfig, config_with

    config = TrainConfig()
    if args.config:
        config = TrainConfig.from_json(args.config)
    config = config_with(
        config,
        schema=args.schema,
        epochs=args.epochs,
        stage_epochs=tuple(args.stage_epochs) if args.stage_epochs else None,
        iterations_per_epoch=args.iterations,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        average_epochs=args.average_epochs,
        keep_epochs=args.keep_epochs,
    )
    config.stage_plan()  # refuses stage lengths that do not fit the schema before the data is read
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from .datasets import find_cases
    from .training import split_cases, train_model

    config = _train_config(args)
    cases = find_cases(args.data)
    train, validation = split_cases(cases, args.validation_fraction, config.seed)
    reporter = Reporter(args.progress, "train")
    try:
        result = train_model(
            train,
            validation,
            config,
            args.out,
            name=args.name,
            version="1",
            work_dir=args.work_dir,
            on_event=_training_event_printer(reporter),
            restart=args.restart,
        )
    finally:
        reporter.close()
    if result.model_dir is not None:
        print(f"model written to {result.model_dir}; validation: {json.dumps(result.validation, default=str)}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .datasets import find_cases
    from .finetune import finetune

    reporter = Reporter(args.progress, "fine-tune")
    try:
        out = finetune(
            args.model,
            find_cases(args.data),
            out=args.out,
            epochs=args.epochs,
            iterations=args.iterations,
            validation_fraction=args.validation_fraction,
            seed=args.seed,
            device=args.device,
            workers=args.workers,
            on_event=_training_event_printer(reporter),
            restart=args.restart,
            preset=args.preset,
        )
    finally:
        reporter.close()
    print(f"new model version written to {out}")
    return 0


#: File names of label maps that sit beside the images in data folders (LiTS ``segmentation-N``,
#: ``classes-N``, ``*_seg``, ``*_mask``, TotalSegmentator ``*_totalseg``, ``labels``...).
_LABEL_NAME = re.compile(r"(^|[_.-])(seg|segmentation|classes|label|labels|labelmap|mask|totalseg)([_.-]|$)")


def _segment_inputs(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a folder of volume files gives each image file (label maps beside them, named as
    :data:`_LABEL_NAME` says, are left out); any other folder is one DICOM series."""
    from .io import volume_stem, volume_suffix

    inputs = []
    for path in paths:
        files = sorted(p for p in path.iterdir() if p.is_file() and volume_suffix(p)) if path.is_dir() else []
        images = [p for p in files if not _LABEL_NAME.search(volume_stem(p).lower())]
        inputs += images if files else [path]
    return inputs


def output_stem(path: Path) -> str:
    """The name outputs of ``path`` start with (volume stem, or the DICOM folder's name)."""
    from .io import volume_stem

    return volume_stem(path) if path.is_file() else path.name


#: ``segment --format`` -> the file type of the volumes written beside the labels (probabilities): a
#: segmentation file's or DICOM SEG's own image type cannot hold a probability map.
SEGMENT_FORMATS = {
    ".nii.gz": ".nii.gz",
    ".nrrd": ".nrrd",
    ".nii": ".nii",
    ".mha": ".mha",
    ".seg.nrrd": ".nrrd",
    ".dcm": ".nii.gz",
}


def _add_backend_option(parser: argparse.ArgumentParser, what: str) -> None:
    from .backends import BACKENDS

    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help=f"what runs {what}: auto (default: OpenVINO on the CPU where installed, else PyTorch), torch, "
        "openvino or onnxruntime (compiled once per model, cached)",
    )


def cmd_segment(args: argparse.Namespace) -> int:
    from .inference import segment
    from .io import folder_lock, read_ct, write_segmentation, write_volume

    inputs = _segment_inputs(args.inputs)
    plans, outputs = [], []
    dicom_sources = {}
    for path in inputs:
        stem = output_stem(path)
        label_path = args.output / (f"{stem}.seg.nrrd" if args.format == ".seg.nrrd" else f"{stem}_seg{args.format}")
        volume_format = SEGMENT_FORMATS[args.format]
        if args.format == ".dcm":  # the source's headers, checked before any minute of inference
            from .dicomseg import read_dicom_source

            dicom_sources[path] = read_dicom_source(path, args.series)
        extra = {
            "probability": args.output / f"{stem}_tumour_probability{volume_format}" if args.probabilities else None,
            "statistics": args.output / f"{stem}_lesions.csv" if args.statistics else None,
            "preview": args.output / f"{stem}_preview.png" if args.preview else None,
        }
        outputs += [(label_path, f"the labels of {path}")]
        outputs += [(target, f"the {kind} of {path}") for kind, target in extra.items() if target]
        if args.statistics:
            outputs.append((args.output / f"{stem}_lesions.json", f"the statistics of {path}"))
        plans.append((path, label_path, extra))
    check_outputs(outputs, inputs, args.overwrite)
    reporter = Reporter(args.progress, "segment")
    with folder_lock(args.output):
        try:
            for number, (path, label_path, extra) in enumerate(plans):

                def progress(fraction: float, message: str, number: int = number, name: str = path.name) -> None:
                    reporter.fraction((number + fraction) / len(plans), f"{name}: {message}")

                # read here only when the CT itself is needed (statistics, preview, a chosen series);
                # otherwise segment() reads and checks it once
                needs_ct = args.series is not None or args.statistics or args.preview
                ct = read_ct(path, args.series) if needs_ct else None
                result = segment(
                    ct if ct is not None else path,
                    args.model,
                    args.device,
                    args.batch_size,
                    args.overlap,
                    extra["probability"] is not None,
                    args.precision,
                    progress,
                    tumour_in_liver=True if args.tumour_in_liver else None,
                    min_lesion_mm=args.min_lesion_mm,
                    backend=args.backend,
                    stretch=args.stretch,
                )
                if args.format == ".seg.nrrd":
                    write_segmentation(result.labels, label_path)
                elif args.format == ".dcm":
                    from .dicomseg import write_dicom_seg

                    write_dicom_seg(result.labels, dicom_sources[path], label_path, result.model_name)
                else:
                    write_volume(result.labels, label_path)
                if extra["probability"] is not None:
                    write_volume(result.tumour_probability, extra["probability"])
                if extra["statistics"] is not None:
                    write_lesion_statistics(ct, result.labels, extra["statistics"])
                if extra["preview"] is not None:
                    write_preview(ct, result.labels, extra["preview"], f"{path.name}: {result.model_name}")
                tumour_ml = float((result.labels.array == 2).sum()) * result.labels.grid.voxel_volume_ml
                reporter.json(event="written", input=str(path), labels=str(label_path), tumour_ml=tumour_ml)
                if args.progress != "json":
                    print(f"{path} -> {label_path} (tumour {tumour_ml:.1f} mL, model {result.model_name})")
                for caution in result.cautions:
                    reporter.json(event="caution", input=str(path), message=caution)
                    if args.progress != "json":
                        print(f"caution: {path.name}: {caution}", file=sys.stderr)
        finally:
            reporter.close()
    return 0


def write_lesion_statistics(ct, labels, csv_path: Path) -> None:
    """Per tumour lesion (26-connected component of label 2): volume, longest axial diameter, centroid
    (LPS mm) and mean HU, as ``csv_path`` and the same rows as JSON beside it."""
    import csv
    import io as text_io

    from .io import write_json, write_text_atomic
    from .lesions.measure import measure_lesions

    ids, measurements = measure_lesions(labels, label=2)
    rows = []
    for m in measurements:
        x, y, z = m.centroid_lps_mm
        rows.append(
            {
                "lesion": m.id,
                "volume_ml": round(m.volume_ml, 3),
                "longest_axial_diameter_mm": round(m.longest_axial_diameter_mm, 1),
                "centroid_x_lps_mm": round(x, 1),
                "centroid_y_lps_mm": round(y, 1),
                "centroid_z_lps_mm": round(z, 1),
                "mean_hu": round(float(ct.array[ids == m.id].mean()), 1),
            }
        )
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, list(rows[0]) if rows else ["lesion"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(csv_path, buffer.getvalue())
    write_json(csv_path.with_suffix(".json"), {"lesions": rows})


def write_preview(ct, labels, path: Path, title: str) -> None:
    """Axial, coronal and sagittal slices through the largest lesion (or the middle) with the liver and
    tumour outlined, axial in radiological orientation."""
    from .plotting import pyplot, radiological_axial, save_figure

    plt = pyplot()
    tumour = labels.array == 2
    centre = np.argwhere(tumour).mean(0).round().astype(int) if tumour.any() else np.array(labels.shape) // 2
    window = {"cmap": "gray", "vmin": -160, "vmax": 240}
    spacing_x, spacing_y, spacing_z = ct.grid.spacing
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    views = [
        (
            "axial",
            radiological_axial(ct.array, ct.grid, centre[0]),
            radiological_axial(labels.array, ct.grid, centre[0]),
            spacing_y / spacing_x,
        ),
        ("coronal", ct.array[::-1, centre[1]], labels.array[::-1, centre[1]], spacing_z / spacing_x),
        ("sagittal", ct.array[::-1, :, centre[2]], labels.array[::-1, :, centre[2]], spacing_z / spacing_y),
    ]
    for axis, (name, image, label, aspect) in zip(axes, views):
        axis.imshow(image, aspect=aspect, **window)
        for value, colour in ((1, "yellow"), (2, "red")):
            if (label == value).any():
                axis.contour(label == value, levels=[0.5], colors=colour, linewidths=0.8)
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    figure.suptitle(f"{title} (liver yellow, tumour red)", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models, shipped_models_dir, user_models_dir

    entries = list_models()
    if args.json:
        print(json.dumps([{**e.__dict__, "path": str(e.path)} for e in entries]))
        return 0
    print(f"shipped: {shipped_models_dir()}\nuser:    {user_models_dir()}")
    for entry in entries:
        label = f"{entry.name}:{entry.version}"
        print(f"  {label:<28} {entry.kind:<12} {entry.method:<15} {entry.source:<8} {entry.path}")
    if not entries:
        print("  (no models found)")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from .models import combine_models, read_card

    out = combine_models(args.models, out=args.out, name=args.name)
    card = read_card(out)
    print(f"ensemble {card.label} of {len(card.members())} networks written to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .io import folder_lock

    check_empty_folder(args.out, args.overwrite)
    with folder_lock(args.out):
        summary = run_demo(
            args.out,
            seed=args.seed,
            model=args.model,
            device=args.device,
            lesion_model=args.lesion_model,
            progress=lambda message: print(f"demo: {message}...", file=sys.stderr, flush=True),
        )
    print(summary)
    return 0


def cmd_train_lesions(args: argparse.Namespace) -> int:
    from .lesions.training import LesionTrainConfig, train_lesion_model
    from .training import config_with

    config = LesionTrainConfig()
    if args.config:
        config = LesionTrainConfig.from_json(args.config)
    config = config_with(
        config, framework=args.framework, epochs=args.epochs, batch=args.batch, seed=args.seed, device=args.device
    )
    reporter = Reporter(args.progress, "train-lesions")

    def on_event(event: dict) -> None:
        if reporter.mode == "json":
            reporter.json(**event)
        elif event["event"] == "epoch":
            fold = f"fold {event['fold']}/{event['folds']} " if "fold" in event else "final model "
            reporter.fraction(
                event["epoch"] / event["epochs"], f"{fold}epoch {event['epoch']}: loss {event['loss']:.3f}"
            )
        else:
            print(json.dumps(event, default=str), file=sys.stderr)

    try:
        card = train_lesion_model(
            args.data,
            config,
            args.out,
            init=args.init,
            folds=args.folds,
            name=args.name,
            liver_model=args.liver_model,
            on_event=on_event,
        )
    finally:
        reporter.close()
    summary = {k: v for k, v in card.validation.items() if k in ("accuracy", "dice", "recall")}
    print(f"lesion model written to {args.out}; cross-validation: {json.dumps(summary)}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from .lesions.classify import classify_lesions, write_report
    from .lesions.model import DEFAULT_LESION_MODEL
    from .models import read_card, resolve_model

    check_outputs([(args.output, "report")], [args.ct, args.lesions, args.liver], args.overwrite)
    card = read_card(resolve_model(args.model, DEFAULT_LESION_MODEL))
    reporter = Reporter(args.progress, "classify")
    try:
        results = classify_lesions(
            args.ct,
            args.lesions,
            args.model,
            args.liver,
            args.device,
            reporter.fraction,
            args.min_lesion_mm,
            backend=args.backend,
        )
    finally:
        reporter.close()
    write_report(results, args.output, f"{card.name}:{card.version}", str(args.ct))
    if not results:
        print(
            "no lesions: the lesion map holds no tumour"
            + (f" of {args.min_lesion_mm:g} mm or more" if args.min_lesion_mm else "")
        )
    for result in results:
        m = result.measurement
        top = max(result.probabilities, key=result.probabilities.get)
        why = "" if top == result.lesion_class else f" (majority of its voxels' votes; highest mean probability: {top})"
        print(
            f"lesion {result.id}: {result.lesion_class:<10} p={result.probabilities[result.lesion_class]:.2f} "
            f"{m.volume_ml:7.2f} mL, longest axial diameter {m.longest_axial_diameter_mm:5.1f} mm{why}"
        )
    print(f"report written to {args.output}")
    return 0


def _add_progress_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--progress",
        choices=("bar", "json", "none"),
        default="bar",
        help="progress bar (default), JSON lines on stdout, or nothing",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    from .phantom import ANATOMY_OPTIONS, DEFAULT_SHAPE, DEFAULT_SPACING_ZYX, LESION_CLASSES, PHASES

    parser = _OneLineParser(
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
        "Every 5th case has no lesion; each case draws a contrast phase.",
    )
    phantom.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    phantom.add_argument("--cases", type=COUNT, default=5, help="number of cases (default 5)")
    phantom.add_argument("--seed", type=SEED, default=0, help="seed: the same seed gives the same data (default 0)")
    phantom.add_argument(
        "--shape",
        type=_number(int, 8, 2048),
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=DEFAULT_SHAPE,
        help=f"voxels per axis, slices first (default {' '.join(map(str, DEFAULT_SHAPE))})",
    )
    phantom.add_argument(
        "--spacing",
        type=_number(float, 0.1, 20.0),
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=DEFAULT_SPACING_ZYX,
        help=f"voxel size in mm, slice thickness first (default {' '.join(map(str, DEFAULT_SPACING_ZYX))})",
    )
    phantom.add_argument("--compress", action="store_true", help="write .nii.gz instead of .nii")
    phantom.add_argument(
        "--phases",
        nargs="+",
        choices=PHASES,
        metavar="PHASE",
        help=f"contrast phases to draw from ({', '.join(PHASES)}; default: all, portal venous most often)",
    )
    phantom.add_argument(
        "--kinds",
        nargs="+",
        choices=LESION_CLASSES,
        metavar="KIND",
        help="one lesion kind per case, in turn (balanced classes for lesion classification; default: drawn "
        f"per liver, metastatic or benign); kinds: {', '.join(LESION_CLASSES)}",
    )
    phantom.add_argument(
        "--workers",
        type=_number(int, 1, 256),
        default=1,
        help="processes writing cases at once (default 1; the files do not depend on it)",
    )
    for option, what in ANATOMY_OPTIONS.items():
        phantom.add_argument(
            "--" + option.replace("_", "-"),
            action="store_true",
            help=f"{what} (default off: a seed gives the phantom it always gave)",
        )
    phantom.add_argument("--overwrite", action="store_true", help="write into a folder that holds files already")
    phantom.set_defaults(run=cmd_phantom)

    synthesize = commands.add_parser(
        "synthesize",
        help="paint synthetic lesions into the liver of a real CT (training data from unannotated scans)",
        description="Write N variants of a real CT with seeded cysts, hemangiomas and metastases painted into its "
        "liver (LiTS layout: volume-N, segmentation-N with 1 liver / 2 tumour, classes-N, manifest.json). Lesion "
        "HU follow the scan's own liver and the contrast phase; voxels outside the lesions keep their values.",
    )
    synthesize.add_argument("--ct", type=Path, required=True, help="the CT: a volume file or DICOM series folder")
    synthesize.add_argument(
        "--liver", type=Path, required=True, help="liver mask or organ map on the CT's grid (e.g. TotalSegmentator's)"
    )
    synthesize.add_argument(
        "--liver-label",
        type=_number(int, 1, 65535),
        help="the liver's value in --liver (default: any non-zero; TotalSegmentator: 5)",
    )
    synthesize.add_argument("-o", "--out", type=Path, required=True, help="output folder (created if missing)")
    synthesize.add_argument("--cases", type=COUNT, default=1, help="number of variants (default 1)")
    synthesize.add_argument("--seed", type=SEED, default=0, help="seed: the same seed gives the same lesions")
    synthesize.add_argument(
        "--phase", choices=PHASES, help="the CT's contrast phase (default: estimated from the liver's HU)"
    )
    synthesize.add_argument("--overwrite", action="store_true", help="write into a folder that holds files already")
    synthesize.set_defaults(run=cmd_synthesize)

    info = commands.add_parser(
        "info",
        help="print the geometry and value statistics of volumes",
        description="Print size, spacing, origin (LPS), orientation and HU statistics of each volume "
        "(NIfTI, NRRD, MHA, or a DICOM series folder).",
    )
    info.add_argument("paths", type=Path, nargs="+", help="volume files or DICOM folders")
    info.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    info.add_argument("--series", metavar="UID", help="the DICOM series to read from a folder that holds several")
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
    evaluate.add_argument(
        "--label", type=_number(int, 1, 255), default=2, help="label value evaluated (default 2, tumour)"
    )
    evaluate.add_argument("--json", type=Path, help="write per-case and aggregate results as JSON")
    evaluate.add_argument("--csv", type=Path, help="write one CSV row per case")
    evaluate.add_argument("--plots", type=Path, help="write a PNG box plot per metric into this folder")
    evaluate.add_argument(
        "--match",
        choices=("overlap", "iou"),
        default="overlap",
        help="lesion matching: any shared voxel (default) or IoU of at least --iou; one to one, best IoU first",
    )
    evaluate.add_argument(
        "--iou",
        type=_number(float, 0.0, 1.0, low_open=True),
        default=0.5,
        help="IoU needed with --match iou (default 0.5)",
    )
    evaluate.add_argument(
        "--lesion-metrics", action="store_true", help="also average VOE, RVD, ASSD, MSD, RMSD over detected lesions"
    )
    evaluate.add_argument(
        "--large",
        type=_number(float, 0.0, 1e9),
        default=9001.0,
        help="value of RVD and distances when one mask is empty (LiTS: 9001)",
    )
    evaluate.set_defaults(run=cmd_evaluate)

    def training_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--data", type=Path, required=True, help="LiTS, Decathlon or NAME/NAME_seg folder")
        command.add_argument("--epochs", type=COUNT, help="total epochs, split evenly over the stages")
        command.add_argument("--iterations", type=COUNT, help="iterations per epoch")
        command.add_argument(
            "--validation-fraction",
            type=_number(float, 0.0, 0.9),
            default=0.2,
            help="share of cases held out for validation (0.2)",
        )
        command.add_argument("--seed", type=SEED, help="seed of the split, the weights and the samples")
        command.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
        command.add_argument("--workers", type=_number(int, 0, 64), help="data-loading worker processes (default 2)")
        command.add_argument(
            "--restart",
            action="store_true",
            help="discard checkpoints that another run (other data, settings, seed or parent) left in the work folder",
        )
        _add_progress_option(command)

    train = commands.add_parser(
        "train",
        help="train a tumour segmentation model (three-stage curriculum or a compared schema)",
        description="Train the 3D residual U-Net on labelled CTs (0 background, 1 liver, 2 tumour). Checkpoints "
        "and logs go to OUT.work; running the same command again resumes an interrupted run (another run's "
        "checkpoints there are refused: --restart discards them). Runs under torchrun "
        "use DistributedDataParallel.",
    )
    training_options(train)
    train.add_argument(
        "--schema",
        choices=("three-stage", "whole-to-patch", "patch-to-whole", "naive", "cascade"),
        help="training schema (default three-stage)",
    )
    train.add_argument("--config", type=_json_file, help="JSON training settings (see Resources/Models/*.train.json)")
    train.add_argument(
        "--stage-epochs", type=_number(int, 0, 100_000), nargs="+", help="epochs of each stage, e.g. 10 5 10"
    )
    train.add_argument(
        "--average-epochs",
        type=_number(int, 0, 100_000),
        help="the model is the average of the last N epochs' weights, not the best validated epoch",
    )
    train.add_argument(
        "--keep-epochs",
        type=_number(int, 0, 100_000),
        help="keep the weights after each of the last N epochs in the work folder (TASK-epoch-NNN.safetensors)",
    )
    train.add_argument("--out", type=Path, required=True, help="new model folder (must not exist)")
    train.add_argument("--name", default="curriculum", help="model name in its card (default curriculum)")
    train.add_argument("--work-dir", type=Path, help="checkpoints and logs (default OUT.work)")
    train.set_defaults(run=cmd_train)

    finetune = commands.add_parser(
        "finetune",
        help="fine-tune a model on your own annotated cases (makes a new version)",
        description="Run the three-stage curriculum from an existing model on your cases. The model's "
        "architecture and preprocessing are kept; the result is a new version beside it, never an overwrite.",
    )
    training_options(finetune)
    finetune.add_argument("--model", help="model name, name:version or folder to start from (default: the demo model)")
    finetune.add_argument("--out", type=Path, help="new model folder (default: the user's model folder)")
    finetune.add_argument(
        "--preset",
        choices=("quick", "full"),
        default="quick",
        help="quick (default): 320 steps at 1e-4, blocks around the lesions and the liver, minutes on a CPU; "
        "full: the parent model's own training budget",
    )
    finetune.set_defaults(run=cmd_finetune)

    segment = commands.add_parser(
        "segment",
        help="segment liver tumours in CTs",
        description="Label maps (0 background, 2 tumour; 1 liver for cascade models) on each input's exact grid.",
    )
    segment.add_argument("inputs", type=Path, nargs="+", help="CT files, folders of CT files, or DICOM folders")
    segment.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    segment.add_argument("--model", help="model name, name:version or folder (default: the demo model)")
    segment.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    segment.add_argument("--probabilities", action="store_true", help="also write the tumour probability map")
    segment.add_argument(
        "--batch-size", type=_number(int, 1, 256), default=1, help="windows per forward pass (default 1)"
    )
    segment.add_argument(
        "--overlap", type=_number(float, 0.0, 0.95), default=0.5, help="sliding-window overlap in [0, 0.95] (0.5)"
    )
    segment.add_argument(
        "--stretch",
        type=_number(float, 0.0, 1.0),
        default=0.0,
        help="let windows grow by up to this fraction of the model's block where that covers the CT with fewer "
        "voxels computed (default 0; faster, at a measured cost in Dice: docs/results/inference.md)",
    )
    segment.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 autocast on GPU, fp32 on CPU; bf16 on the CPU with OpenVINO needs native bf16 (AVX512_BF16 "
        "or AMX), where it is about twice as fast (its check against fp32: docs/results/inference.md)",
    )
    _add_backend_option(segment, "the network")
    segment.add_argument(
        "--format",
        choices=tuple(SEGMENT_FORMATS),
        default=".nii.gz",
        help="output file type (default .nii.gz; .seg.nrrd: a Slicer segmentation with named segments; .dcm: a "
        "DICOM SEG referencing the source series, for DICOM input, needs pip install 'livertumor[dicom]')",
    )
    segment.add_argument(
        "--min-lesion-mm",
        type=_number(float, 0.0, 100.0),
        default=0.0,
        help="drop tumour components smaller than this equivalent diameter (default 0: keep all)",
    )
    segment.add_argument(
        "--tumour-in-liver", action="store_true", help="keep only tumour in the largest liver component"
    )
    segment.add_argument(
        "--statistics", action="store_true", help="per-lesion CSV and JSON: volume, diameter, centroid, mean HU"
    )
    segment.add_argument("--preview", action="store_true", help="a PNG of three planes with the result outlined")
    segment.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    _add_progress_option(segment)
    segment.add_argument("--series", metavar="UID", help="the DICOM series to read from a folder that holds several")
    segment.set_defaults(run=cmd_segment)

    train_lesions = commands.add_parser(
        "train-lesions",
        help="train a lesion segmentation / classification model (2D, liver crops)",
        description="Train one of the second paper's frameworks on lesion slices (largest-area slice of each "
        "lesion and its neighbours, cropped to the liver): cls (classifier), seg (lesion segmentation; also the "
        "pre-training on LiTS-layout data without classes), ynet (multi-task) or joint (pixel-wise classes, "
        "majority vote). Cross-validation by patient first, then a final model on all cases.",
    )
    train_lesions.add_argument("--data", type=Path, required=True, help="LiTS-layout folder with classes-N maps")
    train_lesions.add_argument("--framework", choices=("cls", "seg", "ynet", "joint"), help="default joint")
    train_lesions.add_argument(
        "--init", default="scratch", help="scratch (default), imagenet:FILE (SE-ResNet state dict) or lits:MODEL"
    )
    train_lesions.add_argument(
        "--folds", type=_number(int, 0, 20), default=3, help="cross-validation folds by patient (3; 0 skips)"
    )
    train_lesions.add_argument(
        "--config", type=_json_file, help="JSON settings (see Resources/Models/demo-lesions.train.json)"
    )
    train_lesions.add_argument("--epochs", type=COUNT, help="epochs (default 30)")
    train_lesions.add_argument("--batch", type=_number(int, 1, 1024), help="slices per batch (default 16)")
    train_lesions.add_argument("--seed", type=SEED, help="seed of folds, weights and augmentation")
    train_lesions.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    train_lesions.add_argument("--liver-model", help="segmentation model giving the liver box at inference")
    train_lesions.add_argument("--out", type=Path, required=True, help="new model folder (must not exist)")
    train_lesions.add_argument("--name", default="lesions", help="model name in its card (default lesions)")
    _add_progress_option(train_lesions)
    train_lesions.set_defaults(run=cmd_train_lesions)

    classify = commands.add_parser(
        "classify",
        help="classify each lesion of a CT as cyst, hemangioma or metastasis",
        description="For each lesion (connected component of the lesion mask, or label 2 of a 0/1/2 map) on the "
        "CT's grid: class, probabilities, volume, longest axial diameter and centroid (LPS mm), as JSON.",
    )
    classify.add_argument("ct", type=Path, help="CT file or DICOM folder")
    classify.add_argument("--lesions", type=Path, required=True, help="lesion mask or 0/1/2 label map on the CT grid")
    classify.add_argument("--liver", type=Path, help="liver mask (default: label 1 of --lesions, or the liver model)")
    classify.add_argument("--model", help="lesion model name, name:version or folder (default: the demo classifier)")
    classify.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    _add_backend_option(classify, "the liver model's run, when the liver box comes from it")
    classify.add_argument("-o", "--output", type=Path, required=True, help="JSON report")
    classify.add_argument("--overwrite", action="store_true", help="replace the report if it exists")
    classify.add_argument(
        "--min-lesion-mm",
        type=_number(float, 0.0, 100.0),
        default=3.0,
        help="skip lesions below this equivalent diameter (default 3 mm: one-voxel specks are not lesions)",
    )
    _add_progress_option(classify)
    classify.set_defaults(run=cmd_classify)

    models = commands.add_parser("models", help="list the shipped and your own models")
    models.add_argument("--json", action="store_true", help="machine-readable list")
    models.set_defaults(run=cmd_models)

    ensemble = commands.add_parser(
        "ensemble",
        help="combine models trained alike (e.g. with different seeds) into one that averages them",
        description="A new model that runs MODELs as one: each voxel's class probabilities are their mean, at "
        "the cost of running each. The models must share architecture, preprocessing and labels; each is "
        "checksum-verified and none is changed.",
    )
    ensemble.add_argument("models", nargs="+", help="model names, name:version or folders (two or more)")
    ensemble.add_argument("--name", help="the new model's name (default: the first model's name + -ensemble)")
    ensemble.add_argument("--out", type=Path, help="new model folder (default: the user's model folder)")
    ensemble.set_defaults(run=cmd_ensemble)

    demo = commands.add_parser(
        "demo",
        help="segment a synthetic CT with the shipped demo model and show the result",
        description="Makes a phantom CT, segments it with the demo model, prints the LiTS metrics, classifies "
        "its true lesions with the demo classifier, and writes the CT, the truth, the prediction, the lesion report "
        "and an overlay PNG to OUT.",
    )
    demo.add_argument("--out", type=Path, default=Path("livertumor-demo"), help="output folder (livertumor-demo)")
    demo.add_argument("--seed", type=SEED, default=7, help="phantom seed (default 7)")
    demo.add_argument("--model", help="model (default: the demo model)")
    demo.add_argument("--lesion-model", help="lesion classifier (default: the demo classifier)")
    demo.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    demo.add_argument("--overwrite", action="store_true", help="write into a folder that holds files already")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``livertumor`` command; returns the exit status. Run as the process's own
    command (``argv`` None), it also keeps freed memory for reuse (:func:`memory.keep_freed_memory`)."""
    args = build_parser().parse_args(argv)
    if argv is None:
        keep_freed_memory()
    try:
        return args.run(args)
    except (LiverTumorError, OSError, MemoryError) as error:  # input, files, sizes: the user's to fix
        print(f"livertumor {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2


def one_line(error: BaseException, limit: int = 600) -> str:
    """An error as one line: its lines joined with "; ", cut at ``limit`` characters."""
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    elif isinstance(error, MemoryError):
        text = "not enough memory for this input (a smaller block, --batch-size 1 or the CPU may help)"
    else:
        text = str(error)
    text = "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
