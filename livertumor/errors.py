"""Exceptions raised for bad input. Each names what is wrong and, where it helps, what to do.

All derive from :class:`LiverTumorError` (itself a :class:`ValueError`), so callers can catch one type.
"""

from __future__ import annotations


class LiverTumorError(ValueError):
    """Base class of every input error the library raises on purpose."""


class ImageReadError(LiverTumorError):
    """A file or folder could not be read as an image (missing, unreadable, truncated, unknown format)."""


class DimensionError(LiverTumorError):
    """The image is not a 3D scalar volume (2D, 4D, or several components per voxel)."""


class NotCTError(LiverTumorError):
    """The voxel values are not Hounsfield units of a CT (an MR, a 0..255 picture, a mask...)."""


class GridMismatchError(LiverTumorError):
    """Two volumes that must share a voxel grid (image and label, prediction and truth) do not."""


class LabelValueError(LiverTumorError):
    """A label map holds values outside the expected set."""


class MissingPairError(LiverTumorError):
    """A data set holds an image without its label map, or a label map without its image."""


class DatasetError(LiverTumorError):
    """A data set folder has no recognised layout or no usable cases."""


def require_number(name: str, value, low: float, high: float, integer: bool = False):
    """``value`` if it is a finite number (an integer if ``integer``) within ``low..high``; else a
    :class:`LiverTumorError` naming the setting. Model cards and configs are checked with it before
    anything is allocated from them."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not (low <= value <= high):
        kind = "a whole number" if integer else "a number"
        raise LiverTumorError(f"setting {name} = {value!r} must be {kind} in {low:g}..{high:g}")
    return value


class ImageWriteError(LiverTumorError):
    """An output cannot be written where asked: it would replace an input or another output, it exists
    (without ``--overwrite``), the folder is not writable or another run is writing into it."""
