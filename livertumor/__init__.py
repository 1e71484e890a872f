"""LiverTumorAI: liver tumour segmentation and lesion classification on CT.

Pure Python and PyTorch; never imports Slicer, Qt or VTK, so the same code runs in Slicer's Python,
headless batch runs and on a GPU server. Research use only, not for diagnosis.
"""

__version__ = "0.1.0"
