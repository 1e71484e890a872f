"""LiverTumorAI: liver tumour segmentation and lesion classification on CT.

Pure Python and PyTorch; never imports Slicer, Qt or VTK, so the same code runs in Slicer's Python,
headless batch runs and on a GPU server. Research use only, not for diagnosis.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "classify_lesions", "segment"]


def __getattr__(name: str):
    # `livertumor.segment(...)` / `livertumor.classify_lesions(...)` for the Python console, without
    # importing torch for `livertumor info`.
    if name == "segment":
        from .inference import segment

        return segment
    if name == "classify_lesions":
        from .lesions.classify import classify_lesions

        return classify_lesions
    raise AttributeError(f"module 'livertumor' has no attribute {name!r}")
