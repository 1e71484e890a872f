"""Synthetic CT data: seeded abdominal phantoms with liver lesions of three kinds (training, test and demo
data), and synthetic lesions painted into real scans (:func:`synthesize`)."""

from .anatomy import ANATOMY_OPTIONS, DEFAULT_SHAPE, DEFAULT_SPACING_ZYX, Phantom, make_phantom
from .dataset import LESION_FREE_EVERY, dataset_phantoms, phantom_case_seed, write_phantom_dataset
from .lesion_kinds import LESION_CLASSES, SIZE_RANGES_MM
from .placement import LesionInfo
from .synthesize import synthesize, synthesize_case
from .tissues import PHASES, tissue_table

__all__ = [
    "ANATOMY_OPTIONS",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING_ZYX",
    "LESION_CLASSES",
    "LESION_FREE_EVERY",
    "PHASES",
    "SIZE_RANGES_MM",
    "LesionInfo",
    "Phantom",
    "dataset_phantoms",
    "make_phantom",
    "phantom_case_seed",
    "synthesize",
    "synthesize_case",
    "tissue_table",
    "write_phantom_dataset",
]
