"""``livertumor demo``: a phantom CT segmented by the shipped demo model, scored and shown."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .evaluation import Evaluation
from .inference import segment
from .io import write_json, write_volume
from .metrics import evaluate_pair
from .phantom import LESION_CLASSES, make_phantom
from .plotting import pyplot, save_figure


def overlay_png(ct: np.ndarray, truth: np.ndarray, prediction: np.ndarray, spacing_zyx, path: Path, title: str) -> int:
    """Axial slice with the most true tumour: CT (window 40/400), truth outline green, prediction red.
    Returns the slice index."""
    plt = pyplot()

    counts = (truth > 0).reshape(truth.shape[0], -1).sum(1)
    index = int(np.argmax(counts)) if counts.any() else truth.shape[0] // 2
    figure, axis = plt.subplots(figsize=(6, 6 * spacing_zyx[1] * ct.shape[1] / (spacing_zyx[2] * ct.shape[2])))
    axis.imshow(ct[index], cmap="gray", vmin=-160, vmax=240, aspect=spacing_zyx[1] / spacing_zyx[2])
    for mask, colour in ((truth, "lime"), (prediction, "red")):
        if mask[index].any():
            axis.contour(mask[index].astype(float), levels=[0.5], colors=colour, linewidths=1.2)
    axis.set_title(f"{title}\nslice {index}: truth green, prediction red", fontsize=9)
    axis.axis("off")
    figure.tight_layout()
    save_figure(figure, path)
    return index


def run_demo(
    out: str | os.PathLike,
    seed: int = 7,
    model: str | None = None,
    device: str = "auto",
    lesion_model: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Make, segment and score one phantom, classify its lesions; write everything to ``out``; return the
    printed summary. ``progress(message)`` hears each step as it starts."""
    from .models import read_card, resolve_model

    say = progress or (lambda message: None)
    out = Path(out)
    card = read_card(resolve_model(model))
    say(f"making phantom {seed}")
    phantom = make_phantom(seed)
    write_volume(phantom.ct, out / "ct.nii.gz")
    write_volume(phantom.label, out / "truth.nii.gz")
    say(f"segmenting with {card.name}:{card.version}")
    result = segment(phantom.ct, model=model, device=device)
    write_volume(result.labels, out / "prediction.nii.gz")
    say("scoring")
    case = evaluate_pair(result.labels.array, phantom.label.array, phantom.ct.grid.spacing_zyx, f"phantom-{seed}")
    evaluation = Evaluation([case])
    write_json(out / "metrics.json", evaluation.to_json())
    slice_index = overlay_png(
        phantom.ct.array,
        phantom.label.array == 2,
        result.labels.array == 2,
        phantom.ct.grid.spacing_zyx,
        out / "overlay.png",
        f"{card.name}:{card.version} on phantom seed {seed}",
    )
    kinds = ", ".join(f"{lesion.kind} {lesion.diameter_mm:.0f} mm" for lesion in phantom.lesions) or "none"
    say("classifying the true lesions")
    classes = _classify_true_lesions(phantom, out, lesion_model, device)
    quoted = {key: value for key, value in card.validation.items() if key in EXPECTED and value is not None}
    expected = ", ".join(f"{EXPECTED[key]} {value:.2f}" for key, value in quoted.items())
    return (
        f"phantom CT {phantom.ct.shape[::-1]} voxels (x, y, z), lesions (diameter as drawn): {kinds}\n"
        f"model: {card.name}:{card.version}"
        + (f" (on its held-out phantoms: {expected}; one phantom's scores scatter around these)" if expected else "")
        + f"\n{evaluation.table()}\n{classes}\n"
        f"wrote {out}/ct.nii.gz, truth.nii.gz, prediction.nii.gz, metrics.json, lesions.json, overlay.png "
        f"(slice {slice_index})"
    )


#: Validation figures of the card quoted as what to expect, with their names.
EXPECTED = {"dg": "tumour DG", "dc": "mean DC", "recall": "lesion recall", "small_recall": "recall < 10 mm"}


def _classify_true_lesions(phantom, out: Path, model: str | None, device: str) -> str:
    """The lesion classifier on the phantom's true lesions (liver box from the true label map), beside
    the kind each lesion was drawn as."""
    if not (phantom.label.array == 2).any():
        return "lesion classes: the phantom has no lesion"
    from .lesions.classify import classify_lesions, write_report
    from .lesions.measure import lesion_components
    from .lesions.model import DEFAULT_LESION_MODEL
    from .models import read_card, resolve_model

    results = classify_lesions(phantom.ct, phantom.label, model=model, device=device)
    ids, _ = lesion_components(phantom.label.array == 2)
    lines, right = [], 0
    for result in results:
        drawn = np.bincount(phantom.lesion_class.array[ids == result.id]).argmax()
        truth = LESION_CLASSES[drawn - 1] if drawn > 0 else "?"
        right += truth == result.lesion_class
        lines.append(
            f"  lesion {result.id}: {result.lesion_class:<10} (drawn as {truth}), "
            f"longest axial diameter {result.measurement.longest_axial_diameter_mm:.0f} mm"
        )
    card = read_card(resolve_model(model, DEFAULT_LESION_MODEL))
    write_report(results, out / "lesions.json", f"{card.name}:{card.version}", "phantom")
    return f"lesion classes ({right} of {len(results)} right):\n" + "\n".join(lines)
