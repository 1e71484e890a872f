"""Losses and decisions of the lesion frameworks: frequency-weighted cross-entropy, the Y-Net's combined
loss, and the joint framework's majority vote."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def inverse_frequency_weights(counts: np.ndarray | torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Class weights inversely proportional to class frequency, normalised to mean 1 over the classes
    (the segmentation baseline's weighting). ``counts``: pixels (or samples) per class."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    weights = counts.sum() / (counts + eps)
    return (weights / weights.mean()).float()


def ynet_loss(
    segmentation_logits: torch.Tensor,
    segmentation_target: torch.Tensor,
    classification_logits: torch.Tensor,
    classification_target: torch.Tensor,
    weight: float = 0.5,
    segmentation_class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """L = lambda * L_seg + (1 - lambda) * L_cls, both cross-entropies (the segmentation one weighted)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {weight}")
    segmentation = nn.functional.cross_entropy(
        segmentation_logits, segmentation_target, weight=segmentation_class_weights
    )
    classification = nn.functional.cross_entropy(classification_logits, classification_target)
    return weight * segmentation + (1.0 - weight) * classification


def majority_vote(pixel_classes: np.ndarray, lesion_mask: np.ndarray, classes: int = 3) -> tuple[int, np.ndarray]:
    """The lesion's class in the joint framework: the class most of its pixels carry.

    ``pixel_classes`` holds lesion classes 0..classes-1 (or -1 for a pixel predicted as no lesion) for
    each pixel; only pixels of ``lesion_mask`` vote, and non-lesion predictions abstain. Returns the
    winning class and the vote counts; ties go to the lower class index; a lesion with no vote gets -1.
    """
    votes = pixel_classes[lesion_mask.astype(bool)]
    counts = np.bincount(votes[votes >= 0].astype(np.int64), minlength=classes)[:classes]
    return (int(np.argmax(counts)) if counts.sum() else -1), counts
