"""How real the phantoms are, and how fast they come.

    python benchmarks/phantom.py [--repeats 3] [--seeds 4] [--real ../shared/data/real] [--pictures docs/results]
        [--markdown docs/results/phantom.md]

Prints Markdown tables:
1. per-structure HU mean ± sd of native-phase phantoms on the real scan's 3 mm grid against the real
   non-contrast CT ``totalsegmentator/example_ct_sm.nii.gz`` measured through its organ map (voxels eroded
   by one, as in :mod:`livertumor.phantom.tissues`);
2. lesion contrast to the liver per kind and phase (median lesion HU minus median liver HU), with the
   features that tell the kinds apart: metastasis rim minus core, hemangioma share brighter than halfway to
   the blood pool;
3. what surrounds the liver: the share of fat (-500..-30 HU) and the median HU at 0-3, 3-6 and 6-10 mm
   from the liver's surface, real scan against phantoms of each anatomy option on the same 3 mm grid;
4. the liver's hilum: what lies inside the liver's outline (a 12 mm closing) but is not liver, within
   15 mm of the portal vein outside the liver: its mL, fat share and median HU, real scan against phantoms;
5. generation time per case size (median and best of the repeats, this machine's default threads).
With ``--pictures`` it also writes ``phantom-anatomy.png`` (the real scan beside a native phantom, then
axial and coronal slices of one case in each phase) and ``phantom-lesions.png`` (one crop per kind at
each size in the portal venous phase, and at 30 mm in each phase).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from livertumor.io import read_image
from livertumor.phantom import LESION_CLASSES, PHASES, make_phantom, tissue_table
from livertumor.phantom.anatomy import ORGAN_MAP_TISSUES

SIZES = (
    ((64, 128, 128), (3.0, 3.0, 3.0)),
    ((128, 256, 256), (2.0, 1.5, 1.5)),
    ((120, 512, 512), (1.6, 0.75, 0.75)),
)
#: structure: (phantom tissues, TotalSegmentator labels; None = unlabelled body voxels of -200..-30 HU)
STRUCTURES = {
    "liver": (("liver",), (5,)),
    "spleen": (("spleen",), (1,)),
    "kidneys": (("kidney_cortex", "kidney_medulla"), (2, 3)),
    "gallbladder": (("gallbladder",), (4,)),
    "pancreas": (("pancreas",), (7,)),
    "aorta / blood": (("blood",), (52,)),
    "portal vein": (("portal_vein",), (64,)),
    "muscle": (("muscle",), (86, 87, 88, 89)),
    "vertebrae": (("bone_cancellous", "bone_cortical"), (30, 31, 32)),
    "lung bases": (("lung",), (11, 14)),
    "fat": (("fat",), None),
}
REAL_SPACING_ZYX = (3.0, 3.0, 3.0)


def eroded_values(ct: np.ndarray, mask: np.ndarray) -> np.ndarray:
    core = ndimage.binary_erosion(mask)
    return ct[core if core.sum() > 20 else mask].astype(float)


def realism_table(real: Path, seeds: int) -> list[str]:
    ct = read_image(real / "totalsegmentator" / "example_ct_sm.nii.gz").array
    organs = read_image(real / "totalsegmentator" / "example_ct_sm_totalseg.nii.gz").array
    body = ndimage.binary_fill_holes(ct > -500)
    phantoms = [
        make_phantom(seed, (72, 128, 128), REAL_SPACING_ZYX, phase="native", organ_map=True) for seed in range(seeds)
    ]
    lines = [
        f"| structure | real CT mean ± sd (HU) | phantom mean ± sd (HU), {seeds} native cases | difference of means |",
        "|---|---|---|---|",
    ]
    for name, (tissues, labels) in STRUCTURES.items():
        if labels is None:
            real_mask = (organs == 0) & body & (ct > -200) & (ct < -30)
        else:
            real_mask = np.isin(organs, labels)
        real_values = eroded_values(ct, real_mask)
        values = np.concatenate(
            [
                eroded_values(p.ct.array, np.isin(p.organs.array, [ORGAN_MAP_TISSUES.index(t) for t in tissues]))
                for p in phantoms
            ]
        )
        lines.append(
            f"| {name} | {real_values.mean():.1f} ± {real_values.std():.1f} | {values.mean():.1f} ± {values.std():.1f} "
            f"| {values.mean() - real_values.mean():+.1f} |"
        )
    return lines


def lesion_table(seeds: int) -> list[str]:
    lines = [
        "| kind | phase | lesion − liver (HU) | metastasis rim − core (HU) | hemangioma share near blood pool |",
        "|---|---|---|---|---|",
    ]
    for kind in LESION_CLASSES:
        for phase in PHASES:
            contrast, rim_core, filled = [], [], []
            for seed in range(seeds):
                phantom = make_phantom(
                    100 + seed, (72, 192, 192), (2.5, 1.5, 1.5), phase=phase, kinds=[kind], diameters_mm=[30.0]
                )
                ct, label = phantom.ct.array, phantom.label.array
                mask = phantom.lesion_id.array == phantom.lesions[0].id
                liver = np.median(ct[ndimage.binary_erosion(label == 1, iterations=2)])
                contrast.append(np.median(ct[mask]) - liver)
                distance = ndimage.distance_transform_edt(mask, sampling=(2.5, 1.5, 1.5))
                rim = mask & (distance <= 2.5)
                core = mask & (distance > 0.5 * distance.max())
                rim_core.append(np.median(ct[rim]) - np.median(ct[core]))
                blood = tissue_table(phase)["blood"][0]
                filled.append((ct[mask] > (blood + 45) / 2).mean())
            lines.append(
                f"| {kind} | {phase} | {np.mean(contrast):+.0f} | "
                + (f"{np.mean(rim_core):+.0f}" if kind == "metastasis" else "-")
                + " | "
                + (f"{np.mean(filled):.2f}" if kind == "hemangioma" and phase != "native" else "-")
                + " |"
            )
    return lines


#: Anatomy options compared around the liver (``make_phantom`` keywords).
ANATOMIES = {
    "default": {},
    "lower right lobe": {"lower_right_lobe": True},
    "lower right lobe + perihepatic fat": {"lower_right_lobe": True, "perihepatic_fat": True},
    "lower right lobe + hilar fat": {"lower_right_lobe": True, "hilar_fat": True},
}
BANDS_MM = ((0, 3), (3, 6), (6, 10))


def surroundings(ct: np.ndarray, liver: np.ndarray) -> list[tuple[float, float]]:
    """(fat share, median HU) of the body's voxels in each band of distance from ``liver`` (3 mm grid)."""
    distance = ndimage.distance_transform_edt(~liver, sampling=REAL_SPACING_ZYX)
    bands = [ct[(distance > low) & (distance <= high) & (ct > -500)] for low, high in BANDS_MM]
    return [(float((band < -30).mean()), float(np.median(band))) for band in bands]


