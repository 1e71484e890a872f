"""Inference speed and memory: every installed backend against PyTorch, one forward and `segment` end to
end, with the machine's measured limit beside them.

    python benchmarks/inference.py [--device cpu] [--repeats 3] [--overlap 0.25] [--backends torch openvino ...]

1. The machine's fp32 limit on these cores: a 4096x4096 matmul and a large 3D convolution
   (32 -> 32 channels, 3x3x3, 64x128x128), GFLOP/s.
2. One 1x1x64x256x256 forward of the paper's 3D residual U-Net (widths 8-128; FLOPs counted by PyTorch's
   FLOP counter, ~221 G) per variant: the library's PyTorch path (oneDNN channels-last, own norm), PyTorch
   with standard ops only, and each installed compiled backend (``livertumor.backends``; build time
   apart). Median seconds, achieved GFLOP/s, ratio to the library's path and to the machine's limit.
3. ``livertumor segment`` end to end on a 512x512x120 phantom CT at 0.75x0.75x1.6 mm (a NIfTI file in,
   the label file out) with that network (random weights: speed does not depend on them), per backend,
   each in its own process: seconds, the process's peak resident memory, agreement of its tumour labels
   with PyTorch's (Dice); and ``restore_to_grid`` of a label map alone, by nearest neighbour and by the
   interpolated class probabilities (what ``segment`` does).
4. Where bf16 is asked for (``--precision bf16``: PyTorch's autocast, and OpenVINO on CPUs with native
   bf16; ONNX Runtime is then left out): PyTorch's bf16 labels' agreement with its fp32 ones.
5. Where MONAI is installed (``pip install -e ".[bench]"``): its ``sliding_window_inference`` on the same
   network, volume and overlap.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.flop_counter import FlopCounterMode

from livertumor import backends
from livertumor.backends import GraphForward
from livertumor.inference import autocast_context, resolve_device, segment, sliding_window, window_plan
from livertumor.io import read_label, write_volume
from livertumor.memory import keep_freed_memory
from livertumor.models import ModelCard, save_model
from livertumor.networks import ResUNet3d, ResUNetConfig, standard_ops
from livertumor.phantom import make_phantom
from livertumor.preprocess import PreprocessConfig, prepare_ct, restore_to_grid


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_seconds(run, repeats: int) -> float:
    """Median wall time of ``run()`` after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


#: Runs the ``livertumor`` command and prints the peak memory of its own process image at exit. VmHWM, not
#: ``ru_maxrss``: Linux carries the peak of the process that forked the command (this benchmark, holding a
#: network and a CT) over into the command's ``ru_maxrss``, which inflated this table's memory column
#: until 2026-11-30.
PEAK_PROBE = """
import atexit, runpy, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print("peak-kB", line.split()[1], file=sys.stderr)
atexit.register(peak)
sys.argv = ["livertumor", *sys.argv[1:]]
runpy.run_module("livertumor", run_name="__main__")
"""


def run_command(arguments: list) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MB) of one ``livertumor`` command in its own process: file
    in, files out, as a user runs it."""
    command = [sys.executable, "-c", PEAK_PROBE, *map(str, arguments), "--progress", "none"]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"livertumor {' '.join(map(str, arguments))} failed: {done.stderr[-2000:]}")
    peaks = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("peak-kB ")]
    return seconds, int(peaks[-1]) / 1024


def machine_limit(repeats: int) -> dict[str, float]:
    """GFLOP/s of a large fp32 matmul and a large 3D convolution on this machine's cores."""
    a, b = torch.rand(4096, 4096), torch.rand(4096, 4096)
    matmul = 2 * 4096**3 / median_seconds(lambda: a @ b, repeats) / 1e9
    x = torch.rand(1, 32, 64, 128, 128).contiguous(memory_format=torch.channels_last_3d)
    w = torch.rand(32, 32, 3, 3, 3).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        seconds = median_seconds(lambda: torch.nn.functional.conv3d(x, w, padding=1), repeats)
    conv = 2 * x.numel() * 32 * 27 / seconds / 1e9
    return {"matmul 4096x4096": matmul, "conv3d 32->32, 3x3x3, 64x128x128": conv}


