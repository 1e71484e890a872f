"""Per-lesion classification of a 3D CT: ``classify_lesions(image, lesions, model=...)``.

Each lesion (26-connected component of the lesion mask) is classified from its largest-area axial slice
and its neighbours, cropped like the training slices (to the liver or around the lesion, as the card's
``slices.crop`` says). Frameworks ``cls`` and ``ynet`` average their per-slice class probabilities;
``joint`` takes the majority vote of the lesion's pixels over all its slices (the second paper's rule)
and reports the mean pixel probabilities.

A liver crop's box comes from, in this order: the ``liver`` argument, label 1 of a 0/1/2 ``lesions`` map,
or the segmentation model the lesion model's card names (run with ``livertumor.segment``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import LiverTumorError
from ..inference import resolve_device
from ..io import check_ct_values, read_ct, read_image
from ..phantom import LESION_CLASSES
from ..volume import Volume
from .data import LIVER, TUMOUR, case_slices
from .measure import LesionMeasurement, lesion_components, measure_lesions
from .model import load_lesion_model
from .training import lesion_decision, predict_slices

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class LesionClassification:
    """One lesion: its class, class probabilities, the vote of each slice, and its measurements."""

    id: int
    lesion_class: str
    probabilities: dict[str, float]
    slice_votes: list[dict]
    measurement: LesionMeasurement

    def to_json(self) -> dict:
        measurement = asdict(self.measurement)
        return {
            "id": self.id,
            "class": self.lesion_class,
            "probabilities": self.probabilities,
            "volume_ml": measurement["volume_ml"],
            "longest_axial_diameter_mm": measurement["longest_axial_diameter_mm"],
            "centroid_lps_mm": measurement["centroid_lps_mm"],
            "voxels": measurement["voxels"],
            "slice_votes": self.slice_votes,
        }


def _as_volume(value: Volume | str | os.PathLike) -> Volume:
    return value if isinstance(value, Volume) else read_image(value)


#: A 0/1 map whose 1 is one piece this large (mL) is a liver without tumour, not a lesion: a liver is
#: 1,000-2,000 mL, the largest lesion the models are trained for (80 mm) 270 mL.
LIVER_ONLY_ML = 700.0
#: A lesion map has a few label values; more distinct values than this is an image (a CT given by mistake).
MAX_LABEL_VALUES = 16


def lesion_voxels(lesion_map: np.ndarray, voxel_ml: float) -> np.ndarray:
    """The lesion voxels of a ``--lesions`` map. A 0/1/2 label map (``segment``'s output, LiTS) gives
    its 2; a map of 0 and 1 only is a lesion mask, unless its 1 is one liver-sized piece (a liver
    segmentation without tumour: no lesions); any other map with few values is a mask of its non-zero
    voxels. A map with many values or fractions is refused: it is an image, not labels."""
    values = np.unique(lesion_map)
    whole = bool(np.all(np.mod(values, 1) == 0))
    if values.size > MAX_LABEL_VALUES or not whole:
        raise LiverTumorError(
            f"the lesion map holds {values.size} distinct values{'' if whole else ' and fractions'}: "
            "an image (a CT?), not a lesion mask or label map"
        )
    if TUMOUR in values and LIVER in values:
        return lesion_map == TUMOUR
    mask = lesion_map != 0
    if set(values.tolist()) <= {0, LIVER} and mask.sum() * voxel_ml > LIVER_ONLY_ML:
        labels, count = lesion_components(mask)
        if count and np.bincount(labels.ravel())[1:].max() * voxel_ml > LIVER_ONLY_ML:
            return np.zeros_like(mask)
    return mask


def _liver_mask(
    ct: Volume, lesion_map: np.ndarray, liver, liver_model: str | None, device: str, backend: str
) -> np.ndarray:
    if liver is not None:
        volume = _as_volume(liver)
        ct.grid.require_same(volume.grid, "the CT", "the liver mask")
        return volume.array != 0
    if lesion_map.max() == TUMOUR and (lesion_map == LIVER).any():
        return lesion_map >= LIVER
    if liver_model is None:
        raise LiverTumorError(
            "no liver mask: pass one (liver=... / --liver), a 0/1/2 label map with the liver, or use a lesion "
            "model whose card names a liver model"
        )
    from ..inference import segment

    liver_mask = segment(ct, model=liver_model, device=device, backend=backend).labels.array >= LIVER
    if not liver_mask.any():
        raise LiverTumorError(f"the liver model {liver_model} found no liver in this CT")
    return liver_mask


def classify_lesions(
    image: Volume | str | os.PathLike,
    lesions: Volume | str | os.PathLike,
    model: str | os.PathLike | None = None,
    liver: Volume | str | os.PathLike | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    min_lesion_mm: float = 0.0,
    backend: str = "torch",
) -> list[LesionClassification]:
    """Classify every lesion of ``lesions`` (a mask, or a 0/1/2 label map whose 2 is tumour) on the CT
    ``image``'s grid as cyst, hemangioma or metastasis. ``model``: a lesion model (registry name or
    folder; None for the shipped demo classifier). Lesions below ``min_lesion_mm`` equivalent-sphere
    diameter are left out. ``backend``: what runs the liver model, when it gives the liver box
    (:func:`livertumor.segment`'s)."""
    report = progress or (lambda fraction, message: None)
    ct = read_ct(image) if not isinstance(image, Volume) else image
    check_ct_values(ct)
    lesion_volume = _as_volume(lesions)
    ct.grid.require_same(lesion_volume.grid, "the CT", "the lesion mask")
    lesion_map = np.asarray(lesion_volume.array)
    tumour = lesion_voxels(lesion_map, lesion_volume.grid.voxel_volume_ml)
    if min_lesion_mm > 0:
        from ..inference import drop_small_lesions

        kept = lesion_volume.with_array(np.where(tumour, 2, 0).astype(np.uint8))
        drop_small_lesions(kept, min_lesion_mm)
        tumour = kept.array == 2
    if not tumour.any():
        report(1.0, "no lesion")
        return []
    torch_device = resolve_device(device)
    loaded = load_lesion_model(model, torch_device)
    card = loaded.card
    if not card.classifies:
        raise LiverTumorError(f"{card.label} is a segmentation-only lesion model (framework seg): it cannot classify")
    liver_mask = None
    if card.slices.crop == "liver":
        report(0.05, "liver box")
        liver_mask = _liver_mask(ct, lesion_map, liver, card.liver_model, device, backend)
    label = np.where(tumour if liver_mask is None else liver_mask, LIVER, 0).astype(np.uint8)
    label[tumour] = TUMOUR
    report(0.4, "lesion slices")
    slices = case_slices("ct", ct, label, card.slices, liver=liver_mask)
    _, measurements = measure_lesions(ct.with_array(tumour.astype(np.uint8)))
    predictions = predict_slices(loaded.network, card.framework, slices.images, slices.lesion, len(card.classes))
    report(0.9, "votes")
    results = []
    for measurement in measurements:
        rows = [i for i, key in enumerate(slices.lesions) if key == f"ct/{measurement.id}"]
        winner, probabilities = lesion_decision(predictions, card.framework, rows)
        votes = [
            {
                "slice": int(slices.planes[row]),
                "class": card.classes[int(predictions.classes[row])],
                "probabilities": _named(predictions.probabilities[row], card.classes),
            }
            for row in rows
        ]
        results.append(
            LesionClassification(
                measurement.id, card.classes[winner], _named(probabilities, card.classes), votes, measurement
            )
        )
    report(1.0, "done")
    return results


def _named(values: np.ndarray, names: list[str]) -> dict[str, float]:
    return {name: round(float(v), 4) for name, v in zip(names, values)}


def write_report(results: list[LesionClassification], path: str | os.PathLike, model: str, image: str) -> Path:
    """The JSON report of ``livertumor classify`` (atomic)."""
    from ..io import write_json

    path = Path(path)
    write_json(
        path,
        {"image": image, "model": model, "classes": list(LESION_CLASSES), "lesions": [r.to_json() for r in results]},
    )
    return path
