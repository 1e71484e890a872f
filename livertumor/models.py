"""Model files and the model registry.

A model is a folder: one safetensors file of weights per network (``tumour``, plus ``liver`` for the
cascade; an ensemble adds its further members as ``tumour.2``, ``tumour.3``, ...) and ``card.json``,
which says everything needed to use it again — architecture, preprocessing, labels, training schema and
stages, training data, validation metrics, version, parent model — and the sha256 of each weights file,
verified on every load. Nothing is pickled, no code is loaded.

The registry lists shipped models (``Resources/Models``, with ``manifest.json``) and the user's own
(``$LIVERTUMOR_HOME/models``, by default ``~/.livertumor/models``). Saving never overwrites: a folder
that exists is refused, and fine-tuning makes a new version beside its parent.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import LiverTumorError
from .io import ordinary_permissions
from .networks import ProbabilityMean, ResUNet3d, ResUNetConfig
from .paths import shipped_models_dir, user_models_dir
from .preprocess import PreprocessConfig, mask_box
from .volume import Grid

if TYPE_CHECKING:
    from .lesions.model import LesionModelCard

MODEL_FORMAT = "livertumor-model/1"
LESION_MODEL_FORMAT = "livertumor-lesion-model/1"
CARD_NAME = "card.json"
DEFAULT_MODEL = "demo-curriculum"
NOT_CLINICAL = "Research and demonstration only. Not a medical device; not for diagnosis or treatment decisions."


class ModelFileError(LiverTumorError):
    """A model folder or weights file is missing, truncated, or does not fit its card."""


class ModelChecksumError(ModelFileError):
    """A weights file's sha256 differs from the one its card records."""


class ModelExistsError(LiverTumorError):
    """Saving would overwrite an existing model."""


def network_role(weights_key: str) -> str:
    """The role a card's weights entry belongs to: ``tumour.2``, an ensemble's second tumour network, is
    ``tumour``."""
    return weights_key.split(".", 1)[0]


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ModelCard:
    """Everything about a model but its weights."""

    name: str
    version: str
    architecture: ResUNetConfig
    preprocess: PreprocessConfig
    schema: str
    stages: list[dict] = field(default_factory=list)
    weights: dict[str, dict] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=lambda: {"0": "background", "1": "liver", "2": "tumour"})
    liver_margin_mm: float = 10.0
    #: Models that segment the liver too: drop tumour components touching no liver voxel.
    tumour_in_liver: bool = False
    training_data: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    #: A fine-tuned model's parent scored on the same validation cases before fine-tuning.
    validation_before: dict = field(default_factory=dict)
    parent: str | None = None
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    intended_use: str = NOT_CLINICAL
    notes: str = ""

    def to_json(self) -> dict:
        data = asdict(self)
        data["architecture"] = self.architecture.to_dict()
        data["preprocess"] = self.preprocess.to_dict()
        return {"format": MODEL_FORMAT, **data}

    @classmethod
    def from_json(cls, data: dict, source: str = "the card") -> ModelCard:
        if data.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"{source} is not a {MODEL_FORMAT} card (format {data.get('format')!r})")
        values = {k: v for k, v in data.items() if k != "format"}
        try:
            values["architecture"] = ResUNetConfig.from_dict(values["architecture"])
            values["preprocess"] = PreprocessConfig.from_dict(values["preprocess"])
            return cls(**values)
        except (KeyError, TypeError, ValueError, AttributeError) as error:  # fields of the wrong type
            raise ModelFileError(f"{source} is incomplete or invalid: {error}") from error

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    #: What the registry lists this model as.
    kind = "segmentation"

    def members(self, role: str = "tumour") -> list[str]:
        """The weights entries of ``role``: one, or an ensemble's members in order."""
        return [key for key in self.weights if network_role(key) == role]

    @property
    def method(self) -> str:
        count = len(self.members())
        return self.schema if count < 2 else f"{self.schema}, ensemble of {count}"


