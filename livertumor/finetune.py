"""Fine-tuning a model on a user's own annotated cases: checked first, then the three-stage curriculum
from the model's weights, saved as a new version beside it (the model itself is never touched)."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from .datasets import Case
from .errors import DatasetError, LiverTumorError
from .io import read_ct, read_label, write_volume
from .models import combine_models, load_model, next_version, read_card, user_models_dir
from .networks import ensemble_member
from .training import Event, TrainConfig, config_with, split_cases, train_model

#: Fine-tuning presets. ``quick`` adapts a trained model in minutes on 2 CPU cores (demo network, 1-5
#: real-size cases): 8 epochs of 40 steps (4 + 1 + 3 over the three stages) at a tenth of the usual
#: starting rate, so the parent's features are adapted, not relearnt; half the whole-volume blocks are
#: drawn around the corrected lesions and every block keeps the liver in view. ``full`` repeats the
#: parent's own training budget and sampling. ``--epochs`` / ``--iterations`` override either.
PRESETS: dict[str, dict] = {
    "quick": {
        "epochs": 8,
        "stage_epochs": (4, 1, 3),
        "iterations_per_epoch": 40,
        "learning_rate": 1e-4,
        "stage_decay": 0.5,
        "lr_schedule": "step",  # whatever the parent's last run used: the budget above is for constant rates
        "tumour_fraction": 0.5,
        "region_fraction": 1.0,
    },
    "full": {},
}

#: Share of each case's labelled slices held out for validation when there are too few cases (< 3) to
#: hold out whole ones.
HELD_OUT_FRACTION = 0.25


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


def held_out_part(case: Case, folder: Path, fraction: float = HELD_OUT_FRACTION) -> tuple[Case, Case | None, str]:
    """Split one case along its slices into a training part and a held-out validation part (files in
    ``folder``, kept if already there so an interrupted run resumes on the same files).

    The held-out part is the upper or lower ``fraction`` of the labelled slices, cut at a slice without
    tumour nearest that share; the end is chosen so that both parts hold tumour where possible, and always
    so that the training part does. Returns the two cases (None when no slab leaves tumour to train on)
    and a sentence saying what the validation measures.
    """
    ct = read_ct(case.image)
    if ct.shape[0] < 2:
        return case, None, f"{case.name}: one slice, nothing to hold out; not validated"
    label = read_label(case.label, reference=ct.grid)
    tumour = (label.array == 2).any(axis=(1, 2))
    labelled = np.flatnonzero((label.array > 0).any(axis=(1, 2)))
    first, last = (int(labelled[0]), int(labelled[-1])) if labelled.size else (0, ct.shape[0] - 1)
    length = max(1, math.ceil(fraction * (last - first + 1)))
    free = np.flatnonzero(~tumour)
    depth, options = ct.shape[0], []
    for held_upper in (True, False):
        target = last + 1 - length if held_upper else first + length
        cut = int(free[np.argmin(np.abs(free - target))]) if free.size else target
        cut = min(max(cut, 1), depth - 1)
        ranges = (
            {"train": (0, cut), "held-out": (cut, depth)}
            if held_upper
            else {"train": (cut, depth), "held-out": (0, cut)}
        )
        has = {role: bool(tumour[start:stop].any()) for role, (start, stop) in ranges.items()}
        options.append((has["train"], has["held-out"], held_upper, ranges))
    train_has, held_has, _, ranges = max(options, key=lambda option: option[:3])
    if not train_has:
        return case, None, f"{case.name}: no slab can be held out without taking all its tumour; not validated"
    parts = {}
    for role, (start, stop) in ranges.items():
        stem = folder / f"{case.name}-{role}"
        image, mask = stem.with_name(stem.name + ".nrrd"), stem.with_name(stem.name + "_seg.nrrd")
        if not (image.is_file() and mask.is_file()):
            window = ((start, 0, 0), (stop, *ct.shape[1:]))
            write_volume(ct.crop(*window), image)
            write_volume(label.crop(*window), mask)
        parts[role] = Case(f"{case.name}-{role}", image, mask)
    what = "tumour Dice and false positives" if held_has else "false positives only (no tumour there)"
    start, stop = ranges["held-out"]
    where = f"slices {start}-{stop - 1}"
    return parts["train"], parts["held-out"], f"{case.name}: validated on held-out {where}, {what}"


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
    preset: str = "quick",
) -> Path:
    """Fine-tune ``model`` (None: the default model) on ``cases`` with the three-stage curriculum; returns
    the new model's folder.

    Architecture and preprocessing come from the model's card (one source of truth); ``preset`` (see
    :data:`PRESETS`) sets the budget. The new card names its parent and holds the validation metrics
    before and after; with fewer than three cases a part of each case is held out for them
    (:func:`held_out_part`), and the card says what was validated. A work folder left by another run is
    refused unless ``restart`` (see :func:`~livertumor.training.train_model`).

    An ensemble is fine-tuned member by member on the same cases and preset (each with its own sampling
    seed), and the adapted members are combined into the new version; each member's validation before
    and after is on its card's ``training_data.ensemble_of``. An interrupted run reuses the members it
    finished.
    """
    if preset not in PRESETS:
        raise LiverTumorError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    parent = load_model(model)
    card = parent.card
    problems = check_cases(cases)
    if problems:
        raise DatasetError("the fine-tuning cases cannot be used:\n  " + "\n  ".join(problems))
    # an ensemble's members were trained alike (but for their seeds): the first one's settings stand for all
    ensemble_of = card.training_data.get("ensemble_of") or [{}]
    settings = card.training_data.get("settings") or ensemble_of[0].get("settings")
    config = TrainConfig.from_json(settings) if settings else TrainConfig()
    config = replace(
        config,
        architecture=card.architecture,
        preprocess=card.preprocess,
        schema="cascade" if card.schema == "cascade" else "three-stage",
        tumour_in_liver=card.tumour_in_liver,  # the parent's post-processing, in validation and the new card
        average_epochs=0,  # how the parent's weights were picked; a fine-tuned model is its best validated epoch
    )
    config = replace(config, **PRESETS[preset])
    if config.schema != "three-stage" and preset == "quick":
        config = replace(config, stage_epochs=None)
    config = config_with(config, iterations_per_epoch=iterations, seed=seed, device=device, workers=workers)
    if epochs is not None:
        config = replace(config, epochs=epochs, stage_epochs=None)
    version = next_version(card.name, card.version)
    out = Path(out) if out else user_models_dir() / f"{card.name}-{version}"
    train, validation = split_cases(cases, validation_fraction, config.seed)
    if validation_fraction == 0:
        notes = ["no validation: validation fraction 0"]
    elif validation:
        notes = [f"validated on {len(validation)} held-out cases"]
    else:  # too few cases to hold whole ones out: a slab of each
        folder = out.with_name(out.name + ".work") / "held-out"
        if restart:  # the parts of an earlier run may come from other versions of the cases
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        train, validation, notes = [], [], []
        for case in cases:
            part, held_out, note = held_out_part(case, folder)
            train.append(part)
            validation += [held_out] if held_out else []
            notes.append(note)
    note = "; ".join(notes)
    if on_event:
        on_event({"event": "validation-plan", "note": note})
    count, parent_name = len(card.members()), f"{card.name}:{card.version}"
    if count == 1:
        initial = {role: network.state_dict() for role, network in parent.networks.items()}
        result = train_model(
            train,
            validation,
            config,
            out,
            name=card.name,
            version=version,
            initial=initial,
            parent=parent_name,
            on_event=on_event,
            restart=restart,
            validation_note=note,
        )
        return result.model_dir
    # An ensemble: each member adapted in turn (its own sampling seed), then combined as the parent was.
    folder = out.with_name(out.name + ".work") / "members"
    if restart:
        shutil.rmtree(folder, ignore_errors=True)
    tuned = []
    for index in range(count):
        member_out = folder / f"member-{index + 1}"
        member_config = replace(config, seed=config.seed + index)
        if not _finished_member(member_out, member_config, train):
            initial = {role: ensemble_member(network, index).state_dict() for role, network in parent.networks.items()}
            train_model(
                train,
                validation,
                member_config,
                member_out,
                name=card.name,
                version=f"{version}-member{index + 1}",
                initial=initial,
                parent=f"{parent_name}, member {index + 1} of {count}",
                on_event=_member_events(on_event, index, count),
                restart=restart,
                validation_note=note,
            )
        tuned.append(member_out)
    combined = combine_models(tuned, out, name=card.name, version=version, parent=parent_name)
    if on_event:
        on_event({"event": "saved", "model": str(combined), "validation": {}, "members": count})
    return combined


def _finished_member(member_out: Path, config: TrainConfig, train: Sequence[Case]) -> bool:
    """Whether an interrupted ensemble fine-tuning already adapted this member with these settings and
    cases (it is reused); another run's member is refused."""
    if not (member_out / "card.json").is_file():
        return False
    done = read_card(member_out).training_data
    settings = json.loads(json.dumps(config.to_json()))  # as the card stores them: tuples become lists
    if done.get("settings") != settings or done.get("train_cases") != [case.name for case in train]:
        raise LiverTumorError(
            f"{member_out} holds a member adapted by another fine-tuning run; use --restart to discard it"
        )
    return True


def _member_events(on_event: Event | None, index: int, count: int) -> Event | None:
    """Events of one member's run as parts of the whole: progress over all members, and the member's own
    model reported as ``member-saved`` (only the combined model is ``saved``)."""
    if on_event is None:
        return None

    def forward(event: dict) -> None:
        event = {**event, "member": index + 1, "members": count}
        if event["event"] == "iteration":
            total, done = event["total_iterations"], event["done_iterations"]
            per_iteration = event["eta_s"] / max(1, total - done)
            event |= {
                "done_iterations": index * total + done,
                "total_iterations": count * total,
                "eta_s": event["eta_s"] + (count - index - 1) * total * per_iteration,
            }
        elif event["event"] == "epoch":
            event |= {"done": index * event["total"] + event["done"], "total": count * event["total"]}
        elif event["event"] == "saved":
            event["event"] = "member-saved"
        elif event["event"] == "validation-plan":
            return  # said once, before the members
        on_event(event)

    return forward
