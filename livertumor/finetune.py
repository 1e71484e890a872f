"""Fine-tuning a model on a user's own annotated cases: checked first, then the three-stage curriculum
from the model's weights, saved as a new version beside it (the model itself is never touched)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .datasets import Case
from .errors import DatasetError, LiverTumorError
from .io import read_ct, read_label
from .models import load_model, next_version, user_models_dir
from .training import Event, TrainConfig, config_with, split_cases, train_model

#: Fine-tuning's default curriculum: 8 epochs of 40 steps (4 + 1 + 3 over the three stages; 320 steps, a
#: few minutes on 2 CPU cores for the demo network) at a tenth of the usual starting rate, so the parent's
#: features are adapted, not relearnt. ``--epochs`` / ``--iterations`` override it.
QUICK = {"epochs": 8, "iterations_per_epoch": 40, "learning_rate": 1e-4, "stage_decay": 0.5}
QUICK_STAGE_EPOCHS = (4, 1, 3)


def check_cases(cases: Sequence[Case]) -> list[str]:
    """Every problem of the cases, one line each: unreadable or non-CT images, label maps off the CT's
    grid or with values other than 0/1/2, and no tumour anywhere. An empty list means usable."""
    problems, tumour_cases = [], 0
    for case in cases:
        try:
            ct = read_ct(case.image)
            label = read_label(case.label, reference=ct.grid)
        except LiverTumorError as error:
            problems.append(f"{case.name}: {error}")
            continue
        tumour_cases += bool((label.array == 2).any())
    if not cases:
        problems.append("no cases given")
    elif tumour_cases == 0 and not problems:
        problems.append("no case holds a tumour (label 2): fine-tuning needs at least one annotated tumour")
    return problems


def finetune(
    model: str | os.PathLike | None,
    cases: Sequence[Case],
    out: str | os.PathLike | None = None,
    epochs: int | None = None,
    iterations: int | None = None,
    validation_fraction: float = 0.2,
    seed: int | None = None,
    device: str | None = None,
    workers: int | None = None,
    on_event: Event | None = None,
    restart: bool = False,
) -> Path:
    """Fine-tune ``model`` (None: the default model) on ``cases`` with the three-stage curriculum; returns
    the new model's folder.

    Architecture and preprocessing come from the model's card (one source of truth); the new card names
    its parent and holds the validation metrics before and after. A work folder left by another run is
    refused unless ``restart`` (see :func:`~livertumor.training.train_model`).
    """
    problems = check_cases(cases)
    if problems:
        raise DatasetError("the fine-tuning cases cannot be used:\n  " + "\n  ".join(problems))
    parent = load_model(model)
    card = parent.card
    settings = card.training_data.get("settings")
    config = TrainConfig.from_json(settings) if settings else TrainConfig()
    config = replace(
        config,
        architecture=card.architecture,
        preprocess=card.preprocess,
        schema="cascade" if card.schema == "cascade" else "three-stage",
    )
    # Adapting a trained model takes a short curriculum at a lower rate, not the parent's whole budget
    # (52 epochs x 120 steps for the demo model, over an hour on 2 cores).
    config = replace(config, **QUICK, stage_epochs=QUICK_STAGE_EPOCHS if config.schema == "three-stage" else None)
    config = config_with(config, iterations_per_epoch=iterations, seed=seed, device=device, workers=workers)
    if epochs is not None:
        config = replace(config, epochs=epochs, stage_epochs=None)
    version = next_version(card.name, card.version)
    out = Path(out) if out else user_models_dir() / f"{card.name}-{version}"
    train, validation = split_cases(cases, validation_fraction, config.seed)
    initial = {role: network.state_dict() for role, network in parent.networks.items()}
    result = train_model(
        train,
        validation,
        config,
        out,
        name=card.name,
        version=version,
        initial=initial,
        parent=f"{card.name}:{card.version}",
        on_event=on_event,
        restart=restart,
    )
    return result.model_dir
