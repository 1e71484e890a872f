"""Training by the three-stage curriculum and the schemas it is compared with.

Schemas (Li et al., Sec. III-B): ``three-stage`` (whole volumes -> tumour patches -> whole volumes),
``whole-to-patch``, ``patch-to-whole``, ``naive`` (whole volumes only) and ``cascade`` (a liver
network, then a tumour network trained on the liver's box). Adam at 1e-3, multiplied by 0.1 at each new
stage; the weighted Dice loss; validation with ``livertumor.metrics`` after every epoch; best and last
checkpoints, and optionally the last epochs' (``keep_epochs``; ``average_epochs`` ships their average).
A checkpoint is one safetensors file (weights, Adam's moments, progress) replaced atomically at the end of
each epoch; since every sample is drawn from ``(seed, stage, epoch, index)``, a run killed at any moment
and resumed ends with the same weights as one never interrupted.

Distributed: under ``torchrun`` the run uses DistributedDataParallel (gloo on CPU, nccl on GPU); each rank
draws its share of each epoch's samples, rank 0 validates and writes files.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Subset

from .data import (
    Augmentation,
    CurriculumSamples,
    PreparedCase,
    Task,
    foreground_channel,
    prepare_case,
    require_tumour,
    task_for,
    tumour_patch_size,
)
from .datasets import Case
from .errors import LiverTumorError
from .inference import class_map, drop_tumour_outside_liver, resolve_device, sliding_window
from .io import atomic_path
from .losses import LOSSES
from .metrics import dice_global, lesion_detection, mask_stats, mean_metrics, metrics_from_stats
from .models import ModelCard, save_model
from .networks import ResUNet3d, ResUNetConfig
from .plotting import pyplot, save_figure
from .preprocess import PreprocessConfig, mask_box

SCHEMAS: dict[str, tuple[str, ...]] = {
    "three-stage": ("whole", "patch", "whole"),
    "whole-to-patch": ("whole", "patch"),
    "patch-to-whole": ("patch", "whole"),
    "naive": ("whole",),
    "cascade": ("whole",),  # run once for the liver network, once for the tumour network
}

Event = Callable[[dict], None]

LR_SCHEDULES = ("step", "poly")


def scheduled_rate(stage_rate: float, schedule: str, stage_progress: float) -> float:
    """The learning rate at ``stage_progress`` (0 at a stage's first step, < 1 at its last) of a stage whose
    rate is ``stage_rate``: constant for ``step``, ``stage_rate * (1 - progress)^0.9`` for ``poly``."""
    if schedule == "poly":
        return stage_rate * (1.0 - stage_progress) ** 0.9
    return stage_rate


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in the model's card)."""

    schema: str = "three-stage"
    architecture: ResUNetConfig = field(default_factory=ResUNetConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    stage_epochs: tuple[int, ...] | None = None  # None: `epochs` split evenly over the schema's stages
    epochs: int = 30
    iterations_per_epoch: int = 50
    whole_batch: int = 1
    patch_batch: int = 2
    learning_rate: float = 1e-3
    stage_decay: float = 0.1
    #: ``step``: each stage at its constant rate (the paper); ``poly``: within each stage the rate falls
    #: as (1 - t)^0.9 (nnU-Net's schedule), so a stage ends annealed instead of at its noisiest.
    lr_schedule: str = "step"
    positive_fraction: float = 0.5
    region_fraction: float = 0.5
    #: Share of whole-volume blocks drawn around a tumour (0: the paper's sub-images only).
    tumour_fraction: float = 0.0
    #: How much more often a block is drawn around a tumour at the liver's surface than around one inside
    #: it (1: uniformly; see data.CurriculumSamples). Subcapsular cysts were the visible lesions the demo
    #: model missed most (docs/results/demo-model.md).
    surface_weight: float = 1.0
    loss_eps: float = 1.0
    #: ``weighted-dice`` (the paper's eq. 1-2), ``dice-ce`` (plus cross-entropy), ``present-dice`` (eq. 1-2
    #: over the classes a block holds), ``floored-dice`` (eq. 1-2 with no reward for clearing an absent
    #: class's map below a floor) or ``floored-lesion-ce`` (that plus a cross-entropy per lesion), see losses.LOSSES.
    loss: str = "weighted-dice"
    #: Train on each class's share of each voxel (soft targets from the label on the case's own finer grid,
    #: data.prepare_case) instead of 0/1 labels: the network can then say where between its voxel centres
    #: an outline runs. Off (the paper): the labels taken to the network's grid.
    soft_labels: bool = False
    augmentation: Augmentation = field(default_factory=Augmentation)
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    validation_overlap: float = 0.25
    liver_margin_mm: float = 10.0
    #: Three-class (joint) networks: keep only tumour in the largest liver component (LiTS-style
    #: post-processing), in validation and, through the card, in ``segment``. Opt-in: it needs a liver
    #: prediction good enough that its largest component is the liver.
    tumour_in_liver: bool = False
    #: Exponential moving average of the weights (Polyak averaging): each step the average moves
    #: ``1 - weight_average`` of the way to the trained weights, and the average is what is validated
    #: and saved. 0 (the paper) validates and saves the trained weights themselves. At batch 1 the
    #: weights jitter from step to step; 0.999 averages over about the last 1,000 steps (continuing the
    #: demo model it did not help: docs/results/demo-model.md).
    weight_average: float = 0.0
    #: Ship the equal-share average of the last N epochs' weights instead of the best validated epoch
    #: (0), and validate the average for the card: a pick that does not ride on one epoch's draw (the
    #: demo model's version 7 averages its last 8 of 64; docs/results/demo-model.md).
    average_epochs: int = 0
    #: Keep the weights after each of the last N epochs in the work folder (``TASK-epoch-NNN``, the epoch
    #: counted over all stages), to score epochs afterwards; at least ``average_epochs`` are kept.
    keep_epochs: int = 0

    def __post_init__(self) -> None:
        if self.schema not in SCHEMAS:
            raise LiverTumorError(f"unknown schema {self.schema!r}; choose one of {', '.join(SCHEMAS)}")
        if self.loss not in LOSSES:
            raise LiverTumorError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise LiverTumorError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if not 0.0 <= self.weight_average < 1.0:
            raise LiverTumorError(f"weight_average must be in [0, 1), got {self.weight_average}")
        if self.keep_epochs < 0 or self.average_epochs < 0:
            raise LiverTumorError(
                f"keep_epochs and average_epochs must be 0 or more, got {self.keep_epochs}, {self.average_epochs}"
            )

    def stage_plan(self) -> list[tuple[str, int, float]]:
        """``(kind, epochs, learning rate)`` per stage."""
        kinds = SCHEMAS[self.schema]
        epochs = self.stage_epochs or _split(self.epochs, len(kinds))
        if len(epochs) != len(kinds):
            raise LiverTumorError(f"schema {self.schema} has {len(kinds)} stages, got {len(epochs)} stage lengths")
        if self.average_epochs > sum(epochs):
            raise LiverTumorError(f"average_epochs is {self.average_epochs}, more than the run's {sum(epochs)} epochs")
        return [(k, int(e), self.learning_rate * self.stage_decay**i) for i, (k, e) in enumerate(zip(kinds, epochs))]

    @property
    def total_epochs(self) -> int:
        """Epochs of all stages together."""
        return sum(epochs for _, epochs, _ in self.stage_plan())

    def to_json(self) -> dict:
        data = asdict(self)
        data["architecture"] = self.architecture.to_dict()
        data["preprocess"] = self.preprocess.to_dict()
        return data

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        """Settings from JSON (a ``--config`` file or a card); anything malformed is one clear error."""
        try:
            return cls._from_json(data)
        except (TypeError, KeyError, AttributeError) as error:
            raise LiverTumorError(f"invalid training settings: {error}") from None

    @classmethod
    def _from_json(cls, data: dict) -> TrainConfig:
        values = dict(data)
        if "architecture" in values:
            values["architecture"] = ResUNetConfig.from_dict(values["architecture"])
        if "preprocess" in values:
            values["preprocess"] = PreprocessConfig.from_dict(values["preprocess"])
        if "augmentation" in values:
            augmentation = dict(values["augmentation"])
            augmentation = {k: tuple(v) if isinstance(v, list) else v for k, v in augmentation.items()}
            values["augmentation"] = Augmentation(**augmentation)
        if values.get("stage_epochs") is not None:
            values["stage_epochs"] = tuple(values["stage_epochs"])
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise LiverTumorError(f"unknown training settings {sorted(unknown)}")
        return cls(**values)


def _split(total: int, parts: int) -> tuple[int, ...]:
    base = total // parts
    return tuple(base + (1 if i < total - base * parts else 0) for i in range(parts))


@dataclass
class _Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _start_distributed(device: torch.device) -> _Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Distributed(dist.get_rank(), dist.get_world_size())


#: Key prefix of the averaged weights in a checkpoint (``TrainConfig.weight_average``).
AVERAGE = "average."


def _checkpoint_tensors(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, averaged: torch.nn.Module | None
) -> dict[str, torch.Tensor]:
    tensors = _prefixed(model.state_dict(), "model.")
    if averaged is not None:
        tensors.update(_prefixed(averaged.state_dict(), AVERAGE))
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors


def save_checkpoint(path: Path, model, optimizer, progress: dict, averaged: torch.nn.Module | None = None) -> None:
    """One file, replaced atomically: weights, Adam's state, the averaged weights if any and
    ``progress`` (JSON in the metadata)."""
    groups = optimizer.state_dict()["param_groups"]
    metadata = {"progress": json.dumps(progress), "param_groups": json.dumps(groups)}
    with atomic_path(path) as temporary:
        save_file(_checkpoint_tensors(model, optimizer, averaged), str(temporary), metadata=metadata)


def load_checkpoint(path: Path, model, optimizer, averaged: torch.nn.Module | None = None) -> dict:
    """Restore weights, optimizer and averaged weights from :func:`save_checkpoint`; returns the
    progress dict."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    model.load_state_dict(_with_prefix(tensors, "model."))
    if averaged is not None:
        averaged.load_state_dict(_with_prefix(tensors, AVERAGE))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    return json.loads(metadata["progress"])


def checkpoint_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network weights a checkpoint of :func:`save_checkpoint` saves as the model: the averaged ones
    where the run kept an average (``weight_average``), else the trained ones."""
    tensors = load_file(str(path))
    averaged = any(key.startswith(AVERAGE) for key in tensors)
    return _with_prefix(tensors, AVERAGE if averaged else "model.")


def average_weights(paths: Sequence[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """The equal-share average of checkpoints' network weights (:func:`checkpoint_weights`). The
    network's instance norm keeps no running statistics, so an average needs no recalibration."""
    if not paths:
        raise LiverTumorError("no checkpoints to average")
    states = [checkpoint_weights(path) for path in paths]
    return {
        key: torch.stack([state[key].float() for state in states]).mean(0).to(value.dtype)
        for key, value in states[0].items()
    }


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``state`` under checkpoint keys ``prefix`` + name, on the CPU; :func:`_with_prefix` reads it back."""
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in state.items()}


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


@dataclass
class TrainResult:
    """Where the run left its model and what it measured."""

    model_dir: Path | None
    history: list[dict]
    validation: dict
    validation_before: dict = field(default_factory=dict)


#: Runtimes whose thread pools do not survive a fork of the process that loaded them.
_FORK_UNSAFE_MODULES = ("openvino", "onnxruntime")


def worker_context(workers: int) -> multiprocessing.context.BaseContext | None:
    """How data-loader workers start: forked (the default: cheap, the data shared), unless a compiled
    inference runtime is loaded in this process (``segment`` with an OpenVINO or ONNX Runtime backend
    ran here before), whose thread pools crash a forked child or parent; then from a clean forkserver."""
    if workers and os.name == "posix" and any(name in sys.modules for name in _FORK_UNSAFE_MODULES):
        return multiprocessing.get_context("forkserver")
    return None


class Trainer:
    """Runs one schema for one network role (``tumour`` or ``liver``) in ``work_dir``."""

    def __init__(
        self,
        config: TrainConfig,
        train_cases: Sequence[PreparedCase],
        validation_cases: Sequence[PreparedCase],
        work_dir: Path,
        task: Task = "tumour",
        initial_weights: dict[str, torch.Tensor] | None = None,
        on_event: Event | None = None,
    ) -> None:
        self.config, self.task, self.work_dir = config, task, Path(work_dir)
        self.train_cases, self.validation_cases = list(train_cases), list(validation_cases)
        self.device = resolve_device(config.device)
        self.distributed = _start_distributed(self.device)
        self.on_event = on_event or (lambda event: None)
        torch.manual_seed(config.seed)
        self.model = ResUNet3d(config.architecture)
        self.fine_tuning = initial_weights is not None
        if initial_weights is not None:
            self.model.load_state_dict(initial_weights)
        self.model.to(self.device)
        # the average starts at the initial weights, so a fine-tuned model starts from its parent
        self.averaged = copy.deepcopy(self.model).requires_grad_(False) if config.weight_average else None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.last_path = self.work_dir / f"{task}-last.safetensors"
        self.best_path = self.work_dir / f"{task}-best.safetensors"
        self.log_path = self.work_dir / f"{task}-log.csv"
        self.block = config.preprocess.block
        self.patch = tumour_patch_size(self.train_cases, config.architecture.divisor, self.block)

    def _emit(self, **event) -> None:
        if self.distributed.main:
            self.on_event({"task": self.task, **event})

    def _network(self) -> torch.nn.Module:
        if self.distributed.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            return DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.index else None)
        return self.model

    def _loader(self, stage: int, kind: str) -> tuple[CurriculumSamples, DataLoader]:
        config = self.config
        batch = config.whole_batch if kind == "whole" else config.patch_batch
        samples = config.iterations_per_epoch * batch
        per_rank = math.ceil(samples / self.distributed.world)
        dataset = CurriculumSamples(
            self.train_cases,
            kind,
            self.block if kind == "whole" else self.patch,
            config.preprocess.stride,
            per_rank * self.distributed.world,
            config.seed,
            stage,
            self.task,
            config.positive_fraction,
            config.augmentation,
            config.region_fraction,
            config.tumour_fraction,
            config.surface_weight,
            config.soft_labels,
        )
        shard = Subset(dataset, range(self.distributed.rank, len(dataset), self.distributed.world))
        loader = DataLoader(
            shard,
            batch_size=batch,
            shuffle=False,
            num_workers=config.workers,
            drop_last=False,
            multiprocessing_context=worker_context(config.workers),
        )
        return dataset, loader

    def run(self) -> list[dict]:
        """Train every stage, resuming from the last checkpoint if one exists. Returns the epoch log."""
        plan = self.config.stage_plan()
        progress = {"stage": 0, "epoch": 0, "best": -1.0, "history": [], "before": {}}
        if self.last_path.exists():
            progress = load_checkpoint(self.last_path, self.model, self.optimizer, self.averaged)
            self._emit(event="resumed", stage=progress["stage"], epoch=progress["epoch"])
        elif self.fine_tuning and self.distributed.main:
            # The starting model scored on the same validation cases: the "before" of fine-tuning.
            progress["before"] = self.validate()
            self._emit(event="before", **progress["before"])
        self.before = progress.get("before", {})
        network = self._network()
        total_epochs = self.config.total_epochs
        per_epoch = self.config.iterations_per_epoch
        total_steps = total_epochs * per_epoch
        first_step = (sum(e for _, e, _ in plan[: progress["stage"]]) + progress["epoch"]) * per_epoch
        self._emit(
            event="plan",
            stages=[
                {"stage": i + 1, "kind": k, "epochs": e, "iterations": per_epoch, "learning_rate": lr}
                for i, (k, e, lr) in enumerate(plan)
            ],
            total_iterations=total_steps,
            starting_at=first_step,
        )
        run_started, steps_this_run = time.perf_counter(), 0
        for stage, (kind, epochs, learning_rate) in enumerate(plan):
            if stage < progress["stage"]:
                continue
            dataset, loader = self._loader(stage, kind)
            for epoch in range(progress["epoch"], epochs):
                started = time.perf_counter()
                dataset.set_epoch(epoch)
                network.train()
                losses = []
                for iteration, (image, target) in enumerate(loader):
                    rate = scheduled_rate(
                        learning_rate, self.config.lr_schedule, (epoch + iteration / len(loader)) / epochs
                    )
                    for group in self.optimizer.param_groups:
                        group["lr"] = rate
                    image, target = image.to(self.device), target.to(self.device)
                    loss = LOSSES[self.config.loss](network(image), target, self.config.loss_eps)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    self._update_average()
                    losses.append(float(loss.detach()))
                    steps_this_run += 1
                    done = first_step + steps_this_run
                    # validation time is in the elapsed time too, so the estimate includes it
                    seconds_per_step = (time.perf_counter() - run_started) / steps_this_run
                    self._emit(
                        event="iteration",
                        stage=stage,
                        kind=kind,
                        epoch=epoch,
                        iteration=iteration + 1,
                        iterations=len(loader),
                        loss=losses[-1],
                        done_iterations=done,
                        total_iterations=total_steps,
                        eta_s=round(seconds_per_step * max(0, total_steps - done)),
                    )
                validation = self.validate() if self.distributed.main else {}
                row = {
                    "stage": stage + 1,
                    "kind": kind,
                    "epoch": epoch + 1,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "loss": float(np.mean(losses)) if losses else float("nan"),
                    "seconds": round(time.perf_counter() - started, 2),
                    **validation,
                }
                progress["history"].append(row)
                progress["stage"], progress["epoch"] = (stage, epoch + 1) if epoch + 1 < epochs else (stage + 1, 0)
                score = validation.get("dg")
                if self.distributed.main:
                    if score is not None and score > progress["best"]:
                        progress["best"] = score
                        save_checkpoint(self.best_path, self.model, self.optimizer, progress, self.averaged)
                    save_checkpoint(self.last_path, self.model, self.optimizer, progress, self.averaged)
                    finished = len(progress["history"])
                    if finished > total_epochs - max(self.config.keep_epochs, self.config.average_epochs):
                        # the weights only (a third of a checkpoint): kept to score and average, not to resume
                        with atomic_path(self.epoch_path(finished)) as temporary:
                            save_file(_prefixed(self.saved_network.state_dict(), "model."), str(temporary))
                    self._write_log(progress["history"])
                self._emit(event="epoch", done=len(progress["history"]), total=total_epochs, **row)
            progress["epoch"] = 0
        if self.distributed.world > 1:
            dist.barrier()
        return progress["history"]

    @torch.no_grad()
    def _update_average(self) -> None:
        if self.averaged is None:
            return
        step = 1.0 - self.config.weight_average
        for average, current in zip(self.averaged.parameters(), self.model.parameters()):
            average.lerp_(current, step)
        for average, current in zip(self.averaged.buffers(), self.model.buffers()):
            average.copy_(current)

    @property
    def saved_network(self) -> torch.nn.Module:
        """The network whose weights a checkpoint saves as the model (the average, if one is kept)."""
        return self.model if self.averaged is None else self.averaged

    def epoch_path(self, epoch: int) -> Path:
        """Where the checkpoint after ``epoch`` (1-based, over all stages) is kept (``keep_epochs``)."""
        return self.work_dir / f"{self.task}-epoch-{epoch:03d}.safetensors"

    @torch.no_grad()
    def validate(self, network: torch.nn.Module | None = None) -> dict:
        """Whole-volume sliding-window inference on the validation cases, on the network's grid: of
        ``network``, else of the weights a checkpoint saves as the model."""
        if not self.validation_cases:
            return {}
        if network is None:
            network = self.saved_network
        stats, raw_stats, rows, small_found, small_total, free_ml, has_tumour = [], [], [], 0, 0, 0.0, False
        post_process = self.task == "joint" and self.config.tumour_in_liver
        for case in self.validation_cases:
            probabilities = sliding_window(
                network,
                case.image,
                self.block,
                self.config.architecture.divisor,
                self.config.validation_overlap,
                1,
                self.device,
            )
            classes = class_map(probabilities)
            truth = case.scored(self.task)
            spacing = case.grid.spacing_zyx
            if post_process:
                raw_stats.append(mask_stats(classes == foreground_channel(self.task), truth, spacing))
                drop_tumour_outside_liver(classes)
            prediction = classes == foreground_channel(self.task)
            if truth.any():
                has_tumour = True
            else:
                free_ml += float(prediction.sum()) * case.grid.voxel_volume_ml
            stats.append(mask_stats(prediction, truth, spacing))
            rows.append(metrics_from_stats(stats[-1]))
            report = lesion_detection(prediction, truth, spacing).summary()
            small_total += report["lesions_<10mm"]
            small_found += round((report["recall_<10mm"] or 0) * report["lesions_<10mm"])
        self.model.train()
        means = mean_metrics(rows)
        # Without any tumour to find, Dice is no score to pick weights by (every epoch ties): the false
        # positives are reported, and the run keeps its last weights. ``dg`` is scored as the card will
        # segment (post-processed), so the best epoch is chosen by what users get; ``dg_raw`` shows the
        # false tumour outside the liver that post-processing removes (it fell while ``dg`` rose when
        # continuing the demo model: docs/results/demo-model.md).
        return {
            "dc": means["dc"],
            "dg": dice_global(stats) if has_tumour else None,
            **({"dg_raw": dice_global(raw_stats) if has_tumour else None} if post_process else {}),
            "false_positive_ml_tumour_free": free_ml,
            "voe": means["voe"],
            "rvd": means["rvd"],
            "assd": means["assd"],
            "msd": means["msd"],
            "rmsd": means["rmsd"],
            "small_recall": small_found / small_total if small_total else None,
        }

    def _write_log(self, history: list[dict]) -> None:
        columns = list(dict.fromkeys(key for row in history for key in row))
        with atomic_path(self.log_path) as temporary, open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(history)

    def final_weights(self) -> dict[str, torch.Tensor]:
        """The weights the model ships: the average of the last ``average_epochs`` epochs, else the best
        validated ones (the last ones when there was no validation)."""
        count, total = self.config.average_epochs, self.config.total_epochs
        if count:
            return average_weights([self.epoch_path(epoch) for epoch in range(total - count + 1, total + 1)])
        return checkpoint_weights(self.best_path if self.best_path.exists() else self.last_path)


def plot_history(history: list[dict], folder: Path, title: str) -> list[Path]:
    """Loss and validation Dice per epoch, stages shaded: ``loss.png`` and ``dice.png``."""
    plt = pyplot()

    written = []
    for key, label in (("loss", "training loss (weighted Dice)"), ("dg", "validation Dice global")):
        values = [row.get(key) for row in history]
        if all(v is None for v in values):
            continue
        figure, axis = plt.subplots(figsize=(6, 3.5))
        epochs = np.arange(1, len(history) + 1)
        axis.plot(epochs, [np.nan if v is None else v for v in values], marker="o")
        for stage in sorted({row["stage"] for row in history}):
            inside = [e for e, row in zip(epochs, history) if row["stage"] == stage]
            axis.axvspan(min(inside) - 0.5, max(inside) + 0.5, alpha=0.08 * stage, color="tab:blue")
            kind = next(row["kind"] for row in history if row["stage"] == stage)
            axis.text(
                (min(inside) + max(inside)) / 2,
                axis.get_ylim()[1],
                f"stage {stage}: {kind}",
                ha="center",
                va="top",
                fontsize=8,
            )
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.set_title(title)
        figure.tight_layout()
        path = folder / f"{'loss' if key == 'loss' else 'dice'}.png"
        save_figure(figure, path)
        written.append(path)
    return written


def _liver_crop(case: PreparedCase, margin_mm: float) -> PreparedCase:
    """The case cropped to its true liver's box plus a margin: the cascade tumour network's input."""
    window = mask_box(case.label >= 1, case.grid.spacing_zyx, margin_mm)
    start, stop = tuple(w.start for w in window), tuple(w.stop for w in window)
    shares = None if case.shares is None else case.shares[(slice(None), *window)]
    return PreparedCase(case.name, case.image[window], case.label[window], case.grid.crop(start, stop), shares)


#: Settings that may change between a run and its resumption (where it runs, not what it learns).
_RESUMABLE_SETTINGS = ("device", "workers", "keep_epochs")


#: Each setting's default, as a run's record holds settings (JSON, the resumable ones left out).
_SETTINGS_DEFAULTS = json.loads(
    json.dumps({k: v for k, v in TrainConfig().to_json().items() if k not in _RESUMABLE_SETTINGS})
)


def _with_defaults(settings: dict, defaults: dict) -> dict:
    """``settings`` with every key of ``defaults`` it lacks, nested groups (augmentation) key by key."""
    merged = {**defaults, **settings}
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            merged[key] = _with_defaults(settings[key], value)
    return merged


def run_fingerprint(train: Sequence[Case], validation: Sequence[Case], config: TrainConfig, parent: str | None) -> dict:
    """What a checkpoint was made from: settings, parent model, and each case's files (path, size,
    modification time). A resume must match it exactly."""

    def files(cases: Sequence[Case]) -> list[list]:
        rows = []
        for case in cases:
            for path in (Path(case.image), Path(case.label)):
                stat = path.stat()
                rows.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        return rows

    settings = {k: v for k, v in config.to_json().items() if k not in _RESUMABLE_SETTINGS}
    return {"settings": settings, "parent": parent, "train": files(train), "validation": files(validation)}


def claim_work_dir(work: Path, fingerprint: dict, restart: bool) -> None:
    """Make ``work`` this run's folder: a new one records the fingerprint; one with checkpoints of another
    run (other data, settings, seed or parent) is refused, or emptied with ``restart``."""
    fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from run.json
    record = work / "run.json"
    for stale in work.glob(".*.safetensors") if work.is_dir() else []:
        stale.unlink()  # a checkpoint half-written when a run was killed (atomic_path's temporary)
    checkpoints = list(work.glob("*.safetensors")) if work.is_dir() else []
    if checkpoints and not restart:
        previous = json.loads(record.read_text()) if record.is_file() else None
        if previous is not None:  # a setting added since the run began is its default there
            previous["settings"] = _with_defaults(previous.get("settings", {}), _SETTINGS_DEFAULTS)
        if previous != fingerprint:
            what = "an unrecorded run" if previous is None else _difference(previous, fingerprint)
            raise LiverTumorError(
                f"the work folder {work} holds checkpoints of another run ({what}); resuming would mix them. "
                "Pass --restart to discard them, or choose another --out / --work-dir"
            )
    if restart:
        for path in checkpoints + list(work.glob("*-log.csv")):
            path.unlink()
    work.mkdir(parents=True, exist_ok=True)
    with atomic_path(record) as temporary:
        temporary.write_text(json.dumps(fingerprint, indent=1))


def _difference(previous: dict, now: dict) -> str:
    """What differs between two recorded run fingerprints, in words."""
    if previous.get("train") != now["train"] or previous.get("validation") != now["validation"]:
        return "other data"
    if previous.get("parent") != now["parent"]:
        return "another parent model"
    changed = sorted(k for k in now["settings"] if previous.get("settings", {}).get(k) != now["settings"][k])
    return "other settings: " + ", ".join(changed) if changed else "other settings"


def train_model(
    train: Sequence[Case],
    validation: Sequence[Case],
    config: TrainConfig,
    out: str | os.PathLike,
    name: str = "curriculum",
    version: str = "1",
    work_dir: str | os.PathLike | None = None,
    initial: dict[str, dict[str, torch.Tensor]] | None = None,
    parent: str | None = None,
    on_event: Event | None = None,
    restart: bool = False,
    validation_note: str | None = None,
) -> TrainResult:
    """Prepare the cases, train every network of the schema, save the model folder ``out``.

    ``work_dir`` holds checkpoints and logs (default ``out`` + ``.work``); running the same run again
    (same data, settings, seed and parent) resumes; another run's checkpoints there are refused unless
    ``restart`` discards them. ``initial`` maps network roles to starting weights (fine-tuning).
    ``validation_note`` says in the card what the validation measured (e.g. a held-out part of a case).
    """
    out = Path(out)
    if config.schema == "cascade" and config.architecture.classes != 2:
        raise ValueError("the cascade's liver and tumour networks have 2 classes each")
    config.stage_plan()  # a plan that does not add up is refused before any case is prepared
    if out.exists():
        from .models import ModelExistsError

        raise ModelExistsError(f"{out} exists; models are never overwritten: choose a new --out")
    work = Path(work_dir) if work_dir else out.with_name(out.name + ".work")
    if int(os.environ.get("RANK", "0")) == 0:
        claim_work_dir(work, run_fingerprint(train, validation, config, parent), restart)
    emit = on_event or (lambda event: None)
    emit({"event": "preparing", "cases": len(train) + len(validation)})
    train_prepared = [prepare_case(case, config.preprocess, config.soft_labels) for case in train]
    validation_prepared = [prepare_case(case, config.preprocess) for case in validation]
    require_tumour(train_prepared)
    roles: list[tuple[str, Task]] = (
        [("liver", "liver"), ("tumour", "tumour")]
        if config.schema == "cascade"
        else [("tumour", task_for(config.architecture.classes))]
    )
    histories, weights, validation_metrics, before, distributed = {}, {}, {}, {}, _Distributed()
    for role, task in roles:
        cases_train, cases_validation = train_prepared, validation_prepared
        if config.schema == "cascade" and role == "tumour":
            cases_train = [_liver_crop(c, config.liver_margin_mm) for c in train_prepared]
            cases_validation = [_liver_crop(c, config.liver_margin_mm) for c in validation_prepared]
        trainer = Trainer(
            config,
            cases_train,
            cases_validation,
            work,
            task,
            (initial or {}).get(role),
            on_event,
        )
        distributed = trainer.distributed
        histories[role] = trainer.run()
        before[role] = trainer.before
        weights[role] = trainer.final_weights()
        if config.average_epochs:
            average = ResUNet3d(config.architecture).to(trainer.device)
            average.load_state_dict(weights[role])
            validation_metrics[role] = trainer.validate(average) if distributed.main else {}
        else:
            scored = [row for row in histories[role] if row.get("dg") is not None]
            validated = [row for row in histories[role] if "dc" in row]
            validation_metrics[role] = (
                max(scored, key=lambda row: row["dg"]) if scored else (validated[-1] if validated else {})
            )
    if not distributed.main:
        return TrainResult(None, histories.get("tumour", []), validation_metrics.get("tumour", {}))
    networks = {}
    for role, state in weights.items():
        network = ResUNet3d(config.architecture)
        network.load_state_dict(state)
        networks[role] = network
    card = ModelCard(
        name=name,
        version=version,
        architecture=config.architecture,
        preprocess=config.preprocess,
        schema=config.schema,
        stages=[
            {"kind": k, "epochs": e, "learning_rate": lr, "schedule": config.lr_schedule}
            for k, e, lr in config.stage_plan()
        ],
        liver_margin_mm=config.liver_margin_mm,
        tumour_in_liver=config.tumour_in_liver and config.architecture.classes == 3,
        training_data={
            "train_cases": [c.name for c in train],
            "validation_cases": [c.name for c in validation],
            "tumour_patch_size": list(
                tumour_patch_size(train_prepared, config.architecture.divisor, config.preprocess.block)
            ),
            "settings": config.to_json(),
            **({"validation_note": validation_note} if validation_note else {}),
        },
        validation=validation_metrics.get("tumour", {}),
        validation_before=before.get("tumour", {}),
        parent=parent,
    )
    # plots first: a run killed right after the model appears leaves nothing to redo
    for role, history in histories.items():
        plot_history(history, work, f"{name} {version}: {role} network ({config.schema})")
    save_model(out, networks, card)
    emit({"event": "saved", "model": str(out), "validation": card.validation})
    return TrainResult(out, histories.get("tumour", []), card.validation, card.validation_before)


def split_cases(cases: Sequence[Case], validation_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """A seeded split by case (patient); at least one validation case when there are three or more."""
    order = np.random.default_rng(seed).permutation(len(cases))
    count = round(len(cases) * validation_fraction)
    if validation_fraction > 0 and len(cases) >= 3:
        count = max(count, 1)
    validation = sorted(order[:count].tolist())
    return [c for i, c in enumerate(cases) if i not in validation], [cases[i] for i in validation]


def config_with(config: TrainConfig, **changes) -> TrainConfig:
    """A copy of ``config`` with ``changes`` (None values ignored)."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
