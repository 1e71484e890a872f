"""The one value type of the library: a voxel array together with its exact place in patient space.

Conventions (those of ITK/SimpleITK and DICOM, so nothing is converted on reading):

* ``array`` is indexed ``[k, j, i]`` = ``[z, y, x]`` (slice, row, column), as ``sitk.GetArrayFromImage``.
* ``spacing``, ``origin`` and ``direction`` are in ``(x, y, z)`` order and in LPS patient coordinates (mm).
* ``direction`` is a 3x3 matrix whose *columns* are the unit vectors of the i, j, k index axes, so
  ``physical = origin + direction @ (spacing * (i, j, k))``.

Slicer works in RAS; the Slicer modules convert at their boundary, never here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import GridMismatchError

#: Geometry tolerance: 1e-4 relative on spacing/direction, 1e-3 mm on origin. DICOM headers written as
#: decimal strings differ from NRRD/NIfTI floats of the same scan by ~1e-12..1e-6 (see Testing).
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape in array order ``(z, y, x)``; spacing, origin, direction in ``(x, y, z)`` LPS."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(s) for s in self.origin))
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        direction.setflags(write=False)
        object.__setattr__(self, "direction", direction)
        if len(self.shape) != 3 or len(self.spacing) != 3 or len(self.origin) != 3:
            raise ValueError(f"a grid is 3D: got shape {self.shape}, spacing {self.spacing}")
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in array axis order, for distances computed on ``array`` indices."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (cm³)."""
        return float(np.prod(self.spacing)) / 1000.0

    def index_to_physical(self, index_zyx: np.ndarray) -> np.ndarray:
        """Map array indices ``(..., 3)`` in ``(z, y, x)`` order to LPS points ``(..., 3)`` in mm."""
        ijk = np.asarray(index_zyx, dtype=np.float64)[..., ::-1]
        return np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.direction.T

    def physical_to_index(self, points_lps: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`index_to_physical`: continuous ``(z, y, x)`` indices of LPS points."""
        offset = np.asarray(points_lps, dtype=np.float64) - np.asarray(self.origin)
        ijk = (offset @ np.linalg.inv(self.direction).T) / np.asarray(self.spacing)
        return ijk[..., ::-1]

    def crop(self, start_zyx: tuple[int, int, int], stop_zyx: tuple[int, int, int]) -> Grid:
        """The sub-grid of indices ``start <= index < stop`` (same spacing and direction, moved origin)."""
        origin = self.index_to_physical(np.asarray(start_zyx, dtype=np.float64))
        shape = tuple(int(b) - int(a) for a, b in zip(start_zyx, stop_zyx))
        return Grid(shape, self.spacing, tuple(origin), self.direction)

    def orientation(self) -> str:
        """Three-letter code of the patient directions the i, j, k axes point to, e.g. ``"LPS"``.

        Oblique axes get the letter of their largest component.
        """
        letters = (("L", "R"), ("P", "A"), ("S", "I"))
        code = ""
        for axis in range(3):
            column = self.direction[:, axis]
            dominant = int(np.argmax(np.abs(column)))
            code += letters[dominant][0 if column[dominant] > 0 else 1]
        return code

    def is_oblique(self) -> bool:
        """Whether any index axis is not aligned with a patient axis."""
        return not np.allclose(np.abs(self.direction), np.round(np.abs(self.direction)), atol=DIRECTION_ATOL)

    def same_as(self, other: Grid) -> bool:
        """Whether two grids coincide within the geometry tolerances above."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, rtol=SPACING_RTOL, atol=0)
            and np.allclose(self.origin, other.origin, rtol=0, atol=ORIGIN_ATOL_MM)
            and np.allclose(self.direction, other.direction, rtol=0, atol=DIRECTION_ATOL)
        )

    def describe(self) -> str:
        """One line for error messages and logs."""
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        origin = ", ".join(f"{o:.4g}" for o in self.origin)
        return f"shape (z,y,x) {self.shape}, spacing (x,y,z) ({spacing}) mm, origin ({origin}) mm, {self.orientation()}"

    def require_same(self, other: Grid, this: str = "the first volume", that: str = "the second volume") -> None:
        """Raise :class:`GridMismatchError` unless the grids coincide: one line naming ``this`` (on this
        grid) and ``that`` (on ``other``), each with its grid, in that order."""
        if not self.same_as(other):
            raise GridMismatchError(
                f"{this} and {that} are not on the same voxel grid ({this}: {self.describe()}; {that}: "
                f"{other.describe()}); resample one onto the other first (e.g. in Slicer: Resample Image "
                "(BRAINS) or Segmentations > Export to labelmap with the CT as reference)"
            )


@dataclass(frozen=True)
class Volume:
    """A 3D scalar voxel array on a :class:`Grid`."""

    array: np.ndarray
    grid: Grid

    def __post_init__(self) -> None:
        if tuple(self.array.shape) != self.grid.shape:
            raise ValueError(f"array shape {self.array.shape} does not match grid shape {self.grid.shape}")

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
        direction: np.ndarray | None = None,
    ) -> Volume:
        """A volume from a ``(z, y, x)`` array and ``(x, y, z)`` geometry."""
        grid = Grid(array.shape, spacing, origin, np.eye(3) if direction is None else direction)
        return cls(np.asarray(array), grid)

    def with_array(self, array: np.ndarray) -> Volume:
        """The same grid holding another array (e.g. a prediction)."""
        return Volume(np.asarray(array), self.grid)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.grid.shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.grid.spacing

    @property
    def origin(self) -> tuple[float, float, float]:
        return self.grid.origin

    @property
    def direction(self) -> np.ndarray:
        return self.grid.direction

    def crop(self, start_zyx: tuple[int, int, int], stop_zyx: tuple[int, int, int]) -> Volume:
        """The sub-volume ``array[start:stop]`` with its origin moved so it stays in place in space."""
        window = tuple(slice(int(a), int(b)) for a, b in zip(start_zyx, stop_zyx))
        return Volume(self.array[window], self.grid.crop(start_zyx, stop_zyx))
