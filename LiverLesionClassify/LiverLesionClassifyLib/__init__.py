"""Logic of the LiverLesionClassify module: importable without Qt or the Slicer application."""

from .logic import LiverLesionClassifyLogic

__all__ = ["LiverLesionClassifyLogic"]
