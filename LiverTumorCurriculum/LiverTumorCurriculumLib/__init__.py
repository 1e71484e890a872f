"""Logic of the LiverTumorCurriculum module: importable without Qt or the Slicer application."""

from .logic import FinetuneCase, Job, LiverTumorCurriculumLogic, SegmentationResult

__all__ = ["FinetuneCase", "Job", "LiverTumorCurriculumLogic", "SegmentationResult"]
