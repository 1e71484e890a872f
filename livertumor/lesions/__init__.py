"""Joint liver-lesion segmentation and classification (Heker and Greenspan): 2D SE-ResNet networks on
liver crops, the paper's four frameworks, transfer learning and per-lesion classification of a CT."""

LESION_CLASSES = ("cyst", "hemangioma", "metastasis")