@contextmanager
def _staged_folder(directory: Path) -> Iterator[Path]:
    """A temporary folder beside ``directory`` to fill; renamed to it when the block succeeds (so the
    folder appears complete or not at all), removed otherwise."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield staging
        ordinary_permissions(staging)
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_model(directory: str | os.PathLike, networks: dict[str, nn.Module], card: ModelCard | LesionModelCard) -> Path:
    """Write a new model folder: weights (safetensors) and the card (either kind) with their sha256.

    The folder is assembled under a temporary name and renamed at the end, so it appears complete or
    not at all. An existing folder is refused (:class:`ModelExistsError`).
    """
    directory = Path(directory)
    if directory.exists():
        raise ModelExistsError(f"{directory} exists; models are never overwritten: choose a new folder")
    with _staged_folder(directory) as staging:
        card.weights = {}
        for role, network in networks.items():
            file = f"{role}.safetensors"
            state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
            # One metadata key: safetensors writes several in a random order, and identical weights
            # must give identical bytes (and sha256).
            save_file(state, str(staging / file), metadata={"format": card.to_json()["format"]})
            ordinary_permissions(staging / file)  # safetensors creates it private (0600)
            card.weights[role] = {"file": file, "sha256": sha256_of(staging / file)}
        (staging / CARD_NAME).write_text(json.dumps(card.to_json(), indent=1))
    return directory


@dataclass
class LoadedModel:
    """A model ready to run: its card and its networks in eval mode on a device."""

    card: ModelCard
    #: One network per role; an ensemble's role is a :class:`~livertumor.networks.ProbabilityMean`.
    networks: dict[str, ResUNet3d | ProbabilityMean]
    path: Path

    def cascade_stages(self) -> list[tuple[str, ResUNet3d | ProbabilityMean]]:
        """The networks in the order inference runs them: the liver network first, if any."""
        return [(role, self.networks[role]) for role in ("liver", "tumour") if role in self.networks]

    def weights_digest(self, role: str) -> str:
        """The sha256 that names ``role``'s weights (a compiled graph's cache key): its file's, or for an
        ensemble the sha256 of its members' sha256 in order."""
        digests = [self.card.weights[key]["sha256"] for key in self.card.members(role)]
        return digests[0] if len(digests) == 1 else hashlib.sha256(",".join(digests).encode()).hexdigest()

    def liver_box(self, liver: np.ndarray, grid: Grid) -> tuple[slice, slice, slice]:
        """Where the cascade's tumour network looks: the predicted liver's box plus the card's margin
        (the whole volume when no liver was found)."""
        return mask_box(liver, grid.spacing_zyx, self.card.liver_margin_mm)


def read_card(directory: str | os.PathLike) -> ModelCard | LesionModelCard:
    """The card of a model folder (no weights read): a :class:`ModelCard` for tumour segmentation
    models, a :class:`~livertumor.lesions.model.LesionModelCard` for lesion models."""
    path = Path(directory) / CARD_NAME
    if not path.is_file():
        raise ModelFileError(f"{directory} is not a model folder: it has no {CARD_NAME}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} is not a model card: it holds a JSON {type(data).__name__}, not an object")
    if data.get("format") == LESION_MODEL_FORMAT:
        from .lesions.model import LesionModelCard

        card = LesionModelCard.from_json(data, str(path))
    else:
        card = ModelCard.from_json(data, str(path))
    _check_card_fields(card, path)
    return card


#: Model names, versions and weight files are plain names: a card is data from anywhere, and these
#: become folder and file names (``..``, separators and absolute paths would reach other models).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _is_plain_name(value: object) -> bool:
    return isinstance(value, str) and _PLAIN_NAME.fullmatch(value) is not None and ".." not in value


#: Field annotations of the card dataclasses -> the JSON types a card may hold there.
_FIELD_TYPES = {
    "str": (str,),
    "bool": (bool,),
    "float": (int, float),
    "int": (int,),
    "str | None": (str, type(None)),
}


def _check_card_fields(card, path: Path) -> None:
    """Types of every plain field (a card is data from anywhere) and plain names where names become
    folder and file names."""
    for card_field in dataclasses.fields(card):
        value = getattr(card, card_field.name)
        annotation = str(card_field.type)
        expected = _FIELD_TYPES.get(annotation) or (
            (dict,) if annotation.startswith("dict") else (list,) if annotation.startswith("list") else None
        )
        wrong_bool = isinstance(value, bool) and bool not in (expected or ())
        if expected and (not isinstance(value, expected) or wrong_bool):
            raise ModelFileError(
                f"{path}: {card_field.name} = {value!r} is not of the type a card holds there ({annotation})"
            )
    for what, value in (("name", card.name), ("version", card.version)):
        if not _is_plain_name(value):
            raise ModelFileError(f"{path}: model {what} {value!r} must be a plain name (letters, digits, . _ -)")
    for role, entry in card.weights.items():
        file = entry.get("file") if isinstance(entry, dict) else None
        if not _is_plain_name(file):
            raise ModelFileError(f"{path}: weights {role!r} name the file {file!r}; a file inside the folder is needed")


MANIFEST_NAME = "manifest.json"


def write_manifest(folder: str | os.PathLike) -> Path:
    """Record the sha256 of every model card in ``folder`` (the shipped models) in ``manifest.json``."""
    from .io import write_json

    folder = Path(folder)
    entries = []
    for card_path in sorted(folder.glob(f"*/{CARD_NAME}")):
        card = read_card(card_path.parent)
        entries.append(
            {
                "folder": card_path.parent.name,
                "name": card.name,
                "version": card.version,
                "card_sha256": sha256_of(card_path),
            }
        )
    path = folder / MANIFEST_NAME
    write_json(path, {"format": MODEL_FORMAT, "models": entries})
    return path


