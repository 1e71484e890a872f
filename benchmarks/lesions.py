"""The analogue of the second paper's Table 1 on phantom lesions: 4 frameworks x 3 initialisations,
3-fold cross-validation by patient; classification accuracy, segmentation Dice and recall.

    python benchmarks/lesions.py --out /tmp/lesion-bench [--cases 30] [--pretrain-cases 24] [--epochs 20]
        [--size 96] [--markdown docs/results/lesions.md]

Initialisations:
* scratch: random (Kaiming) weights.
* "ImageNet": no ImageNet weights can be had here (no internet, no torchvision weights). Stand-in,
  labelled as such: the SE-ResNet encoder pre-trained on a different task, self-supervised rotation
  prediction (0/90/180/270 degrees) on unlabelled liver-crop slices of separate phantoms, saved as a
  timm-named state dict and loaded through ``imagenet:FILE`` like real ImageNet weights would be.
* LiTS: a 2D lesion-segmentation model (framework ``seg``) pre-trained with ``train-lesions`` on
  separate LiTS-layout phantoms without class maps, loaded through ``lits:MODEL``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from livertumor.lesions.data import load_lesion_dataset
from livertumor.lesions.model import CROPS, FRAMEWORKS, SliceConfig
from livertumor.lesions.networks import SEResNetClassifier, SEResNetConfig
from livertumor.lesions.training import LesionTrainConfig, cross_validate, train_lesion_model
from livertumor.phantom import LESION_CLASSES, write_phantom_dataset

#: Initialisations: command-line name -> table title.
INITS = {"scratch": "scratch", "ImageNet": "ImageNet (stand-in: rotation pretext)", "LiTS": "LiTS"}
ENCODER = SEResNetConfig(widths=(16, 32, 64, 128), stem_width=16, blocks=(1, 1, 1, 1))


def rotation_pretext(images: np.ndarray, epochs: int, seed: int) -> dict[str, torch.Tensor]:
    """Encoder weights from predicting the rotation (k x 90 degrees) of each slice."""
    torch.manual_seed(seed)
    network = SEResNetClassifier(ENCODER, classes=4)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    data = torch.from_numpy(images)[:, None]
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(data), generator=generator).split(16):
            if len(batch) < 2:
                continue
            turns = torch.randint(0, 4, (len(batch),), generator=generator)
            rotated = torch.stack([torch.rot90(data[i], int(k), (-2, -1)) for i, k in zip(batch, turns)])
            loss = torch.nn.functional.cross_entropy(network(rotated), turns)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return {k.removeprefix("encoder."): v.contiguous() for k, v in network.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--pretrain-cases", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS))
    parser.add_argument(
        "--phases",
        nargs="+",
        default=["arterial", "portal-venous", "delayed"],
        help="contrast phases of the phantoms (default: the contrast-enhanced ones; lesion characterisation "
        "on CT needs contrast, as in the paper's data)",
    )
    parser.add_argument(
        "--mixed-kinds",
        action="store_true",
        help="draw each liver's lesions as the phantoms do (metastatic or benign livers); default: one kind per "
        "patient in turn, balanced classes as in the paper's data",
    )
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=list(INITS))
    parser.add_argument("--crop", default="liver", choices=list(CROPS), help="liver crop (the paper's) or lesion crop")
    parser.add_argument("--field-mm", type=float, default=96.0, help="side of a lesion crop")
    parser.add_argument(
        "--pixel-mm", type=float, default=1.6, help="the phantoms' in-plane spacing (their field stays 205 mm)"
    )
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    kinds = None if args.mixed_kinds else LESION_CLASSES
    side = round(204.8 / args.pixel_mm)
    shape, spacing = (48, side, side), (3.0, args.pixel_mm, args.pixel_mm)
    data, pretrain = args.out / "data", args.out / "pretrain"
    if not data.exists():
        write_phantom_dataset(
            data, args.cases, seed=300, shape=shape, spacing_zyx=spacing, phases=args.phases, kinds=kinds
        )
        write_phantom_dataset(
            pretrain, args.pretrain_cases, seed=400, shape=shape, spacing_zyx=spacing, phases=args.phases
        )
        for path in pretrain.glob("classes-*"):
            path.unlink()  # LiTS has tumour labels only
        (pretrain / "manifest.json").unlink()
    slices_config = SliceConfig(size=args.size, crop=args.crop, field_mm=args.field_mm)
    base = LesionTrainConfig(encoder=ENCODER, slices=slices_config, epochs=args.epochs)
    started = time.perf_counter()
    lits_model = args.out / "lits-seg"
    if "LiTS" in args.inits and not lits_model.exists():
        train_lesion_model(pretrain, replace(base, framework="seg"), lits_model, folds=0)
    imagenet = args.out / "rotation-pretext-seresnet.safetensors"
    if "ImageNet" in args.inits and not imagenet.exists():
        unlabelled = load_lesion_dataset(pretrain, slices_config, need_classes=False).images
        save_file(rotation_pretext(unlabelled, args.epochs, seed=0), str(imagenet))
    pretrain_seconds = time.perf_counter() - started
    slices = load_lesion_dataset(data, slices_config)
    inits = {
        "scratch": "scratch",
        "ImageNet": f"imagenet:{imagenet}",
        "LiTS": f"lits:{lits_model}",
    }
    rows = []
    for framework in args.frameworks:
        for label in args.inits:
            init = inits[label]
            config = replace(base, framework=framework)
            start = time.perf_counter()
            result = cross_validate(slices, config, init, folds=3)
            seconds = time.perf_counter() - start
            rows.append((framework, label, result, seconds))
            print(
                framework,
                label,
                {k: v for k, v in result.items() if k != "folds"},
                f"{seconds:.0f} s",
                flush=True,
            )
    (args.out / "results.json").write_text(
        json.dumps([{"framework": f, "init": i, **r} for f, i, r, _ in rows], default=str)
    )

    def cell(result: dict, key: str) -> str:
        return f"{result[key]:.2f} ± {result[key + '_std']:.2f}" if key in result else "-"

    lines = [
        "| framework | initialisation | Cls Acc (lesions) | lesions ≥ 10 mm | lesions < 10 mm | Cls Acc (slices) "
        "| Seg Dice | Seg Recall | CV seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for framework, label, result, seconds in rows:
        lines.append(
            f"| {FRAMEWORKS[framework].split(' (')[0]} | {INITS[label]} | {cell(result, 'accuracy')} "
            f"| {cell(result, 'accuracy_10mm_up')} | {cell(result, 'accuracy_under_10mm')} "
            f"| {cell(result, 'slice_accuracy')} | {cell(result, 'dice')} | {cell(result, 'recall')} | {seconds:.0f} |"
        )
    classes = ", ".join(LESION_CLASSES)
    lines += ["", f"Confusion matrices of lesions over the folds (rows truth, columns prediction: {classes}):", ""]
    for framework, label, result, _ in rows:
        if "confusion" in result:
            lines.append(f"* {FRAMEWORKS[framework].split(' (')[0]}, {INITS[label]}: {result['confusion']}")
    counts = np.bincount(slices.labels, minlength=3)
    header = (
        f"{len(slices)} lesion slices ({counts[0]} cyst, {counts[1]} hemangioma, {counts[2]} metastasis) from "
        f"{len(set(slices.patients))} phantom patients; 3 folds by patient; mean ± std over folds; "
        f"{args.epochs} epochs, {args.size} px crops, SE-ResNet widths {list(ENCODER.widths)}; pre-training "
        f"{pretrain_seconds:.0f} s."
    )
    table = header + "\n\n" + "\n".join(lines)
    print(table)
    if args.markdown:
        command = "python benchmarks/lesions.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k not in ("markdown", "frameworks", "mixed_kinds")
        )
        args.markdown.write_text(
            f"# Lesion frameworks x initialisations (phantoms)\n\nCommand: `{command}`\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
