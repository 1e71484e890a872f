"""Quick-preset fine-tuning of the demo model on real-size phantoms of a lesion kind it misses:

    python benchmarks/finetune_quick.py [--model demo-curriculum] [--out /tmp/ftreal] [--preset quick]

Two 512x512x120 phantoms (0.75 x 0.75 x 1.6 mm) with native-phase hemangiomas (nearly isodense: the demo
model finds none) are the corrected cases; with two cases a slab of each is held out for validation. The
demo model and its fine-tuned version segment three other such phantoms: tumour Dice global before and
after, and the fine-tuning time, are printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from livertumor.datasets import Case, find_cases
from livertumor.finetune import PRESETS, finetune
from livertumor.inference import segment
from livertumor.io import read_label
from livertumor.memory import keep_freed_memory
from livertumor.metrics import dice_global, mask_stats
from livertumor.phantom import write_phantom_dataset

SHOWN_EVENTS = ("validation-plan", "before", "plan", "epoch", "member-saved", "saved")


def tumour_cases(folder: Path, seed: int) -> list[Case]:
    """Three native-phase hemangioma phantoms at a real CT's size (written once), those with a lesion."""
    if not folder.exists():
        write_phantom_dataset(
            folder,
            cases=3,
            seed=seed,
            shape=(120, 512, 512),
            spacing_zyx=(1.6, 0.75, 0.75),
            suffix=".nii.gz",
            phases=["native"],
            kinds=["hemangioma"],
        )
    return [c for c in find_cases(folder) if (read_label(c.label).array == 2).any()]


def tumour_dg(model: str | Path, cases: list[Case]) -> float:
    stats = []
    for case in cases:
        labels = segment(case.image, model, device="cpu").labels
        truth = read_label(case.label).array == 2
        stats.append(mask_stats(labels.array == 2, truth, labels.grid.spacing_zyx))
    return dice_global(stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-curriculum", help="name, name:version or folder")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ftreal"))
    parser.add_argument("--preset", default="quick", choices=list(PRESETS))
    args = parser.parse_args()
    keep_freed_memory()
    train, test = tumour_cases(args.out / "train", 70)[:2], tumour_cases(args.out / "test", 80)
    print(f"training on {len(train)}, testing on {len(test)} phantoms", flush=True)
    before = tumour_dg(args.model, test)
    started = time.perf_counter()
    tuned = args.out / f"tuned-{int(time.time())}"
    finetune(
        args.model,
        train,
        out=tuned,
        preset=args.preset,
        device="cpu",
        on_event=lambda event: print(json.dumps(event)) if event["event"] in SHOWN_EVENTS else None,
    )
    seconds = time.perf_counter() - started
    after = tumour_dg(tuned, test)
    print("\n| preset | fine-tuning s | test tumour DG before | after |\n|---|---|---|---|")
    print(f"| {args.preset} | {seconds:.0f} | {before:.3f} | {after:.3f} |")


if __name__ == "__main__":
    main()
