"""Speed and memory of the LiTS metrics on a full-size CT pair, beside medpy (connectivity=2).

    python benchmarks/metrics.py [--repeats 7]

The pair: 128x512x512 uint8 label maps with six tumour blobs (radius 5-25 mm), spacing (1.5, 0.7, 0.7);
the prediction is each blob shifted by up to 2 voxels and grown by 5%. Timed: DC, VOE, RVD, ASSD, MSD,
RMSD together (``case_metrics``), and separately the lesion-wise detection. Extra memory is the peak
traced by tracemalloc (numpy and scipy allocations) during one call.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np

from livertumor.metrics import case_metrics, lesion_detection

SHAPE, SPACING = (128, 512, 512), (1.5, 0.7, 0.7)


def make_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    truth, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    for _ in range(6):
        centre, radius = rng.integers((20, 100, 100), (108, 412, 412)), rng.uniform(5, 25)
        moved = centre + rng.integers(-2, 3, 3)
        for target, c, r in ((truth, centre, radius), (pred, moved, radius * 1.05)):
            box = tuple(slice(max(0, int(ci - r / s) - 1), int(ci + r / s) + 2) for ci, s in zip(c, SPACING))
            zz, yy, xx = z[box[0]], y[:, box[1]], x[:, :, box[2]]
            inside = ((zz - c[0]) * SPACING[0]) ** 2 + ((yy - c[1]) * SPACING[1]) ** 2 + ((xx - c[2]) * SPACING[2]) ** 2
            target[box][inside <= r * r] = 2
    return pred, truth


def timed(function, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    function()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-medpy", action="store_true", help="medpy takes tens of seconds")
    args = parser.parse_args()
    pred, truth = make_pair()
    print(f"pair {SHAPE}, spacing {SPACING}, tumour voxels: truth {(truth == 2).sum()}, pred {(pred == 2).sum()}")
    rows = [
        ("livertumor case_metrics (DC + VOE + RVD + ASSD + MSD + RMSD)", lambda: case_metrics(pred, truth, SPACING, 2)),
        ("livertumor lesion_detection (components, matching)", lambda: lesion_detection(pred, truth, SPACING, 2)),
    ]
    if not args.skip_medpy:
        from medpy.metric import binary

        def medpy_all() -> None:
            p, t = pred == 2, truth == 2
            binary.dc(p, t)
            binary.assd(p, t, SPACING, 2)
            binary.hd(p, t, SPACING, 2)

        rows.append(("medpy 0.5.2 dc + assd + hd, connectivity=2", medpy_all))
    print("\n| what | median (s) | peak extra memory (MB) |\n|---|---|---|")
    for name, function in rows:
        seconds, peak = timed(function, 1 if name.startswith("medpy") else args.repeats)
        print(f"| {name} | {seconds:.3f} | {peak:.0f} |")
    reference = case_metrics(pred, truth, SPACING, 2)
    print("\nvalues: " + ", ".join(f"{k} {v:.4f}" for k, v in reference.items()))


if __name__ == "__main__":
    main()
