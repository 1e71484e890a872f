"""Post-training int8 quantisation of a model's OpenVINO graph, or OpenVINO's bf16, checked against fp32
(issue 16, item 2):

    python benchmarks/int8.py [--model demo-curriculum] [--calibration 10] [--cases 10] [--seed 900] [--mixed]
        [--accuracy-control 8] [--bf16]

Calibration: every non-overlapping window of ``--calibration`` phantoms (seeds 700+, unseen by training
and by the check), preprocessed as ``segment`` does. NNCF's default post-training quantisation
(``pip install nncf``) turns the cached fp32 graph into an int8 one. Check, on ``--cases`` other phantoms
(seeds from ``--seed``, as ``demo_targets.py``): tumour and liver labels of int8 against fp32 (Dice, with
the card's tumour-in-liver post-processing), whether every true lesion is found by both or by neither, and
the sliding window's time. The gate of the issue: Dice ≥ 0.99 and identical detections.

``--accuracy-control N`` uses NNCF's ``quantize_with_accuracy_control`` instead: it measures the quantised
graph on N more phantoms (seeds 800+, unseen by training, calibration and the check) and puts back into
fp32 the layers whose quantisation moves the tumour most, until the lowest tumour Dice against fp32 on
those phantoms is within 0.01 of 1 (the gate's own threshold, on other phantoms).

``--bf16`` checks OpenVINO's bf16 (``segment --precision bf16``, CPUs with native bf16 only) by the same
gate instead: no calibration, the fp32 graph run at bf16.
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
from livertumor.preprocess import extract_block, mask_box, prepare_ct, resample_label, sub_image_starts

GATE_DICE = 0.99


def labels_of(
    forward, image: np.ndarray, block, divisor: int, tumour_in_liver: bool, overlap: float = 0.5
) -> np.ndarray:
    labels = sliding_window(forward, image, block, divisor, overlap=overlap).argmax(0).astype(np.uint8)
    if tumour_in_liver:
        drop_tumour_outside_liver(labels)
    return labels


def quantise_with_accuracy_control(nncf, graph, windows: list, cases: int, card, fp32, options: dict):
    """NNCF's accuracy-controlled quantisation. Its metric: the lowest tumour Dice against fp32's labels
    over ``cases`` phantoms, each cropped to fp32's liver and 20 mm around it (where the tumours are) and
    run at overlap 0.25, which keeps each of NNCF's validation passes (one per quantised operation, to
    rank them) to seconds."""
    import openvino
    import torch

    block, divisor = tuple(card.preprocess.block), card.architecture.divisor
    crops, reference = [], []
    for phantom in unseen_phantoms(800, cases):
        prepared = prepare_ct(phantom.ct, card.preprocess)
        labels = labels_of(fp32, prepared.array, block, divisor, card.tumour_in_liver, 0.25)
        crop = prepared.array[mask_box(labels >= 1, prepared.grid.spacing_zyx, 20.0)]
        crops.append(crop)
        # fp32 again on the crop: its windows, and so their instance norm, differ from the whole volume's
        reference.append(labels_of(fp32, crop, block, divisor, card.tumour_in_liver, 0.25) == 2)

    def validate(compiled: openvino.CompiledModel, items) -> tuple[float, list[float]]:
        def forward(batch: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(compiled(batch.numpy())[0])

        scores = [
            dice(labels_of(forward, crops[index], block, divisor, card.tumour_in_liver, 0.25) == 2, reference[index])
            for index in items
        ]
        return min(scores), scores

    return nncf.quantize_with_accuracy_control(
        graph,
        nncf.Dataset(windows),
        nncf.Dataset(list(range(cases))),
        validate,
        max_drop=1.0 - GATE_DICE,
        subset_size=len(windows),
        **options,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-curriculum")
    parser.add_argument("--calibration", type=int, default=10)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--seed", type=int, default=900)
    parser.add_argument(
        "--mixed", action="store_true", help="NNCF's mixed preset (asymmetric activations) and full bias correction"
    )
    parser.add_argument(
        "--accuracy-control",
        type=int,
        metavar="N",
        help="keep in fp32 what moves the tumour on N phantoms (seeds 800+) by more than Dice 0.01",
    )
    parser.add_argument("--bf16", action="store_true", help="check OpenVINO's bf16 instead of quantising")
    args = parser.parse_args()
    loaded = load_model(args.model)
    card, network = loaded.card, loaded.networks["tumour"]
    block, divisor = tuple(card.preprocess.block), card.architecture.divisor
    fp32 = GraphForward(network, "openvino", card.weights["tumour"]["sha256"])
    if args.bf16:
        name = "bf16"
        candidate = GraphForward(network, "openvino", card.weights["tumour"]["sha256"], precision="bf16")
    else:
        name = "int8"
        candidate = quantise(args, network, card, fp32)
    rows, seconds = [], {"fp32": 0.0, name: 0.0}
    for phantom in unseen_phantoms(args.seed, args.cases):
        image = prepare_ct(phantom.ct, card.preprocess)
        result = {}
        for precision, forward in (("fp32", fp32), (name, candidate)):
            started = time.perf_counter()
            result[precision] = labels_of(forward, image.array, block, divisor, card.tumour_in_liver)
            seconds[precision] += time.perf_counter() - started
        # detections against the truth, on the network's grid (labels resampled there by nearest neighbour)
        truth_here = resample_label(phantom.label, image.grid, keep_components=False).array == 2
        found = {
            precision: [
                m.matched is not None for m in lesion_detection(labels == 2, truth_here, image.grid.spacing_zyx).truth
            ]
            for precision, labels in result.items()
        }
        rows.append(
            (
                dice(result[name] == 2, result["fp32"] == 2),
                dice(result[name] >= 1, result["fp32"] >= 1),
                found[name] == found["fp32"],
                int((result["fp32"] == 2).sum()),
                int((result[name] == 2).sum()),
                int(((result["fp32"] == 2) & (result[name] == 2)).sum()),
            )
        )
    tumour = [r[0] for r in rows]
    worst = rows[int(np.argmin(tumour))]
    print("\n| check | value |\n|---|---|")
    print(
        f"| tumour Dice {name} vs fp32, min / mean ({len(rows)} phantoms) | {min(tumour):.4f} / {np.mean(tumour):.4f} |"
    )
    print(f"| worst phantom's tumour voxels, fp32 / {name} | {worst[3]} / {worst[4]} |")
    print(f"| phantoms at tumour Dice ≥ {GATE_DICE} | {sum(d >= GATE_DICE for d in tumour)} of {len(rows)} |")
    fp32_voxels, candidate_voxels = sum(r[3] for r in rows), sum(r[4] for r in rows)
    pooled = 2 * sum(r[5] for r in rows) / max(fp32_voxels + candidate_voxels, 1)
    print(f"| tumour voxels in all, fp32 / {name}; their Dice | {fp32_voxels} / {candidate_voxels}; {pooled:.4f} |")
    print(f"| liver Dice {name} vs fp32, min | {min(r[1] for r in rows):.4f} |")
    print(f"| lesion detections identical | {sum(r[2] for r in rows)} of {len(rows)} phantoms |")
    print(f"| sliding window, fp32 / {name} s (all phantoms) | {seconds['fp32']:.1f} / {seconds[name]:.1f} |")
    passed = min(tumour) >= GATE_DICE and all(r[2] for r in rows)
    print(f"| gate (Dice ≥ {GATE_DICE}, detections identical) | {'passed' if passed else 'failed'} |")


def quantise(args: argparse.Namespace, network, card, fp32: GraphForward):
    """The int8 graph of ``network`` (NNCF), calibrated on ``args.calibration`` phantoms; a forward."""
    import nncf
    import openvino
    import torch

    block = tuple(card.preprocess.block)
    windows = []
    for phantom in unseen_phantoms(700, args.calibration):
        image = prepare_ct(phantom.ct, card.preprocess).array
        windows += [
            extract_block(image, start, block)[None, None] for start in sub_image_starts(image.shape, block, block)
        ]
    started = time.perf_counter()
    graph = openvino.Core().read_model(str(fp32.entry() / "model.xml"))
    options = {"preset": nncf.QuantizationPreset.MIXED, "fast_bias_correction": False} if args.mixed else {}
    if args.accuracy_control:
        quantised = quantise_with_accuracy_control(nncf, graph, windows, args.accuracy_control, card, fp32, options)
    else:
        quantised = nncf.quantize(graph, nncf.Dataset(windows), subset_size=len(windows), **options)
    compiled = openvino.Core().compile_model(quantised, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    print(
        f"calibration: {len(windows)} windows of {args.calibration} phantoms; quantised in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )

    def int8(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(compiled(batch.numpy())[0])

    return int8


if __name__ == "__main__":
    main()
