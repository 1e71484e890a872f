"""Lesion slices: from 3D CTs with tumour labels (and lesion classes) to the 2D liver crops the lesion
networks learn from and classify.

Each lesion (a 26-connected component of tumour) gives its largest-area axial slice and
``SliceConfig.neighbours`` slices either side. A slice is cropped to a square around the liver (the
liver's 3D box in-plane plus a margin) or centred on the lesion (``SliceConfig.crop``), HU windowed to
[0, 1] and resized to ``size`` x ``size``.

Class maps: ``classes-N`` beside LiTS's ``segmentation-N`` (``NAME_classes`` beside ``NAME_seg``), one
value per lesion kind; ``manifest.json`` in the data folder names the values (``"classes": {"1":
"cyst", ...}``, as ``livertumor phantom`` writes it). Without a manifest the values 1, 2, 3 mean
cyst, hemangioma, metastasis.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..datasets import LABEL_SUFFIXES, Case, find_cases
from ..errors import DatasetError, LabelValueError, LiverTumorError
from ..io import read_ct, read_label, volume_suffix
from ..metrics import equivalent_diameter_mm
from ..phantom import LESION_CLASSES
from ..preprocess import window_hu
from ..volume import Volume
from .measure import lesion_components
from .model import JOINT_OFFSET, SliceConfig

TUMOUR, LIVER = 2, 1
#: Sample label of a lesion whose class is not known (segmentation-only data such as LiTS).
UNKNOWN = -1


@dataclass
class SliceSet:
    """Lesion slices, stacked: ``images`` (N, S, S) in [0, 1]; ``lesion`` the sample's own lesion,
    ``any_lesion`` every lesion of the slice, ``joint`` 0 background / 1 liver / 2.. lesion classes
    (all (N, S, S) uint8); ``labels`` the sample lesion's class index (``UNKNOWN`` if none); the patient
    (case), lesion (``case/component``), axial slice index and the lesion's equivalent-sphere diameter
    (mm) of each sample."""

    images: np.ndarray
    lesion: np.ndarray
    any_lesion: np.ndarray
    joint: np.ndarray
    labels: np.ndarray
    patients: list[str]
    lesions: list[str]
    planes: np.ndarray
    diameters_mm: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> SliceSet:
        indices = np.asarray(indices, dtype=np.int64)
        return SliceSet(
            self.images[indices],
            self.lesion[indices],
            self.any_lesion[indices],
            self.joint[indices],
            self.labels[indices],
            [self.patients[i] for i in indices],
            [self.lesions[i] for i in indices],
            self.planes[indices],
            self.diameters_mm[indices],
        )

    @classmethod
    def concatenate(cls, parts: Sequence[SliceSet], size: int) -> SliceSet:
        if not parts:
            empty = np.zeros((0, size, size), np.uint8)
            none = np.zeros(0, np.int64)
            return cls(empty.astype(np.float32), empty, empty, empty, none, [], [], none, none.astype(np.float64))
        return cls(
            np.concatenate([p.images for p in parts]),
            np.concatenate([p.lesion for p in parts]),
            np.concatenate([p.any_lesion for p in parts]),
            np.concatenate([p.joint for p in parts]),
            np.concatenate([p.labels for p in parts]),
            [name for p in parts for name in p.patients],
            [name for p in parts for name in p.lesions],
            np.concatenate([p.planes for p in parts]),
            np.concatenate([p.diameters_mm for p in parts]),
        )

    @property
    def has_classes(self) -> bool:
        return len(self) > 0 and bool((self.labels != UNKNOWN).all())


def liver_square(liver: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float) -> tuple[int, int, int, int]:
    """In-plane index box ``(y0, y1, x0, x1)`` of a square (in mm) around the liver's 3D box plus
    ``margin_mm``; it may reach outside the image (padded with air when cropped)."""
    if not liver.any():
        raise LiverTumorError("the liver mask is empty: the lesion crops need the liver's box")
    rows, columns = np.nonzero(liver.any(axis=0))
    spacing_y, spacing_x = float(spacing_zyx[1]), float(spacing_zyx[2])
    centre_y, centre_x = (rows.min() + rows.max()) / 2.0, (columns.min() + columns.max()) / 2.0
    half_mm = max((rows.max() - rows.min() + 1) * spacing_y, (columns.max() - columns.min() + 1) * spacing_x) / 2.0
    half_mm += margin_mm
    y0, x0 = round(centre_y - half_mm / spacing_y), round(centre_x - half_mm / spacing_x)
    return y0, y0 + round(2 * half_mm / spacing_y), x0, x0 + round(2 * half_mm / spacing_x)


def lesion_square(component: np.ndarray, spacing_zyx: Sequence[float], field_mm: float) -> tuple[int, int, int, int]:
    """In-plane index box ``(y0, y1, x0, x1)`` of a ``field_mm`` square centred on the lesion's in-plane
    centroid; it may reach outside the image (padded with air when cropped)."""
    rows, columns = np.nonzero(component.any(axis=0))
    spacing_y, spacing_x = float(spacing_zyx[1]), float(spacing_zyx[2])
    y0 = round(rows.mean() - field_mm / 2 / spacing_y)
    x0 = round(columns.mean() - field_mm / 2 / spacing_x)
    return y0, y0 + round(field_mm / spacing_y), x0, x0 + round(field_mm / spacing_x)


def crop_square(plane: np.ndarray, box: tuple[int, int, int, int], fill: float) -> np.ndarray:
    """``plane[y0:y1, x0:x1]`` with ``fill`` where the box leaves the image."""
    y0, y1, x0, x1 = box
    out = np.full((y1 - y0, x1 - x0), fill, dtype=plane.dtype)
    sy, sx = slice(max(y0, 0), min(y1, plane.shape[0])), slice(max(x0, 0), min(x1, plane.shape[1]))
    out[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0] = plane[sy, sx]
    return out


def resize(planes: np.ndarray, size: int, labels: bool) -> np.ndarray:
    """Resize (N, H, W) planes to (N, size, size): area-averaged intensities, nearest labels."""
    tensor = torch.from_numpy(np.ascontiguousarray(planes)).float()[:, None]
    if labels:
        out = torch.nn.functional.interpolate(tensor, size=(size, size), mode="nearest-exact")
        return out[:, 0].numpy().astype(np.uint8)
    out = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True)
    return out[:, 0].numpy().astype(np.float32)


def lesion_planes(component: np.ndarray, neighbours: int) -> list[int]:
    """The component's largest-area axial slice and ``neighbours`` slices either side (inside the lesion)."""
    areas = component.reshape(component.shape[0], -1).sum(1)
    present = np.flatnonzero(areas)
    best = int(np.argmax(areas))
    return [z for z in range(best - neighbours, best + neighbours + 1) if present[0] <= z <= present[-1]]