def surroundings_cell(fat_share: float, median_hu: float) -> str:
    return f"{fat_share:.2f} / {median_hu:+.0f}"


def surroundings_table(real: Path, seeds: int) -> list[str]:
    ct = read_image(real / "totalsegmentator" / "example_ct_sm.nii.gz").array
    organs = read_image(real / "totalsegmentator" / "example_ct_sm_totalseg.nii.gz").array
    header = " | ".join(f"{low}-{high} mm: fat share / median HU" for low, high in BANDS_MM)
    lines = [f"| scan | {header} |", "|---|" + "---|" * len(BANDS_MM)]
    real_cells = [surroundings_cell(*band) for band in surroundings(ct, organs == 5)]
    lines.append("| real, `example_ct_sm` | " + " | ".join(real_cells) + " |")
    for name, options in ANATOMIES.items():
        per_case = []
        for seed in range(seeds):
            phantom = make_phantom(seed, (72, 128, 128), REAL_SPACING_ZYX, lesion_count=0, **options)
            per_case.append(surroundings(phantom.ct.array, phantom.label.array >= 1))
        cells = []
        for column in zip(*per_case):  # one band over the cases: its least and most fatty case
            least, most = min(column), max(column)
            cells.append(surroundings_cell(*least) + ("" if least == most else " … " + surroundings_cell(*most)))
        lines.append(
            f"| phantoms, {name} ({seeds} cases, all phases; lowest … highest fat) | " + " | ".join(cells) + " |"
        )
    return lines