def forward_flops(config: ResUNetConfig, shape: tuple[int, ...]) -> float:
    """FLOPs of one forward, counted on meta tensors: no arithmetic, no memory."""
    with torch.device("meta"):
        network = ResUNet3d(config)
        with standard_ops(), torch.no_grad(), FlopCounterMode(display=False) as counter:
            network(torch.zeros(shape))
    return float(counter.get_total_flops())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum())) if (a.any() or b.any()) else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--stretches", nargs="+", type=float, default=[0.0], help="end-to-end rows per stretch")
    parser.add_argument(
        "--backends",
        nargs="+",
        default=[b for b in backends.BACKENDS[1:] if backends.installed(b)],
        help="backends to compare (default: every installed one)",
    )
    parser.add_argument("--glibc-default", action="store_true", help="leave malloc's defaults as they are")
    args = parser.parse_args()
    # As the `livertumor` command does: see livertumor/memory.py (--glibc-default measures without).
    if not args.glibc_default:
        keep_freed_memory()
    os.environ["LIVERTUMOR_HOME"] = tempfile.mkdtemp(prefix="livertumor-bench-home-")  # compiled graphs
    device = resolve_device(args.device)
    graph_backends = [b for b in args.backends if b != "torch"] if device.type == "cpu" else []
    if args.precision == "bf16":  # of the compiled backends only OpenVINO runs bf16
        graph_backends = [b for b in graph_backends if b == "openvino"]
    torch.manual_seed(0)
    network = ResUNet3d(ResUNetConfig()).to(device).eval()
    shape = (1, 1, 64, 256, 256)
    volume = torch.rand(*shape, device=device)
    flops = forward_flops(ResUNetConfig(), shape)
    limits = machine_limit(args.repeats) if device.type == "cpu" else {}
    limit = max(limits.values()) if limits else float("nan")

    def synchronized(run):
        def call():
            run()
            if device.type == "cuda":
                torch.cuda.synchronize()

        return call

    forwards: list[tuple[str, float, float]] = []  # name, median seconds, build seconds
    with torch.no_grad(), autocast_context(device, args.precision):
        forwards.append(
            ("PyTorch, library path", median_seconds(synchronized(lambda: network(volume)), args.repeats), 0.0)
        )
        if device.type == "cpu":

            def standard():
                with standard_ops():
                    network(volume)

            forwards.append(("PyTorch, standard ops", median_seconds(standard, args.repeats), 0.0))
    cache = Path(tempfile.mkdtemp(prefix="livertumor-bench-"))
    for backend in graph_backends:
        forward = GraphForward(network, backend, "benchmark", cache, lambda message: None, args.precision)
        start = time.perf_counter()
        forward(volume)  # build and first run
        build = time.perf_counter() - start
        forwards.append((backend, median_seconds(lambda forward=forward: forward(volume), args.repeats), build))

    phantom = make_phantom(5, (120, 512, 512), (1.6, 0.75, 0.75))
    ends: list[tuple[str, float, float, float, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        card = ModelCard("benchmark-random", "0", ResUNetConfig(), PreprocessConfig(), "untrained")
        model = save_model(Path(folder) / "model", {"tumour": network.cpu()}, card)
        network.to(device)
        ct_path = Path(folder) / "ct.nii.gz"
        write_volume(phantom.ct, ct_path)
        references: dict[float, np.ndarray] = {}  # PyTorch's labels per stretch
        for backend in ["torch", *graph_backends]:
            if backend != "torch":  # build the cached graph first: a user's second run, not the first
                block = torch.zeros(1, 1, *card.preprocess.block)
                GraphForward(network.cpu(), backend, card.weights["tumour"]["sha256"], report=print)(block)
            for stretch in args.stretches:
                out = Path(folder) / f"{backend}-{stretch}"
                options = ["--device", str(device), "--backend", backend, "--overlap", args.overlap]
                options += ["--stretch", stretch, "--precision", args.precision]
                runs = [
                    run_command(["segment", ct_path, "-o", out, "--model", model, *options, "--overwrite"])
                    for _ in range(args.repeats)
                ]
                seconds, memory = statistics.median(r[0] for r in runs), max(r[1] for r in runs)
                labels = read_label(out / "ct_seg.nii.gz").array == 2
                reference = references.setdefault(stretch, labels)
                ends.append((backend, stretch, seconds, memory, dice(labels, reference)))
        if args.precision != "fp32":
            first = args.stretches[0]
            fp32 = segment(phantom.ct, model=model, device=str(device), overlap=args.overlap, stretch=first)
            agreement = dice(references[first], fp32.labels.array == 2)
            print(f"{args.precision} vs fp32 label agreement (Dice): {agreement:.4f}")
    prepared = prepare_ct(phantom.ct, card.preprocess)
    on_prepared = prepared.with_array(np.zeros(prepared.shape, np.uint8))
    on_prepared.array[40:150, 60:200, 80:260] = 1
    on_prepared.array[90:100, 100:112, 120:131] = 2
    restore = median_seconds(lambda: restore_to_grid(on_prepared, phantom.ct.grid, is_label=True), args.repeats)
    # what segment maps back: the labels with each class's probability (here a blurred one-hot)
    scores = {k: ndimage.uniform_filter((on_prepared.array == k).astype(np.float32), 3) for k in range(3)}
    restore_scored = median_seconds(
        lambda: restore_to_grid(on_prepared, phantom.ct.grid, is_label=True, scores=scores), args.repeats
    )
    start = time.perf_counter()
    sliding_window(
        network,
        prepared.array,
        card.preprocess.block,
        card.architecture.divisor,
        args.overlap,
        1,
        device,
        args.precision,
    )
    ours = time.perf_counter() - start
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        monai = None
        print('MONAI not installed: no comparison (pip install -e ".[bench]" adds it)')
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(prepared.array))[None, None].to(device)
        start = time.perf_counter()
        with torch.no_grad():
            sliding_window_inference(tensor, card.preprocess.block, 1, network, overlap=args.overlap, mode="gaussian")
        monai = time.perf_counter() - start

    versions = ", ".join(f"{b} {backends.backend_version(b)}" for b in ["torch", *graph_backends])
    print(f"device: {device}, {versions}, torch threads {torch.get_num_threads()}")
    if limits:
        print("\n| machine limit (fp32) | GFLOP/s |\n|---|---|")
        for name, value in limits.items():
            print(f"| {name} | {value:.0f} |")
    print(f"\nOne forward, 1x1x64x256x256, {flops / 1e9:.0f} GFLOP ({args.precision}):\n")
    print("| variant | median s | GFLOP/s | speed vs library path | time vs machine limit | build s |")
    print("|---|---|---|---|---|---|")
    base = forwards[0][1]
    for name, seconds, build in forwards:
        print(
            f"| {name} | {seconds:.2f} | {flops / seconds / 1e9:.0f} | {base / seconds:.2f}x "
            f"| {seconds / (flops / limit / 1e9):.2f}x | {build:.1f} |"
        )
    print(f"\nsegment, 512x512x120 CT end to end (overlap {args.overlap}):\n")
    print(
        f"median of {args.repeats} runs each; peak RSS: the largest of them\n\n"
        "| backend | stretch | windows | seconds | peak RSS of the process (MB) | tumour labels vs PyTorch "
        "(Dice) |\n|---|---|---|---|---|---|"
    )
    for name, stretch, seconds, memory, agreement in ends:
        window, starts = window_plan(
            prepared.shape, card.preprocess.block, card.architecture.divisor, args.overlap, stretch
        )
        windows = f"{len(starts)} of {'x'.join(map(str, window))}"
        print(f"| {name} | {stretch:g} | {windows} | {seconds:.2f} | {memory:.0f} | {agreement:.4f} |")
    print(
        f"\nrestore_to_grid of a label map (liver box) onto the 512x512x120 grid: {restore:.2f} s by nearest "
        f"neighbour, {restore_scored:.2f} s by the interpolated class probabilities (what segment does)"
    )
    print(f"our sliding window alone on {prepared.shape} (PyTorch): {ours:.2f} s")
    if monai is not None:
        print(f"MONAI sliding_window_inference, same network, input, window and overlap: {monai:.2f} s")


if __name__ == "__main__":
    main()