def class_names(folder: str | Path) -> dict[int, str]:
    """Class-map value -> lesion class name from the folder's ``manifest.json`` (default 1..3 = cyst,
    hemangioma, metastasis). Unknown names are refused."""
    manifest = Path(folder) / "manifest.json"
    names = {i + 1: name for i, name in enumerate(LESION_CLASSES)}
    if manifest.is_file():
        listed = json.loads(manifest.read_text()).get("classes")
        if listed is not None:
            names = {int(value): str(name) for value, name in listed.items()}
    unknown = sorted({name for name in names.values() if name not in LESION_CLASSES})
    if unknown:
        raise DatasetError(
            f"unknown lesion class name {', '.join(map(repr, unknown))} in {manifest}; "
            f"known classes: {', '.join(LESION_CLASSES)}"
        )
    return names


def class_map_path(case: Case) -> Path | None:
    """The class map beside a case's label map (``classes-N`` for ``segmentation-N``, ``NAME_classes``
    for ``NAME_seg``), or None."""
    label = case.label
    suffix = volume_suffix(label)
    stem = label.name[: -len(suffix)]
    candidates = [stem.replace("segmentation-", "classes-", 1)]
    for ending in LABEL_SUFFIXES:
        if stem.endswith(ending):
            candidates.append(stem[: -len(ending)] + "_classes")
    for candidate in candidates:
        path = label.with_name(candidate + suffix)
        if candidate != stem and path.is_file():
            return path
    return None