def check_manifest(directory: Path) -> None:
    """A shipped model's card must match the manifest (the card in turn pins the weights)."""
    manifest = directory.parent / MANIFEST_NAME
    if directory.parent.resolve() != shipped_models_dir().resolve() or not manifest.is_file():
        return
    listed = {entry["folder"]: entry["card_sha256"] for entry in json.loads(manifest.read_text())["models"]}
    expected = listed.get(directory.name)
    if expected is not None and sha256_of(directory / CARD_NAME) != expected:
        raise ModelChecksumError(f"{directory / CARD_NAME} differs from the shipped manifest {manifest}")


def read_verified_weights(directory: Path, card) -> dict[str, dict[str, torch.Tensor]]:
    """Every weights file a card lists, checked against its sha256 and read as safetensors (no pickle)."""
    states = {}
    for role, entry in card.weights.items():
        path = directory / entry["file"]
        if not path.is_file():
            raise ModelFileError(f"{path} is missing (listed in {directory / CARD_NAME})")
        actual = sha256_of(path)
        if actual != entry["sha256"]:
            raise ModelChecksumError(
                f"{path} fails its checksum: the card records sha256 {entry['sha256'][:16]}..., the file has "
                f"{actual[:16]}...; it is corrupt, truncated or was replaced. Reinstall or re-export the model."
            )
        try:
            states[role] = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise ModelFileError(f"{path} cannot be read as safetensors: {error}") from error
    return states


