"""Training-step speed of the 3D residual U-Net on this machine: step time, samples/s and achieved GFLOP/s.

    python benchmarks/training.py [--steps 12] [--warmup 3] [--device cpu] [--variants NAME ...]
        [--markdown docs/results/training.md]

One step = forward, the training loss, backward and an Adam step, on random blocks with a tumour in
them (the work does not depend on the values). The FLOP count of a step is measured with PyTorch's FLOP
counter on the same network and input (forward + backward; the optimiser's few FLOPs are left out), so
``achieved GFLOP/s`` = counted FLOPs / step time. Networks and blocks:

* demo: the shipped demo network (widths 4-64, 3 classes) on its 32x64x64 blocks at 2.5 mm;
* paper: the paper's network (widths 8-128, 2 classes) on 32x128x128 blocks (the paper's 64x256x256
  needs ~30 GB and minutes per step on 2 CPU cores; on a GPU use ``--paper-block 64 256 256``).

Variants (each measured on the same network and blocks):

* ``reference``: the step before this benchmark existed: oneDNN forward convolutions, PyTorch's own
  backward (which takes its im2col path for batch-1 convolutions on the CPU);
* ``library``: the step as :class:`livertumor.training.Trainer` runs it now (oneDNN backward too, see
  ``livertumor.networks._BatchOneConv3d``);
* ``compiled``: the step under ``torch.compile`` (inductor, which picks its own convolution kernels),
  compile time reported separately;
* ``compiled-graphs``: the same with ``mode="reduce-overhead"``: on a GPU the step replays as CUDA graphs,
  which removes the launch cost of the many small kernels of a small network (the same as ``compiled``
  on the CPU).

``--batches`` times each network at several batch sizes (a GPU running the demo network is bound by
kernel launches, so a bigger batch costs little more per step).
On a GPU every variant runs under bf16 autocast unless ``--precision fp32`` (the precision
:class:`livertumor.training.Trainer` trains in).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
import types
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from livertumor.losses import weighted_dice_loss
from livertumor.networks import Conv3d, ResUNet3d, ResUNetConfig

NETWORKS = {
    "demo": (ResUNetConfig(classes=3, widths=(4, 8, 16, 32, 64)), (32, 64, 64), 1),
    "paper": (ResUNetConfig(classes=2), (32, 128, 128), 1),
}


def plain_convolutions(network: torch.nn.Module) -> torch.nn.Module:
    """The network with PyTorch's own convolution calls, which the FLOP counter and torch.compile see
    (the library calls oneDNN directly)."""
    for module in network.modules():
        if isinstance(module, Conv3d):
            module.forward = types.MethodType(torch.nn.Conv3d.forward, module)
    return network


def step_flops(config: ResUNetConfig, block: tuple[int, ...], batch: int) -> float:
    """FLOPs of a forward and backward, counted on meta tensors: no arithmetic, no memory."""
    with torch.device("meta"):
        network = plain_convolutions(ResUNet3d(config))
        image = torch.rand(batch, 1, *block)
        target = torch.randint(0, config.classes, (batch, *block))
        with FlopCounterMode(display=False) as counter:
            weighted_dice_loss(network(image), target).backward()
    return float(counter.get_total_flops())


def time_steps(
    config: ResUNetConfig,
    block,
    batch: int,
    variant: str,
    device: torch.device,
    steps: int,
    warmup: int,
    precision: str = "bf16",
    before_timing: Callable[[], object] | None = None,
) -> tuple[float, float]:
    """Median seconds per step, and seconds spent before the first step (compilation). ``before_timing``
    is called between the warm-up and the timed steps (e.g. a barrier of processes timed together)."""
    torch.manual_seed(0)
    network = ResUNet3d(config).to(device)
    if variant.startswith("compiled"):
        plain_convolutions(network)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    image = torch.rand(batch, 1, *block, device=device)
    target = torch.randint(0, config.classes, (batch, *block), device=device)
    Conv3d.batch_one_backward = variant != "reference"
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda" and precision == "bf16")

    def step() -> None:
        with autocast:
            loss = weighted_dice_loss(network(image), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    modes = {"compiled": "default", "compiled-graphs": "reduce-overhead"}
    run = torch.compile(step, mode=modes[variant]) if variant in modes else step
    started = time.perf_counter()
    run()
    _sync(device)
    first = time.perf_counter() - started
    for _ in range(warmup):
        run()
    _sync(device)
    if before_timing:
        before_timing()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - started)
    Conv3d.batch_one_backward = True
    return statistics.median(times), first


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+", default=["reference", "library", "compiled"])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS))
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default: each network's own)")
    parser.add_argument("--paper-block", type=int, nargs=3)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="on a GPU (the CPU: fp32)")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    device = torch.device(args.device)
    lines = [
        f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}"
        + (f", {args.precision}" if device.type == "cuda" else ""),
        "",
        "| network | block x batch | variant | step (s) | samples/s | GFLOP per step | achieved GFLOP/s "
        "| speed-up | first step (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.networks:
        config, block, own_batch = NETWORKS[name]
        if name == "paper" and args.paper_block:
            block = tuple(args.paper_block)
        baseline = None
        for batch, variant in itertools.product(args.batches or [own_batch], args.variants):
            flops = step_flops(config, block, batch)
            baseline = None if variant == args.variants[0] else baseline  # speed-up within one batch size
            seconds, first = time_steps(config, block, batch, variant, device, args.steps, args.warmup, args.precision)
            baseline = baseline or seconds
            lines.append(
                f"| {name} | {'x'.join(map(str, block))} x {batch} | {variant} | {seconds:.3f} | {batch / seconds:.2f} "
                f"| {flops / 1e9:.1f} | {flops / 1e9 / seconds:.1f} | {baseline / seconds:.2f}x | {first:.1f} |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        command = "python benchmarks/training.py " + " ".join(sys.argv[1:])
        with open(args.markdown, "w") as handle:
            handle.write(f"# Training speed\n\nCommand: `{command}`\n\n{text}\n")


if __name__ == "__main__":
    main()