def case_slices(
    name: str,
    ct: Volume,
    label: np.ndarray,
    config: SliceConfig,
    lesion_class: np.ndarray | None = None,
    liver: np.ndarray | None = None,
) -> SliceSet:
    """Every lesion slice of one case. ``label``: 0/1/2 map on the CT's grid; ``lesion_class``: class
    index + 1 per tumour voxel (0 elsewhere) or None; ``liver``: the liver mask giving the crop (default:
    ``label >= 1``)."""
    liver_mask = label >= LIVER if liver is None else liver
    if config.crop == "liver":
        box = liver_square(liver_mask, ct.grid.spacing_zyx, config.margin_mm)
    ids, _ = lesion_components(label == TUMOUR)
    joint = np.where(label >= LIVER, LIVER, 0).astype(np.uint8)
    if lesion_class is not None:
        joint = np.where(lesion_class > 0, lesion_class + JOINT_OFFSET - 1, joint).astype(np.uint8)
    keys = ("images", "lesion", "any_lesion", "joint", "labels", "lesions", "planes", "diameters")
    rows: dict[str, list] = {key: [] for key in keys}
    for number, window in enumerate(ndimage.find_objects(ids), start=1):
        component = ids == number
        kind = UNKNOWN
        if lesion_class is not None:
            values = lesion_class[component]
            values = values[values > 0]
            if values.size == 0:
                raise LabelValueError(f"{name}: lesion {number} has no class in the class map")
            kind = int(np.bincount(values).argmax()) - 1
        if config.crop == "lesion":
            box = lesion_square(component, ct.grid.spacing_zyx, config.field_mm)
        diameter = float(equivalent_diameter_mm(int(component.sum()), ct.grid.spacing))
        for z in lesion_planes(component[window[0]], config.neighbours):
            z += window[0].start
            image = window_hu(crop_square(ct.array[z], box, -1024.0), config.window_width, config.window_center)
            rows["images"].append(image)
            rows["lesion"].append(crop_square(component[z].astype(np.uint8), box, 0))
            rows["any_lesion"].append(crop_square((label[z] == TUMOUR).astype(np.uint8), box, 0))
            rows["joint"].append(crop_square(joint[z], box, 0))
            rows["labels"].append(kind)
            rows["lesions"].append(f"{name}/{number}")
            rows["planes"].append(z)
            rows["diameters"].append(diameter)
    if not rows["images"]:
        return SliceSet.concatenate([], config.size)
    return SliceSet(
        resize(np.stack(rows["images"]), config.size, labels=False),
        resize(np.stack(rows["lesion"]), config.size, labels=True),
        resize(np.stack(rows["any_lesion"]), config.size, labels=True),
        resize(np.stack(rows["joint"]), config.size, labels=True),
        np.asarray(rows["labels"], np.int64),
        [name] * len(rows["labels"]),
        rows["lesions"],
        np.asarray(rows["planes"], np.int64),
        np.asarray(rows["diameters"], np.float64),
    )


def load_lesion_dataset(folder: str | Path, config: SliceConfig, need_classes: bool = True) -> SliceSet:
    """The lesion slices of every case under ``folder`` (LiTS, Decathlon or plain layout).

    ``need_classes``: refuse a folder without class maps (the classifying frameworks); without it
    (segmentation pre-training on LiTS-style data) class maps are used where present.
    """
    folder = Path(folder)
    cases = find_cases(folder)
    names = class_names(folder)
    lookup = np.zeros(256, np.uint8)
    for value, name in names.items():
        lookup[value] = LESION_CLASSES.index(name) + 1
    parts = []
    for case in cases:
        ct = read_ct(case.image)
        label = read_label(case.label, reference=ct.grid).array
        path = class_map_path(case)
        lesion_class = None
        if path is not None:
            raw = read_label(path, allowed=None, reference=ct.grid).array
            stray = sorted(set(np.unique(raw).tolist()) - {0} - set(names))
            if stray:
                raise LabelValueError(
                    f"{path} holds class values {stray} that {folder / 'manifest.json'} does not name "
                    f"(named: {', '.join(f'{v}={n}' for v, n in sorted(names.items()))})"
                )
            lesion_class = lookup[raw] * (label == TUMOUR)
        elif need_classes:
            raise DatasetError(
                f"{case.label} has no class map beside it (classes-N or NAME_classes): the cls, ynet and joint "
                "frameworks need lesion classes; the seg framework trains without"
            )
        if not (label == TUMOUR).any():
            continue
        parts.append(case_slices(case.name, ct, label, config, lesion_class))
    slices = SliceSet.concatenate(parts, config.size)
    if len(slices) == 0:
        raise DatasetError(f"{folder} has no tumour in any case: there is no lesion to learn from")
    return slices
