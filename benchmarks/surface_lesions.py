"""What keeps a model from lesions at the liver's surface: probes on the test phantoms it misses them in.

    python benchmarks/surface_lesions.py [--model demo-curriculum ...] [--seeds 912 915 917]
        [--offsets -60 -40 -25 -15 30] [--windows 48x96x96 64x128x128] [--figure docs/results/surface-lesions.png]

For each subcapsular lesion of each phantom (``make_phantom(seed)``, the test phantoms of
``demo_targets.py``), with each model, as ``livertumor segment`` gives it:
* what lies outside the liver around it (the phantom's organ map, 2 voxels out) and how far the gallbladder is;
* **fat plane**: bowel, gastric fluid and gas within 8 mm of the lesion replaced by fat (-100 ± 12 HU), so
  the lesion no longer touches fluid-density bowel;
* **contrast**: the lesion's own voxels shifted so that their mean is the liver's median HU plus each offset
  (its texture, edges and noise kept), from a cyst's contrast to a hyperdense lesion's.
* **windows**: segmented with sliding windows larger than trained (more context around the lesion).
Each cell gives the highest tumour probability inside the lesion and what most of its voxels were labelled.
Each row also gives the share of the liver within 5 mm of the lesion that the model labels liver or tumour
as drawn, and the same share for the whole liver's outer 5 mm (is the lesion missed alone, or with the
liver's rim where it lies?). ``--figure``: the axial slice around each lesion's centre with the true
outline and each model's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from lesion_misses import LABEL_NAMES  # the benchmarks folder is the script's path
from scipy import ndimage

from livertumor.inference import segment
from livertumor.phantom import make_phantom
from livertumor.phantom.anatomy import ORGAN_MAP_TISSUES
from livertumor.plotting import pyplot, save_figure
from livertumor.volume import Volume

GUT = [ORGAN_MAP_TISSUES.index(name) for name in ("bowel", "gastric_fluid", "bowel_gas")]
FAT_PLANE_MM = 8.0
#: The liver "around" a lesion: within this distance of it.
RING_MM = 5.0
#: The figure shows this many mm on each side of a lesion's centre.
FIGURE_HALF_MM = 60.0


def outcome(
    ct: Volume, model: str, inside: np.ndarray, window: tuple[int, int, int] | None = None
) -> tuple[str, np.ndarray]:
    """``highest tumour probability / majority label`` of the lesion ``inside`` when ``model`` segments ``ct``
    (with sliding ``window``, None: the trained block), and the labels."""
    result = segment(ct, model=model, device="cpu", probabilities=True, window=window)
    labels = result.labels.array
    majority = LABEL_NAMES[int(np.bincount(labels[inside], minlength=3).argmax())]
    return f"{float(result.tumour_probability.array[inside].max()):.3f} {majority}", labels


def draw(panels: list[tuple], models: list[str], path: Path) -> None:
    """One column per lesion: the axial slice around its centre, the true liver (green) and tumour (red)
    outlines on top, then each model's."""
    plt = pyplot()
    figure, axes = plt.subplots(1 + len(models), len(panels), figsize=(3.2 * len(panels), 3.2 * (1 + len(models))))
    axes = np.asarray(axes).reshape(1 + len(models), len(panels))
    for column, (title, image, outlines) in enumerate(panels):
        for row, (name, labels) in enumerate(outlines):
            axis = axes[row, column]
            axis.imshow(image, cmap="gray", vmin=-100, vmax=200)
            axis.contour(labels >= 1, [0.5], colors="lime", linewidths=1)
            if (labels == 2).any():
                axis.contour(labels == 2, [0.5], colors="red", linewidths=1)
            axis.set_title(f"{title}\n{Path(name).name}", fontsize=8)
            axis.set_axis_off()
    figure.tight_layout()
    save_figure(figure, path)


