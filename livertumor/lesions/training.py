"""Training and evaluating the four lesion frameworks, transfer-learning initialisations, and k-fold
cross-validation split by patient.

Choices where the second paper is silent (its Table 1 gives no optimiser settings): Adam at 1e-3 with
cosine decay over the epochs, batch 16, the same for every framework and initialisation so that only the
initialisation differs; augmentation by flips, shifts of up to 1/16 of the crop and intensity jitter
(lesion type does not depend on orientation); the Y-Net's lambda 0.5.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import LiverTumorError
from ..inference import resolve_device
from ..models import save_model
from ..phantom import LESION_CLASSES
from .data import UNKNOWN, SliceSet, load_lesion_dataset
from .losses import inverse_frequency_weights, majority_vote, ynet_loss
from .model import FRAMEWORKS, JOINT_OFFSET, LesionModelCard, SliceConfig, build_network, load_lesion_model
from .networks import SEResNetConfig, map_encoder_keys

Event = Callable[[dict], None]


@dataclass(frozen=True)
class LesionTrainConfig:
    """Settings of one lesion-model training; stored in the card."""

    framework: str = "joint"
    encoder: SEResNetConfig = field(default_factory=SEResNetConfig)
    slices: SliceConfig = field(default_factory=SliceConfig)
    epochs: int = 30
    batch: int = 16
    learning_rate: float = 1e-3
    ynet_lambda: float = 0.5
    augmentation: bool = True
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.framework not in FRAMEWORKS:
            raise LiverTumorError(f"unknown framework {self.framework!r}; choose one of {', '.join(FRAMEWORKS)}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> LesionTrainConfig:
        """Settings from JSON (a ``--config`` file or a card); anything malformed is one clear error."""
        values = dict(data)
        try:
            if "encoder" in values:
                values["encoder"] = SEResNetConfig.from_dict(values["encoder"])
            if "slices" in values:
                values["slices"] = SliceConfig(**values["slices"])
            return cls(**values)
        except (TypeError, KeyError, AttributeError, ValueError) as error:
            raise LiverTumorError(f"invalid lesion training settings: {error}") from None


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a plain ``torch.save`` file (tensors only: weights_only)."""
    if not path.is_file():
        raise LiverTumorError(f"weight file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise LiverTumorError(
            f"{path} is refused: it holds pickled objects, not only tensors (code could run on loading); "
            "give a safetensors file or a tensor-only state dict"
        ) from None
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise LiverTumorError(f"{path} cannot be read as a state dict: {error}") from error
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LiverTumorError(f"{path} holds no state dict")
    return state


def initialise(network: nn.Module, init: str) -> str:
    """Start weights: ``scratch``, ``imagenet:FILE`` (an SE-ResNet state dict; timm or Cadene names) into
    the encoder, or ``lits:MODEL`` (a lesion model of this library, e.g. a seg model pre-trained on
    LiTS-layout data): every weight whose name and shape fit, the encoder entirely. Returns a summary."""
    kind, _, source = init.partition(":")
    if kind == "scratch" and not source:
        return "random (Kaiming) initialisation"
    if kind == "imagenet" and source:
        encoder = network.encoder
        encoder.load_state_dict(map_encoder_keys(_read_state(Path(source)), encoder))
        return f"encoder from {source}"
    if kind == "lits" and source:
        state = load_lesion_model(source).network.state_dict()
        target = network.state_dict()
        fitting = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
        missing_encoder = [k for k in target if k.startswith("encoder.") and k not in fitting]
        if missing_encoder:
            raise LiverTumorError(
                f"{source} does not fit this network's encoder ({len(missing_encoder)} weights differ, "
                f"e.g. {missing_encoder[0]}): pre-train with the same encoder size"
            )
        network.load_state_dict(fitting, strict=False)
        return f"{len(fitting)} of {len(target)} weights from lesion model {source}"
    raise LiverTumorError(f"unknown initialisation {init!r}: use scratch, imagenet:FILE or lits:MODEL")


#: Intensity jitter of the augmentation: ±2 % scale, ±0.015 shift (about ±5 HU each in a 350 HU window).
INTENSITY_SCALE = 0.02
INTENSITY_SHIFT = 0.015


