"""Inference speed and memory: one forward of the paper's network, and `segment` end to end.

    python benchmarks/inference.py [--device cpu] [--repeats 3] [--precision fp32|bf16]

1. Seconds for one 64x256x256 forward of the paper's 3D residual U-Net (widths 8-128, ~221 GFLOP).
2. End to end for a 512x512x120 phantom CT at 0.75x0.75x1.6 mm with a model of the paper's network and
   preprocessing (1 mm, 64x256x256 windows; random weights: speed does not depend on them): seconds
   and peak resident memory of the process (``ru_maxrss``).
3. Where bf16 is asked for: agreement (Dice) of its labels with fp32's.
4. Where MONAI is installed (``pip install -e ".[bench]"``): its ``sliding_window_inference`` on the same
   network, volume and overlap.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from livertumor.inference import autocast_context, resolve_device, segment, sliding_window
from livertumor.memory import keep_freed_memory
from livertumor.models import ModelCard, save_model
from livertumor.networks import ResUNet3d, ResUNetConfig
from livertumor.phantom import make_phantom
from livertumor.preprocess import PreprocessConfig, prepare_ct


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--glibc-default", action="store_true", help="leave malloc's defaults as they are")
    args = parser.parse_args()
    # As the `livertumor` command does: see livertumor/memory.py (--glibc-default measures without).
    if not args.glibc_default:
        keep_freed_memory()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    network = ResUNet3d(ResUNetConfig()).to(device).eval()
    volume = torch.rand(1, 1, 64, 256, 256, device=device)
    rows = []
    with torch.no_grad(), autocast_context(device, args.precision):
        network(volume)  # warm-up (oneDNN/cuDNN plans)
        times = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            network(volume)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    rows.append((f"forward 64x256x256 ({args.precision})", statistics.median(times), peak_mb()))

    phantom = make_phantom(5, (120, 512, 512), (1.6, 0.75, 0.75))
    with tempfile.TemporaryDirectory() as folder:
        card = ModelCard("benchmark-random", "0", ResUNetConfig(), PreprocessConfig(), "untrained")
        model = save_model(Path(folder) / "model", {"tumour": network.cpu()}, card)
        network.to(device)
        start = time.perf_counter()
        result = segment(phantom.ct, model=model, device=str(device), overlap=args.overlap, precision=args.precision)
        rows.append(
            (f"segment 512x512x120 end to end (overlap {args.overlap})", time.perf_counter() - start, peak_mb())
        )
        if args.precision != "fp32":
            reference = segment(phantom.ct, model=model, device=str(device), overlap=args.overlap, precision="fp32")
            a, b = result.labels.array == 2, reference.labels.array == 2
            dice = 2 * (a & b).sum() / max(1, a.sum() + b.sum()) if (a.any() or b.any()) else 1.0
            print(f"{args.precision} vs fp32 label agreement (Dice): {dice:.4f}")
    prepared = prepare_ct(phantom.ct, card.preprocess)
    start = time.perf_counter()
    sliding_window(network, prepared.array, card.preprocess.block, 16, args.overlap, 1, device, args.precision)
    ours = time.perf_counter() - start
    rows.append((f"our sliding window alone on {prepared.shape}", ours, peak_mb()))
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        print('MONAI not installed: no comparison (pip install -e ".[bench]" adds it)')
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(prepared.array))[None, None].to(device)
        start = time.perf_counter()
        with torch.no_grad():
            sliding_window_inference(tensor, card.preprocess.block, 1, network, overlap=args.overlap, mode="gaussian")
        rows.append(("MONAI sliding_window_inference, same input", time.perf_counter() - start, peak_mb()))
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("\n| what | seconds | peak RSS so far (MB) |\n|---|---|---|")
    for name, seconds, memory in rows:
        print(f"| {name} | {seconds:.2f} | {memory:.0f} |")


if __name__ == "__main__":
    main()
