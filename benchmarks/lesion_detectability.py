"""How visible each test lesion is to a reference observer that knows the liver and the lesion's size, and
whether a model finds the lesions that observer can see:

    python benchmarks/lesion_detectability.py [--seed 900 --cases 30] [--model demo-curriculum] [--csv rows.csv]
    python benchmarks/lesion_detectability.py --dataset TRAINING_SET [--cases 40] --model MODEL

``--dataset`` measures the first ``--cases`` phantoms of a set ``livertumor phantom`` wrote (made again from
its manifest's seeds) instead of unseen ones: on a model's own training set, whether it learned a kind of
lesion at all, or only fails to generalise it.

The observer is a size-matched centre-surround filter, the standard model observer for a uniform lesion
of known size in a textured background: at each liver voxel, the mean HU in a ball of the lesion's
radius (at most 10 mm) minus the mean HU in the shell from one to two radii, both over the true liver
parenchyma only (the phantom's liver tissue less its outer voxel layer, and the lesions: no fat, gas,
vessel or partial-volume edge of the liver enters a mean). It is thus an observer that knows the liver,
its vessel tree and the lesion's size: generous, to ask whether the image holds a lesion at all. Its
response is turned into a z-score against the same filter over the phantom's lesion-free liver (voxels
at least 2.5 radii from every lesion), using that background's median and robust spread (1.4826 x MAD),
so scanner noise and the liver's own texture count as background.

Per lesion, the **search** figure: the observer knows the lesion's polarity (darker or brighter than the
liver, as a reader knows a cyst from a hypervascular lesion) and compares the lesion's highest z of that
sign over its voxels with the highest anywhere in its phantom's lesion-free liver. A lesion above that
is found by this observer with no false detection in the phantom; one below it cannot be found by this
observer without one. A lesion none of whose voxels has enough parenchyma around it is "not
measurable" (small lesions between vessels) and counts as missed. Without the polarity the
contrast-filled vessels of the enhanced phases would outshine every hypodense lesion.

The observer sees only mean contrast: rims, nodular enhancement or shape could make a lesion visible to
a network where this observer sees nothing, so its recall is a reference, not a ceiling. With ``--model``
each phantom is also segmented as ``livertumor.segment`` does, and the model's finds (any tumour label
inside the lesion, as ``lesion_misses.py`` counts them) are set against the observer's.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from demo_targets import unseen_phantoms  # the benchmarks folder is the script's path
from lesion_misses import lesion_rows
from scipy import ndimage, signal

from livertumor.inference import segment
from livertumor.phantom import dataset_phantoms
from livertumor.phantom.anatomy import ORGAN_MAP_TISSUES

#: Background voxels keep this many filter radii from every lesion (the filter reaches two).
BACKGROUND_RADII = 2.5
#: The filter's largest radius: a ball of 10 mm radius already averages over about 1,000 voxels, and a
#: larger one would leave a phantom with a large lesion no lesion-free liver to compare with.
MAX_RADIUS_MM = 10.0


def ball(radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """A boolean ball of ``radius_mm`` on a grid of ``spacing`` (z, y, x mm), centred in its array."""
    half = [int(np.ceil(radius_mm / s)) for s in spacing]
    axes = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((a * s / radius_mm) ** 2 for a, s in zip(axes, spacing)) <= 1.0


def centre_surround(hu: np.ndarray, organ: np.ndarray, radius_mm: float, spacing) -> tuple[np.ndarray, np.ndarray]:
    """The filter's response (ball mean minus shell mean over ``organ``) and where it is defined (a
    voxel of the organ whose ball is at least half organ and whose shell at least a quarter)."""
    inner = ball(radius_mm, spacing)
    outer = ball(2.0 * radius_mm, spacing)
    pad = [(o - i) // 2 for o, i in zip(outer.shape, inner.shape)]
    shell = outer & ~np.pad(inner, [(p, p) for p in pad])
    weighted = np.where(organ, hu, 0.0)
    means, shares = [], []
    for kernel in (inner, shell):
        kernel = kernel.astype(np.float64)
        count = signal.fftconvolve(organ.astype(np.float64), kernel, mode="same")
        total = signal.fftconvolve(weighted, kernel, mode="same")
        means.append(total / np.maximum(count, 1e-6))
        shares.append(count / kernel.sum())
    defined = organ & (shares[0] >= 0.5) & (shares[1] >= 0.25)
    return means[0] - means[1], defined


def observer_rows(phantom, contrasts_hu: list[float]) -> list[dict]:
    """Per lesion of ``phantom`` (with its mean contrast against the liver, from :func:`lesion_rows`): its
    search z and the lesion-free liver's highest z of the lesion's polarity."""
    spacing = phantom.ct.grid.spacing_zyx
    ids = phantom.lesion_id.array
    tissue = (phantom.organs.array == ORGAN_MAP_TISSUES.index("liver")) | (ids > 0)
    organ_full = ndimage.binary_erosion(tissue) | (ids > 0)  # a small lesion lies wholly in the outer layer
    box = ndimage.find_objects(organ_full.astype(np.uint8))[0]
    # every lesion lies in the box, so a crop of this is the crop's own distance map
    distance_full = ndimage.distance_transform_edt(ids == 0, sampling=spacing)
    rows = []
    lesions = [lesion for lesion in phantom.lesions if (ids == lesion.id).any()]
    for lesion, contrast in zip(lesions, contrasts_hu, strict=True):
        inside_full = ids == lesion.id
        radius = min(lesion.diameter_mm / 2.0, MAX_RADIUS_MM)
        margin = [int(np.ceil(2 * radius / s)) + 1 for s in spacing]
        crop = tuple(slice(max(0, b.start - m), min(n, b.stop + m)) for b, m, n in zip(box, margin, organ_full.shape))
        organ = organ_full[crop]
        hu = phantom.ct.array[crop].astype(np.float64)
        response, defined = centre_surround(hu, organ, radius, spacing)
        background = defined & (distance_full[crop] > BACKGROUND_RADII * radius)
        values = response[background]
        median = float(np.median(values))
        spread = 1.4826 * float(np.median(np.abs(values - median))) or 1.0
        z = (response - median) / spread * (1.0 if contrast >= 0 else -1.0)
        inside = inside_full[crop] & defined
        rows.append(
            {
                # None: no voxel of the lesion has enough parenchyma around it (a small lesion between vessels)
                "search_z": round(float(z[inside].max()), 2) if inside.any() else None,
                "background_max_z": round(float(z[background].max()), 2),
            }
        )
    return rows


def recall(rows: list[dict], key: str) -> str:
    """``found of all (share)`` for the rows, counting those where ``key`` is true."""
    found = sum(bool(r[key]) for r in rows)
    return f"{found} of {len(rows)} ({found / len(rows):.2f})" if rows else "none"


def measured_rows(phantoms: Iterable, seed: int, model: str | None) -> list[dict]:
    """One row per lesion of ``phantoms`` (numbered from ``seed`` on): :func:`lesion_rows` (with the model's
    finds when ``model`` is given) and the observer's figures."""
    rows = []
    for index, phantom in enumerate(phantoms):
        if model:
            result = segment(phantom.ct, model=model, device="cpu", probabilities=True)
            described = lesion_rows(phantom, result.labels.array, result.tumour_probability.array, seed + index)
        else:
            zeros = np.zeros(phantom.ct.shape, np.uint8)
            described = [
                {k: v for k, v in r.items() if k not in ("max_probability", "found", "labelled")}
                for r in lesion_rows(phantom, zeros, zeros.astype(np.float32), seed + index)
            ]
        for row, seen in zip(described, observer_rows(phantom, [r["contrast_hu"] for r in described])):
            row |= seen
            row["observer_search"] = seen["search_z"] is not None and seen["search_z"] > seen["background_max_z"]
            rows.append(row)
        print(f"phantom {seed + index}: {len(described)} lesions", flush=True)
    return rows


