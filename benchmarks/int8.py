"""Post-training int8 quantisation of a model's OpenVINO graph, checked against fp32 (issue 16, item 2):

    python benchmarks/int8.py [--model demo-curriculum] [--calibration 10] [--cases 10] [--seed 900] [--mixed]

Calibration: every non-overlapping window of ``--calibration`` phantoms (seeds 700+, unseen by training
and by the check), preprocessed as ``segment`` does. NNCF's default post-training quantisation
(``pip install nncf``) turns the cached fp32 graph into an int8 one. Check, on ``--cases`` other phantoms
(seeds from ``--seed``, as ``demo_targets.py``): tumour and liver labels of int8 against fp32 (Dice, with
the card's tumour-in-liver post-processing), whether every true lesion is found by both or by neither, and
the sliding window's time. The gate of the issue: Dice ≥ 0.99 and identical detections.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from demo_targets import unseen_phantoms  # the benchmarks folder is the script's path
from inference import dice  # 1 when both masks are empty: two runs that agree on "nothing here"

from livertumor.backends import GraphForward
from livertumor.inference import drop_tumour_outside_liver, sliding_window
from livertumor.metrics import lesion_detection
from livertumor.models import load_model
from livertumor.preprocess import extract_block, prepare_ct, resample_label, sub_image_starts

GATE_DICE = 0.99


def labels_of(forward, image: np.ndarray, block, divisor: int, tumour_in_liver: bool) -> np.ndarray:
    labels = sliding_window(forward, image, block, divisor, overlap=0.5).argmax(0).astype(np.uint8)
    if tumour_in_liver:
        drop_tumour_outside_liver(labels)
    return labels


def main() -> None:
    import nncf
    import openvino
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-curriculum")
    parser.add_argument("--calibration", type=int, default=10)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--seed", type=int, default=900)
    parser.add_argument(
        "--mixed", action="store_true", help="NNCF's mixed preset (asymmetric activations) and full bias correction"
    )
    args = parser.parse_args()
    loaded = load_model(args.model)
    card, network = loaded.card, loaded.networks["tumour"]
    block, divisor = tuple(card.preprocess.block), card.architecture.divisor
    fp32 = GraphForward(network, "openvino", card.weights["tumour"]["sha256"])
    windows = []
    for phantom in unseen_phantoms(700, args.calibration):
        image = prepare_ct(phantom.ct, card.preprocess).array
        windows += [
            extract_block(image, start, block)[None, None] for start in sub_image_starts(image.shape, block, block)
        ]
    started = time.perf_counter()
    graph = openvino.Core().read_model(str(fp32.entry() / "model.xml"))
    options = {"preset": nncf.QuantizationPreset.MIXED, "fast_bias_correction": False} if args.mixed else {}
    quantised = nncf.quantize(graph, nncf.Dataset(windows), subset_size=len(windows), **options)
    compiled = openvino.Core().compile_model(quantised, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    print(
        f"calibration: {len(windows)} windows of {args.calibration} phantoms; quantised in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )

    def int8(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(compiled(batch.numpy())[0])

    rows, seconds = [], {"fp32": 0.0, "int8": 0.0}
    for phantom in unseen_phantoms(args.seed, args.cases):
        image = prepare_ct(phantom.ct, card.preprocess)
        result = {}
        for name, forward in (("fp32", fp32), ("int8", int8)):
            started = time.perf_counter()
            result[name] = labels_of(forward, image.array, block, divisor, card.tumour_in_liver)
            seconds[name] += time.perf_counter() - started
        # detections against the truth, on the network's grid (labels resampled there by nearest neighbour)
        truth_here = resample_label(phantom.label, image.grid, keep_components=False).array == 2
        found = {
            name: [
                m.matched is not None for m in lesion_detection(labels == 2, truth_here, image.grid.spacing_zyx).truth
            ]
            for name, labels in result.items()
        }
        rows.append(
            (
                dice(result["int8"] == 2, result["fp32"] == 2),
                dice(result["int8"] >= 1, result["fp32"] >= 1),
                found["int8"] == found["fp32"],
            )
        )
    tumour = [r[0] for r in rows]
    print("\n| check | value |\n|---|---|")
    print(
        f"| tumour Dice int8 vs fp32, min / mean ({len(rows)} phantoms) | {min(tumour):.4f} / {np.mean(tumour):.4f} |"
    )
    print(f"| liver Dice int8 vs fp32, min | {min(r[1] for r in rows):.4f} |")
    print(f"| lesion detections identical | {sum(r[2] for r in rows)} of {len(rows)} phantoms |")
    print(f"| sliding window, fp32 / int8 s (all phantoms) | {seconds['fp32']:.1f} / {seconds['int8']:.1f} |")
    passed = min(tumour) >= GATE_DICE and all(r[2] for r in rows)
    print(f"| gate (Dice ≥ {GATE_DICE}, detections identical) | {'passed' if passed else 'failed'} |")


if __name__ == "__main__":
    main()
