"""Lesion model files: the four frameworks' networks, their card, saving and loading.

A lesion model folder is like a segmentation model's (``models.py``: safetensors weights whose sha256
the card records, never overwritten) with its own card format, ``livertumor-lesion-model/1``: the
framework, the encoder's size, the slice preprocessing (:class:`SliceConfig`), class names, how the
weights were initialised, the cross-validation or validation results, and which segmentation model
gives the liver box at inference.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..models import (
    LESION_MODEL_FORMAT,
    NOT_CLINICAL,
    ModelFileError,
    check_manifest,
    load_state_strict,
    read_card,
    read_verified_weights,
    resolve_model,
)
from ..phantom import LESION_CLASSES
from .networks import SEResNetClassifier, SEResNetConfig, SEResUNet

Framework = Literal["cls", "seg", "ynet", "joint"]
FRAMEWORKS: dict[str, str] = {
    "cls": "classification baseline (SE-ResNet classifier)",
    "seg": "segmentation baseline (U-Net, weighted cross-entropy)",
    "ynet": "multi-task Y-Net (segmentation + classification head on the bottleneck)",
    "joint": "joint pixel-wise classification (background, liver, lesion classes; majority vote)",
}
DEFAULT_LESION_MODEL = "demo-lesions"
#: Joint framework's pixel classes: background, liver, then one per lesion class.
JOINT_OFFSET = 2
#: How lesion slices are cropped (:class:`SliceConfig`).
CROPS = ("liver", "lesion")


@dataclass(frozen=True)
class SliceConfig:
    """How a lesion's axial slices become network inputs: a square crop, HU windowed to [0, 1], resized
    to ``size`` x ``size`` pixels; the lesion's largest-area slice and ``neighbours`` slices either side.

    ``crop``: ``"liver"`` (the second paper's liver crop: the liver's 3D box plus ``margin_mm``, the shorter
    side widened to a square) or ``"lesion"`` (a ``field_mm`` square centred on the lesion). A liver crop
    of a 150-200 mm liver at 96-128 px has 1.5-2 mm pixels, where a 10 mm lesion is 5-7 px and its rim or
    nodules are sub-pixel; a lesion crop keeps a fixed, finer scale (size still tells the kinds apart)
    with enough liver around it to compare densities.
    """

    size: int = 128
    window_center: float = 50.0
    window_width: float = 350.0
    margin_mm: float = 10.0
    neighbours: int = 1
    crop: str = "liver"
    field_mm: float = 96.0

    def __post_init__(self) -> None:
        if self.size % 32:
            raise ValueError(f"slice size must be a multiple of 32 (the U-Net's poolings), got {self.size}")
        if self.crop not in CROPS:
            raise ValueError(f"slice crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if not self.field_mm > 0:
            raise ValueError(f"the lesion crop's field must be positive, got {self.field_mm} mm")

    def to_dict(self) -> dict:
        return asdict(self)


def build_network(framework: Framework, encoder: SEResNetConfig, classes: int) -> nn.Module:
    """The network of a framework for ``classes`` lesion classes."""
    if framework == "cls":
        return SEResNetClassifier(encoder, classes)
    if framework == "seg":
        return SEResUNet(encoder, segmentation_classes=2)
    if framework == "ynet":
        return SEResUNet(encoder, segmentation_classes=2, classification_classes=classes)
    if framework == "joint":
        return SEResUNet(encoder, segmentation_classes=JOINT_OFFSET + classes)
    raise ValueError(f"unknown framework {framework!r}; choose one of {', '.join(FRAMEWORKS)}")


@dataclass
class LesionModelCard:
    """Everything about a lesion model but its weights."""

    name: str
    version: str
    framework: str
    encoder: SEResNetConfig
    slices: SliceConfig
    classes: list[str] = field(default_factory=lambda: list(LESION_CLASSES))
    init: str = "scratch"
    liver_model: str | None = None
    weights: dict[str, dict] = field(default_factory=dict)
    training_data: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    parent: str | None = None
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    intended_use: str = NOT_CLINICAL
    notes: str = ""

    kind = "lesion"

    @property
    def method(self) -> str:
        return self.framework

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def classifies(self) -> bool:
        return self.framework != "seg"

    def to_json(self) -> dict:
        data = asdict(self)
        return {"format": LESION_MODEL_FORMAT, **data}

    @classmethod
    def from_json(cls, data: dict, source: str = "the card") -> LesionModelCard:
        values = {k: v for k, v in data.items() if k != "format"}
        try:
            values["encoder"] = SEResNetConfig.from_dict(values["encoder"])
            values["slices"] = SliceConfig(**values["slices"])
            card = cls(**values)
        except (KeyError, TypeError, ValueError, AttributeError) as error:  # fields of the wrong type
            raise ModelFileError(f"{source} is incomplete or invalid: {error}") from error
        if card.framework not in FRAMEWORKS:
            raise ModelFileError(f"{source} names an unknown framework {card.framework!r}")
        return card

    def network(self) -> nn.Module:
        return build_network(self.framework, self.encoder, len(self.classes))  # type: ignore[arg-type]


@dataclass
class LoadedLesionModel:
    """A lesion model ready to run: card and network in eval mode."""

    card: LesionModelCard
    network: nn.Module
    path: Path


def load_lesion_model(model: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> LoadedLesionModel:
    """Load a lesion model by registry name, folder or None (the shipped demo classifier), verifying its
    checksum."""
    directory = resolve_model(model, DEFAULT_LESION_MODEL)
    check_manifest(directory)
    card = read_card(directory)
    if not isinstance(card, LesionModelCard):
        raise ModelFileError(f"{directory} is a tumour segmentation model, not a lesion model")
    states = read_verified_weights(directory, card)
    if "lesion" not in states:
        raise ModelFileError(f"{directory} has no lesion network in its card")
    network = card.network()
    load_state_strict(network, states["lesion"], directory / card.weights["lesion"]["file"])
    return LoadedLesionModel(card, network.to(device).eval(), directory)