def neighbours(organs: np.ndarray, liver: np.ndarray, inside: np.ndarray) -> str:
    """The tissues outside the liver within 2 voxels of the lesion, with their shares of that shell."""
    shell = ndimage.binary_dilation(inside, iterations=2) & ~inside
    outside = shell & ~liver
    counts = np.bincount(organs[outside], minlength=len(ORGAN_MAP_TISSUES))
    named = [f"{ORGAN_MAP_TISSUES[i]} {counts[i] / shell.sum():.2f}" for i in np.argsort(counts)[::-1][:2] if counts[i]]
    return ", ".join(named) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["demo-curriculum"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[912, 915, 917])
    parser.add_argument("--offsets", type=float, nargs="+", default=[-60.0, -40.0, -25.0, -15.0, 30.0])
    parser.add_argument(
        "--windows", nargs="*", default=["48x96x96", "64x128x128"], help="sliding windows larger than trained (zxy)"
    )
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()
    windows = [tuple(int(n) for n in text.split("x")) for text in args.windows]
    rng = np.random.default_rng(0)
    offsets = " | ".join(f"liver {offset:+.0f}" for offset in args.offsets)
    columns = (
        f"model | seed | phase | kind | mm | outside the liver around it | gallbladder mm | "
        f"liver within {RING_MM:g} mm labelled | whole liver's outer {RING_MM:g} mm labelled | as drawn"
    )
    larger = "".join(f" | window {text}" for text in args.windows)
    print(f"| {columns}{larger} | fat plane | {offsets} |")
    print("|---" * (11 + len(windows) + len(args.offsets)) + "|")
    panels = []
    for seed in args.seeds:
        phantom = make_phantom(seed, organ_map=True)
        organs, ids = phantom.organs.array, phantom.lesion_id.array
        spacing = np.asarray(phantom.ct.grid.spacing_zyx)
        liver = phantom.label.array >= 1
        hu = phantom.ct.array.astype(np.float32)
        liver_hu = float(np.median(hu[phantom.label.array == 1]))
        rim = (ndimage.distance_transform_edt(liver, sampling=spacing) <= RING_MM) & (phantom.label.array == 1)
        gallbladder = organs == ORGAN_MAP_TISSUES.index("gallbladder")
        to_gallbladder = ndimage.distance_transform_edt(~gallbladder, sampling=spacing) if gallbladder.any() else None
        for lesion in (lesion for lesion in phantom.lesions if lesion.placement == "subcapsular"):
            inside = ids == lesion.id
            if not inside.any():
                continue
            from_lesion = ndimage.distance_transform_edt(~inside, sampling=spacing)
            plane = (from_lesion <= FAT_PLANE_MM) & np.isin(organs, GUT) & ~liver
            fat = hu.copy()
            fat[plane] = -100.0 + 12.0 * rng.standard_normal(int(plane.sum()))
            shifted = []
            for offset in args.offsets:
                moved = hu.copy()
                moved[inside] += liver_hu + offset - float(hu[inside].mean())
                shifted.append(phantom.ct.with_array(moved.astype(phantom.ct.array.dtype)))
            distance = f"{to_gallbladder[inside].min():.0f}" if to_gallbladder is not None else "none"
            ring = (from_lesion <= RING_MM) & (phantom.label.array == 1)
            z, y, x = (round(v) for v in lesion.centre_index_zyx)
            half_y, half_x = (round(FIGURE_HALF_MM / d) for d in spacing[1:])
            crop = (z, slice(max(y - half_y, 0), y + half_y), slice(max(x - half_x, 0), x + half_x))
            outlines = [("truth", phantom.label.array[crop])]
            for model in args.model:
                as_drawn, labels = outcome(phantom.ct, model, inside)
                outlines.append((model, labels[crop]))
                cells = [f"{(labels[ring] >= 1).mean():.2f}", f"{(labels[rim] >= 1).mean():.2f}", as_drawn]
                cells += [outcome(phantom.ct, model, inside, window)[0] for window in windows]
                cells.append(outcome(phantom.ct.with_array(fat.astype(phantom.ct.array.dtype)), model, inside)[0])
                cells += [outcome(ct, model, inside)[0] for ct in shifted]
                print(
                    f"| {model} | {seed} | {phantom.phase} | {lesion.kind} | {lesion.diameter_mm:.1f} | "
                    f"{neighbours(organs, liver, inside)} | {distance} | " + " | ".join(cells) + " |",
                    flush=True,
                )
            title = f"{seed} {phantom.phase} {lesion.kind} {lesion.diameter_mm:.0f} mm"
            panels.append((title, phantom.ct.array[crop], outlines))
    if args.figure:
        draw(panels, args.model, args.figure)


if __name__ == "__main__":
    main()
