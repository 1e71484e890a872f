"""Late epochs' weights averaged into one model: a checkpoint choice that does not ride on one epoch's draw.

    python benchmarks/average_checkpoints.py --model MODEL --out FOLDER [--validation DATA] CHECKPOINT ...

Each CHECKPOINT is a training checkpoint (``*-last.safetensors`` or an epoch's kept one,
``TASK-epoch-NNN.safetensors``); their weights are averaged with equal shares (``training.average_weights``)
and saved as a new model folder with MODEL's card, its notes naming the
checkpoints. MODEL's validation figures describe other weights: with ``--validation`` (the run's validation
cases) the average is scored as training validates and the card holds its own figures, else the card holds
none. Score it as any model: ``demo_targets.py``, ``real_scan_curve.py --model FOLDER model``.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from livertumor.data import prepare_case, task_for
from livertumor.datasets import find_cases
from livertumor.models import load_model, save_model
from livertumor.networks import ResUNet3d
from livertumor.training import TrainConfig, Trainer, average_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the model whose card the checkpoints share")
    parser.add_argument("--out", type=Path, required=True, help="new model folder (must not exist)")
    parser.add_argument("--validation", type=Path, help="the run's validation cases, to score the average on")
    parser.add_argument("checkpoints", nargs="+", type=Path)
    args = parser.parse_args()
    model = load_model(args.model)
    network = ResUNet3d(model.card.architecture)
    network.load_state_dict(average_weights(args.checkpoints))
    names = ", ".join(path.name for path in args.checkpoints)
    validation = {}
    if args.validation:
        config = TrainConfig.from_json(model.card.training_data["settings"])
        cases = [prepare_case(case, model.card.preprocess) for case in find_cases(args.validation)]
        with tempfile.TemporaryDirectory() as work:  # validation only: the trainer writes nothing there
            task = task_for(model.card.architecture.classes)
            trainer = Trainer(config, cases, cases, Path(work), task=task, initial_weights=network.state_dict())
            validation = trainer.validate()
        print("validation of the average:", {key: round(value, 4) for key, value in validation.items()})
    notes = f"{model.card.notes} Weights: the average of {names}.".strip()
    card = replace(model.card, notes=notes, validation=validation)
    print(save_model(args.out, {"tumour": network}, card))


if __name__ == "__main__":
    main()
