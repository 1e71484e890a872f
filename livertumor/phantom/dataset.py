"""Phantom data sets on disk in the LiTS layout, with a manifest describing every lesion."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..io import read_label, write_json, write_volume
from .anatomy import ANATOMY_OPTIONS, DEFAULT_SHAPE, DEFAULT_SPACING_ZYX, Phantom, make_phantom
from .lesion_kinds import LESION_CLASSES
from .tissues import PHASE_PROBABILITIES, PHASES

#: Every this-many-th case of a data set has no lesion (the 5th, 10th, ...).
LESION_FREE_EVERY = 5


def phantom_case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` in a data set seeded ``seed`` (cases are independent and reproducible)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def draw_phase(seed: int, phases: Sequence[str] | None) -> str:
    """The contrast phase of the case seeded ``seed``: from ``phases`` (None: every phase, weighted by
    :data:`.tissues.PHASE_PROBABILITIES`)."""
    chosen = tuple(PHASES if phases is None else phases)
    unknown = sorted(set(chosen) - set(PHASES))
    if unknown or not chosen:
        raise ValueError(f"unknown contrast phase(s) {unknown or chosen}; known: {', '.join(PHASES)}")
    weights = np.array([PHASE_PROBABILITIES[PHASES.index(p)] for p in chosen])
    rng = np.random.default_rng([seed, 1])
    return chosen[int(rng.choice(len(chosen), p=weights / weights.sum()))]


def case_record(index: int, seed: int, names: dict[str, str], phantom: Phantom) -> dict:
    """A manifest entry: file names, seed, phase and lesions of one case."""
    return {
        "index": index,
        "seed": seed,
        **names,
        "phase": phantom.phase,
        "lesions": [asdict(info) for info in phantom.lesions],
    }


def manifest_header(generator: str, seed: int, **extra) -> dict:
    """The manifest fields every data set written here shares."""
    return {
        "generator": generator,
        "seed": seed,
        **extra,
        "labels": {"0": "background", "1": "liver", "2": "tumour"},
        "classes": {str(i + 1): kind for i, kind in enumerate(LESION_CLASSES)},
        "cases": [],
    }


def write_case(phantom: Phantom, out: Path, index: int, suffix: str) -> dict[str, str]:
    """Write one case's CT, label map and class map in the LiTS layout; returns the file names."""
    names = {kind: f"{kind}-{index}{suffix}" for kind in ("volume", "segmentation", "classes")}
    write_volume(phantom.ct, out / names["volume"])
    write_volume(phantom.label, out / names["segmentation"])
    write_volume(phantom.lesion_class, out / names["classes"])
    return names