def _augment(images: torch.Tensor, maps: list[torch.Tensor], generator: torch.Generator) -> tuple:
    """Random flips and shifts (same for image and maps) and intensity jitter, per batch."""
    dims = [d for d, flip in zip((-1, -2), torch.rand(2, generator=generator) < 0.5) if flip]
    if dims:
        images, maps = images.flip(dims), [m.flip(dims) for m in maps]
    limit = max(1, images.shape[-1] // 16)
    shifts = [int(s) for s in torch.randint(-limit, limit + 1, (2,), generator=generator)]
    images, maps = images.roll(shifts, (-2, -1)), [m.roll(shifts, (-2, -1)) for m in maps]
    # Small intensity jitter only: CT numbers are calibrated (water 0 ± 5 HU on any scanner that passes
    # its QA), and absolute density is what tells a cyst (0-20 HU) from a hypodense metastasis (30-60 HU).
    # The earlier ±10 % scale and ±0.05 shift (±35 HU in the 350 HU window) blurred exactly that.
    scale = 1.0 + INTENSITY_SCALE * (2 * torch.rand(1, generator=generator) - 1)
    shift = INTENSITY_SHIFT * (2 * torch.rand(1, generator=generator) - 1)
    return images * scale + shift, maps


@dataclass
class FrameworkLoss:
    """The framework's loss with class weights from the training set's frequencies."""

    framework: str
    weights: torch.Tensor | None
    ynet_lambda: float

    @classmethod
    def for_data(cls, framework: str, data: SliceSet, ynet_lambda: float, classes: int) -> FrameworkLoss:
        weights = None
        if framework in ("seg", "ynet"):
            weights = inverse_frequency_weights(np.bincount(data.any_lesion.ravel(), minlength=2)[:2])
        elif framework == "joint":
            weights = inverse_frequency_weights(np.bincount(data.joint.ravel(), minlength=JOINT_OFFSET + classes))
        return cls(framework, weights, ynet_lambda)

    def __call__(self, output, labels, any_lesion, joint) -> torch.Tensor:
        weights = None if self.weights is None else self.weights.to(labels.device)
        if self.framework == "cls":
            return nn.functional.cross_entropy(output, labels)
        if self.framework == "seg":
            return nn.functional.cross_entropy(output, any_lesion, weight=weights)
        if self.framework == "ynet":
            return ynet_loss(output[0], any_lesion, output[1], labels, self.ynet_lambda, weights)
        return nn.functional.cross_entropy(output, joint, weight=weights)


def _require_labels(framework: str, data: SliceSet) -> None:
    if framework != "seg" and not data.has_classes:
        raise LiverTumorError(f"the {framework} framework needs a lesion class for every lesion (class maps)")


def fit(network: nn.Module, data: SliceSet, config: LesionTrainConfig, on_event: Event | None = None) -> list[dict]:
    """Train ``network`` on ``data`` for ``config.epochs``; returns the per-epoch loss log."""
    _require_labels(config.framework, data)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    network.to(device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    # Cosine decay to zero: on a few hundred slices the last weights of a constant rate swing from epoch to
    # epoch; decaying lets them settle.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, config.epochs))
    loss_of = FrameworkLoss.for_data(config.framework, data, config.ynet_lambda, len(LESION_CLASSES))
    images = torch.from_numpy(data.images)[:, None]
    labels = torch.from_numpy(np.maximum(data.labels, 0))
    any_lesion, joint = torch.from_numpy(data.any_lesion).long(), torch.from_numpy(data.joint).long()
    log = []
    for epoch in range(config.epochs):
        order = torch.randperm(len(data), generator=generator)
        losses = []
        # Batch norm needs two samples: a last batch of one joins the one before.
        starts = [s for s in range(0, len(data), config.batch) if len(data) - s > 1 or s == 0]
        for first in starts:
            last = first + config.batch if first + config.batch < len(data) - 1 else len(data)
            index = order[first:last]
            image, maps = images[index], [any_lesion[index], joint[index]]
            if config.augmentation:
                image, maps = _augment(image, maps, generator)
            output = network(image.to(device))
            loss = loss_of(output, labels[index].to(device), maps[0].to(device), maps[1].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        scheduler.step()
        log.append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
        if on_event:
            on_event({"event": "epoch", "epoch": epoch + 1, "epochs": config.epochs, "loss": log[-1]["loss"]})
    network.eval()
    return log


@dataclass
class SlicePredictions:
    """Per slice: class probabilities (None for ``seg``), majority-vote class over the sample's lesion
    pixels (joint) or the arg-max class, and the predicted lesion mask (None for ``cls``)."""

    probabilities: np.ndarray | None
    classes: np.ndarray | None
    lesion_mask: np.ndarray | None
    votes: np.ndarray | None = None


@torch.no_grad()
def predict_slices(
    network: nn.Module, framework: str, images: np.ndarray, lesion: np.ndarray, classes: int, batch: int = 16
) -> SlicePredictions:
    """Run a lesion network on (N, S, S) slices; ``lesion`` (N, S, S) is each sample's own lesion mask
    (the pixels that vote in the joint framework)."""
    network.eval()
    device = next(network.parameters()).device
    probabilities, masks, votes, winners = [], [], [], []
    for first in range(0, len(images), batch):
        image = torch.from_numpy(images[first : first + batch])[:, None].to(device)
        output = network(image)
        if framework == "cls":
            probabilities.append(torch.softmax(output, 1).cpu().numpy())
            continue
        segmentation = output[0] if framework == "ynet" else output
        if framework == "ynet":
            probabilities.append(torch.softmax(output[1], 1).cpu().numpy())
        pixel = torch.softmax(segmentation, 1).cpu().numpy()
        if framework != "joint":
            masks.append(pixel.argmax(1) == 1)
            continue
        masks.append(pixel.argmax(1) >= JOINT_OFFSET)
        for sample, own in enumerate(lesion[first : first + batch].astype(bool)):
            pixel_classes = np.where(masks[-1][sample], pixel[sample].argmax(0) - JOINT_OFFSET, -1)
            winner, counts = majority_vote(pixel_classes, own, classes)
            lesion_part = pixel[sample, JOINT_OFFSET:]
            mean = lesion_part[:, own].mean(1) if own.any() else lesion_part.mean((1, 2))
            mean = mean / max(mean.sum(), 1e-12)
            votes.append(counts)
            probabilities.append(mean[None])
            # A lesion no pixel voted for takes the arg-max of its mean class probabilities.
            winners.append(winner if winner >= 0 else int(mean.argmax()))
    lesion_mask = np.concatenate(masks) if masks else None
    if framework == "seg":
        return SlicePredictions(None, None, lesion_mask)
    if framework == "joint":
        return SlicePredictions(np.concatenate(probabilities), np.asarray(winners), lesion_mask, np.stack(votes))
    stacked = np.concatenate(probabilities)
    return SlicePredictions(stacked, stacked.argmax(1), lesion_mask)


#: Lesions from this equivalent diameter up are the ones radiologists characterise on CT.
CHARACTERISABLE_MM = 10.0


def lesion_decision(predictions: SlicePredictions, framework: str, rows: Sequence[int]) -> tuple[int, np.ndarray]:
    """One lesion's class from its slices ``rows``: the majority vote of its pixels over all slices
    (joint; the mean probabilities when no pixel voted) or the arg-max of the mean slice probabilities
    (cls, ynet). Returns the class index and the mean probabilities."""
    probabilities = predictions.probabilities[list(rows)].mean(0)
    if framework == "joint":
        totals = predictions.votes[list(rows)].sum(0)
        if totals.sum():
            return int(totals.argmax()), probabilities
    return int(probabilities.argmax()), probabilities


def _confusion(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    return confusion


def evaluate(network: nn.Module, framework: str, data: SliceSet, classes: int = len(LESION_CLASSES)) -> dict:
    """Classification accuracy per slice and per lesion (its slices' decision, as ``classify`` makes
    it), their confusion matrices (rows truth, columns prediction) and per-class recall of lesions;
    segmentation Dice and recall of lesion pixels (means over slices)."""
    predictions = predict_slices(network, framework, data.images, data.lesion, classes)
    result: dict = {"slices": len(data)}
    if predictions.classes is not None and data.has_classes:
        slice_confusion = _confusion(data.labels, predictions.classes, classes)
        result["slice_accuracy"] = float(np.trace(slice_confusion) / slice_confusion.sum())
        result["slice_confusion"] = slice_confusion.tolist()
        rows_of: dict[str, list[int]] = {}
        for row, key in enumerate(data.lesions):
            rows_of.setdefault(key, []).append(row)
        truth = np.asarray([data.labels[rows[0]] for rows in rows_of.values()])
        decided = np.asarray([lesion_decision(predictions, framework, rows)[0] for rows in rows_of.values()])
        diameters = np.asarray([data.diameters_mm[rows[0]] for rows in rows_of.values()])
        confusion = _confusion(truth, decided, classes)
        result["lesions"] = len(rows_of)
        result["accuracy"] = float(np.trace(confusion) / confusion.sum())
        # Radiologists call lesions under 10 mm "too small to characterise": the accuracy either side.
        for key, chosen in (
            ("accuracy_10mm_up", diameters >= CHARACTERISABLE_MM),
            ("accuracy_under_10mm", diameters < CHARACTERISABLE_MM),
        ):
            if chosen.any():
                result[key] = float(np.mean(truth[chosen] == decided[chosen]))
                result[key.replace("accuracy", "lesions")] = int(chosen.sum())
        result["confusion"] = confusion.tolist()
        result["recall_per_class"] = {
            name: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
            for i, name in enumerate(LESION_CLASSES[:classes])
        }
    if predictions.lesion_mask is not None:
        truth = data.any_lesion.astype(bool)
        found = predictions.lesion_mask
        overlap = (found & truth).sum((1, 2))
        sizes = found.sum((1, 2)) + truth.sum((1, 2))
        result["dice"] = float(np.mean(np.where(sizes > 0, 2 * overlap / np.maximum(sizes, 1), 1.0)))
        result["recall"] = float(np.mean(overlap / np.maximum(truth.sum((1, 2)), 1)))
    return result


def patient_folds(patients: list[str], folds: int, seed: int) -> list[np.ndarray]:
    """Sample indices of each fold; every patient's slices fall in one fold."""
    unique = sorted(set(patients))
    if len(unique) < folds:
        raise LiverTumorError(f"{folds}-fold cross-validation needs at least {folds} patients, got {len(unique)}")
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[p]: i % folds for i, p in enumerate(order)}
    return [np.flatnonzero([fold_of[p] == f for p in patients]) for f in range(folds)]


def _mean_results(results: list[dict]) -> dict:
    keys = ("accuracy", "accuracy_10mm_up", "accuracy_under_10mm", "slice_accuracy", "dice", "recall")
    keys = [k for k in keys if all(k in r for r in results)]
    summary = {k: float(np.mean([r[k] for r in results])) for k in keys}
    summary.update({f"{k}_std": float(np.std([r[k] for r in results])) for k in keys})
    for key in ("confusion", "slice_confusion"):
        if all(key in r for r in results):
            summary[key] = np.sum([r[key] for r in results], axis=0).tolist()
    summary["folds"] = results
    return summary


def cross_validate(
    data: SliceSet, config: LesionTrainConfig, init: str = "scratch", folds: int = 3, on_event: Event | None = None
) -> dict:
    """k-fold cross-validation split by patient: train from ``init`` on k-1 folds, evaluate on the
    held-out one; the means, standard deviations and the summed confusion matrix."""
    results = []
    for fold, held_out in enumerate(patient_folds(data.patients, folds, config.seed)):
        train = np.setdiff1d(np.arange(len(data)), held_out)
        network = build_network(config.framework, config.encoder, len(LESION_CLASSES))  # type: ignore[arg-type]
        initialise(network, init)
        report = (lambda event, fold=fold: on_event({**event, "fold": fold + 1, "folds": folds})) if on_event else None
        fit(network, data.subset(train), config, report)
        results.append(evaluate(network, config.framework, data.subset(held_out)))
    return _mean_results(results)


def train_lesion_model(
    data_dir: str | os.PathLike,
    config: LesionTrainConfig,
    out: str | os.PathLike,
    init: str = "scratch",
    folds: int = 3,
    name: str = "lesions",
    version: str = "1",
    liver_model: str | None = None,
    on_event: Event | None = None,
) -> LesionModelCard:
    """Cross-validate (``folds`` >= 2; 0 skips it), then train on every case and save a new lesion model
    folder ``out`` (never overwritten) whose card holds the settings and the cross-validation results."""
    from ..models import ModelExistsError

    out = Path(out)
    if out.exists():
        raise ModelExistsError(f"{out} exists; models are never overwritten: choose a new --out")
    data = load_lesion_dataset(data_dir, config.slices, need_classes=config.framework != "seg")
    if on_event:
        on_event({"event": "prepared", "slices": len(data), "patients": len(set(data.patients))})
    validation = cross_validate(data, config, init, folds, on_event) if folds >= 2 else {}
    network = build_network(config.framework, config.encoder, len(LESION_CLASSES))  # type: ignore[arg-type]
    init_summary = initialise(network, init)
    history = fit(network, data, config, on_event)
    counts = np.bincount(data.labels[data.labels != UNKNOWN], minlength=len(LESION_CLASSES))
    card = LesionModelCard(
        name=name,
        version=version,
        framework=config.framework,
        encoder=config.encoder,
        slices=config.slices,
        init=init,
        liver_model=liver_model,
        training_data={
            "folder": str(data_dir),
            "patients": len(set(data.patients)),
            "lesions": len(set(data.lesions)),
            "slices": len(data),
            "slices_per_class": {n: int(c) for n, c in zip(LESION_CLASSES, counts)},
            "initialisation": init_summary,
            "settings": config.to_json(),
            "final_loss": history[-1]["loss"] if history else None,
        },
        validation={"cross_validation_folds": folds, **validation} if validation else {},
    )
    save_model(out, {"lesion": network}, card)
    if on_event:
        on_event({"event": "saved", "model": str(out)})
    return card