def load_state_strict(network: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """``load_state_dict(strict=True)`` with the error a user can act on."""
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelFileError(f"{source} does not fit the architecture in its card: {error}") from error


def load_model(model: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a model by registry name, folder or None (the default model), verifying every checksum."""
    directory = resolve_model(model)
    card = _segmentation_card(directory)
    states = read_verified_weights(directory, card)
    networks = {}
    for role in dict.fromkeys(map(network_role, states)):
        members = [_network(card, states[key], directory / card.weights[key]["file"]) for key in card.members(role)]
        network = members[0] if len(members) == 1 else ProbabilityMean(members)
        networks[role] = network.to(device).eval()
    if "tumour" not in networks:
        raise ModelFileError(f"{directory} has no tumour network in its card")
    return LoadedModel(card, networks, directory)


def _segmentation_card(directory: Path) -> ModelCard:
    """The card of a tumour segmentation model folder, checked against the shipped manifest."""
    check_manifest(directory)
    card = read_card(directory)
    if not isinstance(card, ModelCard):
        raise ModelFileError(f"{directory} is a {card.kind} model, not a tumour segmentation model")
    return card


def _network(card: ModelCard, state: dict[str, torch.Tensor], source: Path) -> ResUNet3d:
    network = ResUNet3d(card.architecture)
    load_state_strict(network, state, source)
    return network


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    version: str
    path: Path
    source: str  # "shipped" or "user"
    kind: str  # "segmentation" or "lesion"
    method: str  # training schema (segmentation) or framework (lesion)


def _version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in version.replace("+", ".").split("."))


def list_models() -> list[RegistryEntry]:
    """Every model found, shipped ones first, then the user's; each list sorted by name and version."""
    entries = []
    for source, folder in (("shipped", shipped_models_dir()), ("user", user_models_dir())):
        if not folder.is_dir():
            continue
        found = []
        for card_path in sorted(folder.glob(f"*/{CARD_NAME}")):
            try:
                card = read_card(card_path.parent)
            except ModelFileError:
                continue  # a broken folder is reported when someone asks for it by path
            found.append(RegistryEntry(card.name, card.version, card_path.parent, source, card.kind, card.method))
        entries += sorted(found, key=lambda e: (e.name, _version_key(e.version)))
    return entries


def resolve_model(model: str | os.PathLike | None, default: str = DEFAULT_MODEL) -> Path:
    """A model folder from a folder path, a registry name (newest version), ``name:version``, or None
    for ``default``."""
    if model is None:
        model = default
    path = Path(model)
    if path.is_dir():
        return path
    if path.name == CARD_NAME and path.is_file():
        return path.parent
    name, _, version = str(model).partition(":")
    candidates = [e for e in list_models() if e.name == name and (not version or e.version == version)]
    if not candidates:
        known = ", ".join(sorted({f"{e.name}:{e.version}" for e in list_models()})) or "none"
        raise ModelFileError(f"no model folder or registered model {model!r} (registered: {known})")
    return max(candidates, key=lambda e: _version_key(e.version)).path


def import_model(folder: str | os.PathLike) -> Path:
    """Copy a model folder (either kind) into the user's models after verifying every checksum; an
    existing ``NAME-VERSION`` folder there is refused, never overwritten."""
    source = Path(folder)
    card = read_card(source)
    read_verified_weights(source, card)
    target = user_models_dir() / f"{card.name}-{card.version}"
    if target.exists():
        raise ModelExistsError(f"{target} exists; models are never overwritten")
    with _staged_folder(target) as staging:
        for entry in [CARD_NAME, *(e["file"] for e in card.weights.values())]:
            shutil.copy2(source / entry, staging / entry)
    return target


def next_version(name: str, parent_version: str) -> str:
    """The first free ``parent.N`` version of ``name`` in the registry (fine-tuning never reuses one)."""
    taken = {e.version for e in list_models() if e.name == name}
    number = 1
    while f"{parent_version}.{number}" in taken:
        number += 1
    return f"{parent_version}.{number}"


#: What ensemble members must share: what their networks see, and what their outputs mean.
_ENSEMBLE_SHARED = ("architecture", "preprocess", "schema", "labels", "liver_margin_mm", "tumour_in_liver")


def combine_models(
    models: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    name: str | None = None,
    version: str | None = None,
    parent: str | None = None,
) -> Path:
    """A new model that runs ``models`` (names, ``name:version`` or folders) as one: each voxel's class
    probabilities are their mean. Averaging the outputs of networks trained with different seeds removes
    much of their seed-to-seed variance (measured in docs/results/demo-model.md); averaging their weights
    would not, as their networks are not aligned.

    Every member's checksums are verified, and the members must share architecture, preprocessing,
    schema, labels and post-processing. Members that are ensembles are flattened; the same weights twice
    are refused (they would count double). The new card lists each member with its validation and
    training settings; it has no validation of its own. ``out`` (default: the user's models,
    ``NAME-VERSION``) must not exist; ``name`` defaults to the first member's name plus ``-ensemble``,
    ``version`` to one above its highest numbered one. ``parent``: the model these members were fine-tuned
    from, if any.
    """
    if len(models) < 2:
        raise LiverTumorError(f"an ensemble needs two or more models, got {len(models)}")
    sources = [resolve_model(model) for model in models]
    cards = [_segmentation_card(source) for source in sources]
    first = cards[0]
    name = name or f"{first.name}-ensemble"
    if not _is_plain_name(name):
        raise LiverTumorError(f"model name {name!r} must be a plain name (letters, digits, . _ -)")
    networks: dict[str, ResUNet3d] = {}
    digests: set[str] = set()
    for source, card in zip(sources, cards):
        for field_name in _ENSEMBLE_SHARED:
            if getattr(card, field_name) != getattr(first, field_name):
                raise LiverTumorError(
                    f"{source} and {sources[0]} differ in their {field_name.replace('_', ' ')}; "
                    "the members of an ensemble must share it"
                )
        if {network_role(key) for key in card.weights} != {network_role(key) for key in first.weights}:
            raise LiverTumorError(f"{source} and {sources[0]} have different networks; an ensemble needs the same ones")
        for key, state in read_verified_weights(source, card).items():
            digest = card.weights[key]["sha256"]
            if digest in digests:
                raise LiverTumorError(
                    f"{source} repeats weights already in the ensemble ({key}, sha256 {digest[:16]}...)"
                )
            digests.add(digest)
            role = network_role(key)
            count = sum(network_role(taken) == role for taken in networks)
            networks[role if not count else f"{role}.{count + 1}"] = _network(
                card, state, source / card.weights[key]["file"]
            )
    if version is None:
        numbers = [int(entry.version) for entry in list_models() if entry.name == name and entry.version.isdigit()]
        version = str(max(numbers, default=0) + 1)  # newer than every version of that name, so it is the default
    elif not _is_plain_name(version):
        raise LiverTumorError(f"model version {version!r} must be plain (letters, digits, . _ -)")
    members = [
        {
            "model": f"{card.name}:{card.version}",
            "folder": source.name,
            "sha256": [e["sha256"] for e in card.weights.values()],
            "validation": card.validation,
            **({"validation_before": card.validation_before} if card.validation_before else {}),
            **({"settings": card.training_data["settings"]} if "settings" in card.training_data else {}),
        }
        for source, card in zip(sources, cards)
    ]
    notes = {card.training_data.get("validation_note") for card in cards}
    shared_note = notes.pop() if len(notes) == 1 else None
    card = dataclasses.replace(
        first,
        name=name,
        version=version,
        weights={},
        training_data={"ensemble_of": members, **({"validation_note": shared_note} if shared_note else {})},
        validation={},
        validation_before={},
        parent=parent,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        notes=f"Ensemble of {len(cards)} models: each voxel's class "
        "probabilities are their mean. Each member's validation is under training_data.ensemble_of.",
    )
    return save_model(Path(out) if out else user_models_dir() / f"{name}-{version}", networks, card)
