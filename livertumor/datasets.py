"""Finding image/label pairs in the three folder layouts users bring.

* LiTS: ``volume-N.nii`` with ``segmentation-N.nii`` (any volume ending), possibly in sub-folders.
* Medical Segmentation Decathlon: ``imagesTr/NAME.nii.gz`` with ``labelsTr/NAME.nii.gz``.
* Plain: ``NAME.ext`` with ``NAME_seg.ext`` (or ``_label``, ``_labels``, ``_mask``) side by side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetError, MissingPairError
from .io import volume_stem, volume_suffix

LABEL_SUFFIXES = ("_seg", "_label", "_labels", "_mask")
#: Files that travel with a case but are neither its image nor its label map (lesion class maps).
COMPANION_SUFFIXES = ("_classes",)
_LITS_NAME = re.compile(r"^(volume|segmentation)-(\d+)$")


@dataclass(frozen=True)
class Case:
    """One training or evaluation case: a CT and its label map."""

    name: str
    image: Path
    label: Path


def _volume_files(folder: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and volume_suffix(p) and not p.name.startswith("."))


def _pair(images: dict[str, Path], labels: dict[str, Path], folder: Path, layout: str) -> list[Case]:
    missing_labels = sorted(set(images) - set(labels))
    missing_images = sorted(set(labels) - set(images))
    if missing_labels or missing_images:
        lines = [f"{images[k].name} has no label map" for k in missing_labels]
        lines += [f"{labels[k].name} has no image" for k in missing_images]
        raise MissingPairError(f"{folder} ({layout} layout): " + "; ".join(lines))
    return [Case(key, images[key], labels[key]) for key in sorted(images, key=_natural_key)]


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def find_cases(folder: str | Path) -> list[Case]:
    """All image/label pairs under ``folder``, in natural order of their names.

    Raises :class:`MissingPairError` when an image lacks its label map or the reverse, and
    :class:`DatasetError` when the folder has no recognised layout.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder")
    if (folder / "imagesTr").is_dir():
        images = {volume_stem(p): p for p in _volume_files(folder / "imagesTr", False)}
        labels_dir = folder / "labelsTr"
        labels = {volume_stem(p): p for p in _volume_files(labels_dir, False)} if labels_dir.is_dir() else {}
        # MSD names multi-modal channels NAME_0000; CT has one channel.
        images = {re.sub(r"_0000$", "", k): v for k, v in images.items()}
        return _pair(images, labels, folder, "Medical Segmentation Decathlon")

    files = _volume_files(folder, recursive=True)
    lits = {}
    for path in files:
        match = _LITS_NAME.match(volume_stem(path))
        if match:
            lits.setdefault(match.group(1), {})[match.group(2)] = path
    if lits:
        images = {f"case-{k}": v for k, v in lits.get("volume", {}).items()}
        labels = {f"case-{k}": v for k, v in lits.get("segmentation", {}).items()}
        return _pair(images, labels, folder, "LiTS")

    images, labels = {}, {}
    for path in _volume_files(folder, recursive=False):
        stem = volume_stem(path)
        if stem.endswith(COMPANION_SUFFIXES):
            continue
        suffix = next((s for s in LABEL_SUFFIXES if stem.endswith(s)), None)
        if suffix:
            labels[stem[: -len(suffix)]] = path
        else:
            images[stem] = path
    if not images and not labels:
        raise DatasetError(
            f"{folder} holds no volumes: expected LiTS (volume-N / segmentation-N), "
            "Decathlon (imagesTr/ labelsTr/) or NAME / NAME_seg pairs"
        )
    return _pair(images, labels, folder, "plain")
