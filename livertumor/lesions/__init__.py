"""Joint liver-lesion segmentation and classification (Heker and Greenspan): 2D SE-ResNet networks on
liver crops, the paper's four frameworks, transfer learning and per-lesion classification of a CT."""

from ..phantom import LESION_CLASSES

__all__ = ["LESION_CLASSES"]