def hilum(ct: np.ndarray, liver: np.ndarray, portal_vein: np.ndarray) -> tuple[float, float, float]:
    """(mL, fat share, median HU) of what lies inside ``liver``'s outline, is not liver and lies within
    15 mm of the portal vein outside the liver (3 mm grid): the porta hepatis."""
    reach = 12.0 / REAL_SPACING_ZYX[0]  # the closing's radius in voxels (the grid is isotropic)
    pad = int(np.ceil(reach))  # so the volume's faces do not cut the closing
    offsets = np.arange(-pad, pad + 1) ** 2
    ball = offsets[:, None, None] + offsets[None, :, None] + offsets[None, None, :] <= reach**2
    outline = ndimage.binary_closing(np.pad(liver, pad), ball)[pad:-pad, pad:-pad, pad:-pad]
    near = ndimage.distance_transform_edt(~(portal_vein & ~liver), sampling=REAL_SPACING_ZYX) <= 15.0
    zone = outline & ~liver & near
    if not zone.any():
        return 0.0, 0.0, float("nan")
    return zone.sum() * np.prod(REAL_SPACING_ZYX) / 1000, float((ct[zone] < -30).mean()), float(np.median(ct[zone]))


def hilum_table(real: Path, seeds: int) -> list[str]:
    ct = read_image(real / "totalsegmentator" / "example_ct_sm.nii.gz").array
    organs = read_image(real / "totalsegmentator" / "example_ct_sm_totalseg.nii.gz").array
    lines = ["| scan | mL | fat share | median HU |", "|---|---|---|---|"]
    ml, fat, median = hilum(ct, organs == 5, organs == 64)
    lines.append(f"| real, `example_ct_sm` | {ml:.1f} | {fat:.2f} | {median:+.0f} |")
    vein = ORGAN_MAP_TISSUES.index("portal_vein")
    for name in ("lower right lobe", "lower right lobe + hilar fat"):
        rows = []
        for seed in range(seeds):
            options = {"lesion_count": 0, "phase": "native", "organ_map": True, **ANATOMIES[name]}
            phantom = make_phantom(seed, (72, 128, 128), REAL_SPACING_ZYX, **options)
            rows.append(hilum(phantom.ct.array, phantom.label.array >= 1, phantom.organs.array == vein))
        columns = zip(zip(*rows), (".1f", ".2f", "+.0f"))
        cells = [f"{min(column):{form}} … {max(column):{form}}" for column, form in columns]
        lines.append(f"| phantoms, {name} ({seeds} native cases; lowest … highest) | " + " | ".join(cells) + " |")
    return lines


def timing_table(repeats: int) -> list[str]:
    lines = ["| shape (z, y, x) | spacing (mm) | median (s) | best (s) | lesions |", "|---|---|---|---|---|"]
    for shape, spacing in SIZES:
        times, lesions = [], 0
        for seed in range(repeats):
            start = time.perf_counter()
            phantom = make_phantom(seed, shape, spacing)
            times.append(time.perf_counter() - start)
            lesions += len(phantom.lesions)
        lines.append(
            f"| {' x '.join(map(str, shape))} | {' x '.join(map(str, spacing))} | {statistics.median(times):.2f} "
            f"| {min(times):.2f} | {lesions / repeats:.1f} |"
        )
    return lines