def write_phantom_dataset(
    out: str | Path,
    cases: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing_zyx: Sequence[float] = DEFAULT_SPACING_ZYX,
    suffix: str = ".nii",
    progress: Callable[[int, int], None] | None = None,
    phases: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    workers: int = 1,
    lower_right_lobe: bool = False,
    perihepatic_fat: bool = False,
    hilar_fat: bool = False,
    surface_lesions: bool = False,
) -> Path:
    """Write ``cases`` phantoms in LiTS layout (``volume-N``, ``segmentation-N``, plus ``classes-N`` with
    the lesion kinds) and ``manifest.json`` under ``out``. Every 5th case has no lesion; ``phases``
    limits the contrast phases drawn (None: all). ``kinds`` gives case N lesions of one kind only,
    ``kinds[N % len(kinds)]`` (1-3, metastases 1-6): balanced classes for lesion classification.
    ``lower_right_lobe``, ``perihepatic_fat``, ``hilar_fat``, ``surface_lesions``: see :func:`make_phantom`.

    Returns the manifest's path. ``progress(done, total)`` is called after each case. ``workers`` > 1
    writes cases in that many processes; each case depends only on its seed, so the files are the same.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    anatomy = {
        "lower_right_lobe": lower_right_lobe,
        "perihepatic_fat": perihepatic_fat,
        "hilar_fat": hilar_fat,
        "surface_lesions": surface_lesions,
    }
    manifest = manifest_header(
        "livertumor.phantom",
        seed,
        shape_zyx=list(shape),
        spacing_zyx_mm=list(spacing_zyx),
        phases=list(PHASES if phases is None else phases),
        kinds=list(kinds) if kinds else "drawn per liver",
        **anatomy,
    )

    make_case = partial(dataset_phantom, shape=shape, spacing_zyx=spacing_zyx, phases=phases, kinds=kinds, **anatomy)
    return write_cases(out, manifest, cases, seed, suffix, progress, make_case, workers)


def dataset_phantom(
    index: int,
    case_seed: int,
    shape: Sequence[int],
    spacing_zyx: Sequence[float],
    phases: Sequence[str] | None,
    kinds: Sequence[str] | None,
    organ_map: bool = False,
    **anatomy: bool,
) -> Phantom:
    """Case ``index`` of a :func:`write_phantom_dataset` set, from its seed (see there for the arguments)."""
    lesion_free = (index + 1) % LESION_FREE_EVERY == 0
    count, case_kinds = (0, None) if lesion_free else (None, None)
    if kinds and not lesion_free:
        kind = kinds[index % len(kinds)]
        case_kinds = [kind]
        count = int(np.random.default_rng([case_seed, 2]).integers(1, 7 if kind == "metastasis" else 4))
    return make_phantom(
        case_seed,
        shape,
        spacing_zyx,
        lesion_count=count,
        kinds=case_kinds,
        phase=draw_phase(case_seed, phases),
        organ_map=organ_map,
        **anatomy,
    )


def dataset_phantoms(folder: str | Path, cases: int | None = None, organ_map: bool = False) -> Iterator[Phantom]:
    """The first ``cases`` (None: all) phantoms of a set :func:`write_phantom_dataset` wrote, made again from
    the seeds in its manifest with their lesions' instance map (which the files lack); ``organ_map`` as in
    :func:`make_phantom`. Each case's label map is checked against its file, so a generator that has changed
    since the set was written is refused instead of measured."""
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise DatasetError(f"{folder} has no manifest.json: not a phantom set that `livertumor phantom` wrote")
    manifest = json.loads((folder / "manifest.json").read_text())
    kinds = manifest["kinds"] if isinstance(manifest["kinds"], list) else None
    anatomy = {option: bool(manifest.get(option, False)) for option in ANATOMY_OPTIONS}
    for record in manifest["cases"][:cases]:
        phantom = dataset_phantom(
            record["index"],
            record["seed"],
            manifest["shape_zyx"],
            manifest["spacing_zyx_mm"],
            manifest["phases"],
            kinds,
            organ_map,
            **anatomy,
        )
        if not np.array_equal(read_label(folder / record["segmentation"]).array, phantom.label.array):
            raise DatasetError(
                f"{folder / record['segmentation']} differs from its seed's phantom: the phantom generator has "
                "changed since this set was written; write the set again"
            )
        yield phantom


#: The case maker of the running :func:`write_cases`, read by its forked workers: they inherit it, so
#: no closure has to be pickled.
_MAKE_CASE: Callable[[int, int], Phantom] | None = None


def _write_indexed_case(out: Path, seed: int, suffix: str, index: int) -> dict:
    case_seed = phantom_case_seed(seed, index)
    case = _MAKE_CASE(index, case_seed)
    return case_record(index, case_seed, write_case(case, out, index, suffix), case)


def write_cases(
    out: Path,
    manifest: dict,
    cases: int,
    seed: int,
    suffix: str,
    progress: Callable[[int, int], None] | None,
    make_case: Callable[[int, int], Phantom],
    workers: int = 1,
) -> Path:
    """Write ``make_case(index, case_seed)`` for each case (in ``workers`` forked processes where the
    platform forks) and the manifest listing them; returns the manifest's path."""
    global _MAKE_CASE
    _MAKE_CASE = make_case
    write = partial(_write_indexed_case, out, seed, suffix)
    forks = workers > 1 and cases > 1 and os.name == "posix"
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, cases)) if forks else nullcontext() as pool:
            records = pool.imap(write, range(cases)) if pool else map(write, range(cases))
            for done, record in enumerate(records, 1):
                manifest["cases"].append(record)
                if progress:
                    progress(done, cases)
    finally:
        _MAKE_CASE = None
    path = out / "manifest.json"
    write_json(path, manifest)
    return path
