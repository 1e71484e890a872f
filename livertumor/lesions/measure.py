"""Measurements of each lesion of a label map: what a radiologist's report and Slicer's lesion table show."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ..volume import Volume


@dataclass(frozen=True)
class LesionMeasurement:
    """One lesion (26-connected component): size and place in patient coordinates (LPS, mm)."""

    id: int
    voxels: int
    volume_ml: float
    longest_axial_diameter_mm: float
    centroid_lps_mm: tuple[float, float, float]
    centroid_index_zyx: tuple[float, float, float]

    def to_json(self) -> dict:
        return asdict(self)


def lesion_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected lesion components (ids 1..N, scan order), as ``metrics`` counts them."""
    return ndimage.label(mask, structure=np.ones((3, 3, 3), bool))


def _longest_in_plane(points: np.ndarray) -> float:
    """Largest distance between 2D points (mm), through their convex hull when there are many."""
    if len(points) > 3:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:  # collinear points: every point may be an extreme
            pass
    differences = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((differences**2).sum(-1)).max())


def measure_lesions(mask: Volume, label: int | None = None) -> tuple[np.ndarray, list[LesionMeasurement]]:
    """The lesion components of ``mask`` (``label`` value, or every non-zero voxel) and their measurements.

    Returns the component map (ids 1..N in the order of the measurements) and one
    :class:`LesionMeasurement` per component. The longest axial diameter is the largest in-slice
    distance between voxel centres, plus one in-plane voxel (so it runs edge to edge, and a one-voxel
    lesion measures one voxel), over all slices of the lesion.
    """
    binary = mask.array == label if label is not None else mask.array != 0
    ids, _ = lesion_components(binary)
    spacing_x, spacing_y = mask.spacing[0], mask.spacing[1]
    results = []
    for number, box in enumerate(ndimage.find_objects(ids), start=1):
        component = ids[box] == number
        coordinates = np.argwhere(component) + [s.start for s in box]
        longest = 0.0
        for z in np.unique(coordinates[:, 0]):
            in_slice = coordinates[coordinates[:, 0] == z][:, 1:] * [spacing_y, spacing_x]
            longest = max(longest, _longest_in_plane(in_slice.astype(np.float64)))
        centroid = coordinates.mean(0)
        results.append(
            LesionMeasurement(
                id=number,
                voxels=len(coordinates),
                volume_ml=len(coordinates) * mask.grid.voxel_volume_ml,
                longest_axial_diameter_mm=longest + (spacing_x + spacing_y) / 2,
                centroid_lps_mm=tuple(float(v) for v in mask.grid.index_to_physical(centroid)),
                centroid_index_zyx=tuple(float(v) for v in centroid),
            )
        )
    return ids, results
