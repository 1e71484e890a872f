"""What an ensemble costs at inference: ``segment`` of the real CT (``example_ct``, 112 slices at 3 mm) by
one model and by ensembles of it with more members, per backend; seconds (median of ``--repeats`` after
one warm-up run, which also compiles a backend's graph) and the labels' agreement with the first model's.

    python benchmarks/ensemble_speed.py MODEL MODEL [MODEL ...] [--repeats 3] [--backends torch openvino]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from recipe_evaluate import REAL, dice  # the benchmarks folder is the script's path

from livertumor.backends import installed
from livertumor.inference import TUMOUR, segment
from livertumor.io import read_ct
from livertumor.models import combine_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--backends", nargs="+", default=["torch", "openvino", "onnxruntime"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ct = read_ct(REAL / "example_ct.nii.gz")
    print("| backend | networks | s per CT | vs one | liver Dice vs one | tumour voxels |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        runs = [(1, args.models[0])]
        runs += [(n, combine_models(args.models[:n], Path(folder) / f"e{n}")) for n in range(2, len(args.models) + 1)]
        for backend in [b for b in args.backends if installed(b)]:
            reference, single = None, None
            for count, model in runs:
                segment(ct, model=model, device="cpu", backend=backend)
                seconds = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    labels = segment(ct, model=model, device="cpu", backend=backend).labels.array
                    seconds.append(time.perf_counter() - start)
                median = statistics.median(seconds)
                reference = labels if reference is None else reference
                single = median if single is None else single
                print(
                    f"| {backend} | {count} | {median:.1f} | {median / single:.2f}x | "
                    f"{dice(labels >= 1, reference >= 1):.3f} | {int(np.sum(labels == TUMOUR))} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
