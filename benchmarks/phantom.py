"""Phantom generation time per case size, on one core.

    python benchmarks/phantom.py [--repeats 3]

Prints a Markdown table (median and best of the repeats). Threads are limited to one before numpy
loads, so the numbers are per core.
"""

from __future__ import annotations

import os

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from livertumor.phantom import make_phantom  # noqa: E402

SIZES = (
    ((64, 128, 128), (3.0, 3.0, 3.0)),
    ((128, 256, 256), (2.0, 1.5, 1.5)),
    ((120, 512, 512), (1.6, 0.75, 0.75)),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| shape (z, y, x) | spacing (mm) | median (s) | best (s) | lesions |")
    print("|---|---|---|---|---|")
    for shape, spacing in SIZES:
        times, lesions = [], 0
        for seed in range(args.repeats):
            start = time.perf_counter()
            phantom = make_phantom(seed, shape, spacing)
            times.append(time.perf_counter() - start)
            lesions += len(phantom.lesions)
        print(
            f"| {' x '.join(map(str, shape))} | {' x '.join(map(str, spacing))} | {statistics.median(times):.2f} "
            f"| {min(times):.2f} | {lesions / args.repeats:.1f} |"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory: {peak:.0f} MB")


if __name__ == "__main__":
    main()