def read_rows(path: Path) -> list[dict]:
    """Rows written by ``--csv``, with their types back."""
    numbers = {"seed": int, "diameter_mm": float, "contrast_hu": float, "cnr": float, "max_probability": float}
    numbers |= {"background_max_z": float, "search_z": lambda text: float(text) if text else None}
    with open(path, newline="") as handle:
        return [
            {
                key: numbers[key](text) if key in numbers else text == "True" if text in ("True", "False") else text
                for key, text in row.items()
            }
            for row in csv.DictReader(handle)
        ]


def group(row: dict) -> str:
    """A lesion's kind, whether its phase is enhanced, and its polarity against the liver."""
    phase = "native" if row["phase"] == "native" else "enhanced"
    return f"{row['kind']}, {phase}, {'brighter' if row['contrast_hu'] > 0 else 'darker'}"


def print_tables(rows: list[dict], title: str, with_model: bool) -> None:
    """The observer's and (``with_model``) the model's recall by size, kind and placement, and each lesion."""
    sizes = {
        "≥ 10 mm": [r for r in rows if r["diameter_mm"] >= 10],
        "< 10 mm": [r for r in rows if r["diameter_mm"] < 10],
    }
    print(f"\nThe reference observer on {title}:\n")
    columns = ["lesions", "observer finds (no false detection)"] + (["model finds"] if with_model else [])
    print("| " + " | ".join(["size", *columns]) + " |")
    print("|" + "---|" * (len(columns) + 1))
    for name, subset in sizes.items():
        cells = [str(len(subset)), recall(subset, "observer_search")] + (
            [recall(subset, "found")] if with_model else []
        )
        print(f"| {name} | " + " | ".join(cells) + " |")
    if with_model:
        print("\nThe model against the observer:\n")
        print("| size | both find | observer finds, model misses | observer misses, model finds | both miss |")
        print("|---|---|---|---|---|")
        for name, subset in sizes.items():
            cells = [
                sum(r["observer_search"] == seen and r["found"] == found for r in subset)
                for seen, found in ((True, True), (True, False), (False, True), (False, False))
            ]
            print(f"| {name} | " + " | ".join(map(str, cells)) + " |")
    for label, key in (("kind, phase and polarity", group), ("placement", lambda r: r["placement"])):
        print(f"\nBy {label}:\n")
        print("| size | " + label + " | lesions | observer finds" + (" | model finds |" if with_model else " |"))
        print("|---|---|---|---|" + ("---|" if with_model else ""))
        for name, subset in sizes.items():
            for value in sorted({key(r) for r in subset}):
                members = [r for r in subset if key(r) == value]
                found = [sum(r["observer_search"] for r in members)] + (
                    [sum(r["found"] for r in members)] if with_model else []
                )
                print(f"| {name} | {value} | {len(members)} | " + " | ".join(map(str, found)) + " |")
    print("\nLesions by the observer's margin (search z less the lesion-free liver's highest):\n")
    header = "| seed | phase | kind | placement | diameter mm | contrast HU | CNR | search z | background max z |"
    print(header + (" model |" if with_model else ""))
    print("|" + "---|" * (9 + with_model))
    for r in sorted(rows, key=lambda r: -np.inf if r["search_z"] is None else r["search_z"] - r["background_max_z"]):
        search = "not measurable" if r["search_z"] is None else r["search_z"]
        line = (
            f"| {r['seed']} | {r['phase']} | {r['kind']} | {r['placement']} | {r['diameter_mm']} | "
            f"{r['contrast_hu']} | {r['cnr']} | {search} | {r['background_max_z']} |"
        )
        print(line + (f" {'found' if r['found'] else 'missed'} |" if with_model else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=900)
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--dataset", type=Path, help="measure the first --cases phantoms of this phantom set")
    parser.add_argument("--model", help="also segment each phantom with this model and count its finds")
    parser.add_argument("--csv", type=Path, help="write the per-lesion rows here")
    parser.add_argument("--rows", type=Path, help="print the tables of rows an earlier --csv wrote, measuring nothing")
    args = parser.parse_args()
    if args.rows:
        rows = read_rows(args.rows)
        seeds = sorted({r["seed"] for r in rows})
        title = f"the lesions of phantoms {seeds[0]}-{seeds[-1]} in {args.rows.name}"
    else:
        if args.dataset:
            rows = measured_rows(dataset_phantoms(args.dataset, args.cases, organ_map=True), 0, args.model)
            title = f"cases 0-{args.cases - 1} of {args.dataset}"
        else:
            rows = measured_rows(unseen_phantoms(args.seed, args.cases, organ_map=True), args.seed, args.model)
            title = f"phantoms {args.seed}-{args.seed + args.cases - 1}"
        title += f", model {args.model}" if args.model else ""
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print_tables(rows, title, "found" in rows[0])


if __name__ == "__main__":
    main()