def pictures(real: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = {"cmap": "gray", "vmin": -160, "vmax": 240}
    figure, axes = plt.subplots(3, 4, figsize=(16, 12))
    ct = read_image(real / "totalsegmentator" / "example_ct_sm.nii.gz").array
    native = make_phantom(7, (72, 128, 128), REAL_SPACING_ZYX, phase="native", lesion_count=0)
    # the real scan is stored with -x, -y axes (RAS-like): flip it to the phantom's LPS display
    real_view = ct[:, ::-1, ::-1]
    liver_z = int(np.nonzero((native.label.array == 1).any((1, 2)))[0].mean())
    for column, (title, volume, z) in enumerate(
        (("real CT (native), axial", real_view, 15), ("native phantom, 3 mm, axial", native.ct.array, liver_z))
    ):
        axes[0, 2 * column].imshow(volume[z], **window)
        axes[0, 2 * column].set_title(title)
        middle = volume.shape[1] // 2
        axes[0, 2 * column + 1].imshow(volume[::-1, middle], **window)
        axes[0, 2 * column + 1].set_title(title.replace("axial", "coronal"))
    for column, phase in enumerate(PHASES):
        phantom = make_phantom(3, phase=phase)
        label = phantom.label.array
        zs = np.nonzero((label == 2).any((1, 2)))[0]
        z = int(zs[len(zs) // 2]) if zs.size else label.shape[0] * 2 // 3
        axes[1, column].imshow(phantom.ct.array[z], **window)
        axes[1, column].contour(label[z] == 2, [0.5], colors="r", linewidths=0.6)
        axes[1, column].set_title(f"{phase}, axial (tumour outlined)")
        rows = np.nonzero((label == 1).any((0, 2)))[0]
        axes[2, column].imshow(phantom.ct.array[::-1, (rows[0] + rows[-1]) // 2], aspect=2.0 / 1.5, **window)
        axes[2, column].set_title(f"{phase}, coronal")
    for axis in axes.ravel():
        axis.axis("off")
    figure.suptitle("Phantoms: patient right on the image's left (radiological view), anterior up")
    figure.tight_layout()
    figure.savefig(out / "phantom-anatomy.png", dpi=60)
    plt.close(figure)

    columns = [("portal-venous", d) for d in (7.0, 15.0, 30.0, 60.0)] + [(p, 30.0) for p in PHASES]
    figure, axes = plt.subplots(3, len(columns), figsize=(2.2 * len(columns), 7))
    for row, kind in enumerate(LESION_CLASSES):
        for column, (phase, diameter) in enumerate(columns):
            phantom = make_phantom(
                40 + column, (72, 192, 192), (2.5, 1.5, 1.5), phase=phase, kinds=[kind], diameters_mm=[diameter]
            )
            lesion = phantom.lesions[0]
            z, y, x = np.round(lesion.centre_index_zyx).astype(int)
            half = int(lesion.diameter_mm / 1.5 * 0.9) + 8
            crop = phantom.ct.array[z, max(0, y - half) : y + half, max(0, x - half) : x + half]
            axes[row, column].imshow(crop, cmap="gray", vmin=-60, vmax=260)
            axes[row, column].set_title(f"{kind}\n{phase} {lesion.diameter_mm:.0f} mm", fontsize=8)
            axes[row, column].axis("off")
    figure.suptitle("Lesion kinds: sizes in the portal venous phase (left), 30 mm in each phase (right)")
    figure.tight_layout()
    figure.savefig(out / "phantom-lesions.png", dpi=70)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/real")
    parser.add_argument("--pictures", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    sections = [
        ("Tissue HU: native phantoms against the real non-contrast scan", realism_table(args.real, args.seeds)),
        ("Lesion contrast, 30 mm lesions", lesion_table(args.seeds)),
        ("What surrounds the liver", surroundings_table(args.real, args.seeds)),
        ("The liver's hilum", hilum_table(args.real, args.seeds)),
        ("Generation time", timing_table(args.repeats)),
    ]
    text = "\n\n".join(f"## {title}\n\n" + "\n".join(lines) for title, lines in sections)
    text += f"\n\npeak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB\n"
    print(text)
    if args.pictures:
        args.pictures.mkdir(parents=True, exist_ok=True)
        pictures(args.real, args.pictures)
    if args.markdown:
        command = f"python benchmarks/phantom.py --repeats {args.repeats} --seeds {args.seeds}"
        if args.pictures:
            command += f" --pictures {args.pictures}"
        args.markdown.write_text(
            f"# Phantom realism and speed\n\nCommand: `{command} --markdown {args.markdown}`\n\n{text}"
        )


if __name__ == "__main__":
    main()
