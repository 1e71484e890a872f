"""LiverTumorAI: liver tumour segmentation and lesion classification on CT.

Pure Python and PyTorch; never imports Slicer, Qt or VTK, so the same code runs in Slicer's Python,
headless batch runs and on a GPU server. Research use only, not for diagnosis.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "segment"]


def __getattr__(name: str):
    # `livertumor.segment(...)` for the Python console, without importing torch for `livertumor info`.
    if name == "segment":
        from .inference import segment

        return segment
    raise AttributeError(f"module 'livertumor' has no attribute {name!r}")
