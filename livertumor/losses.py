"""The weighted Dice loss of Li et al., equations (1) and (2).

For one input volume with predicted class probabilities ``p^c`` and one-hot truth ``g^c`` (sums over voxels):

    L = 1 - sum_c w^c (2 sum(p^c g^c) + eps) / (sum p^c + sum g^c + eps)            (1)
    w^c = (sum_{i != c} sum g^i + eps) / (sum_i sum g^i + eps)                        (2)

A class's weight is the share of voxels that are *not* that class, so rare tumour voxels weigh almost 1
and the abundant background almost 0. The weights depend on the truth only and carry no gradient. For
two classes they sum to 1 (so L lies in [0, 1]); for C classes they sum to C - 1, as the equations say.

``eps``: the paper asks for "a very small number". 1.0 is tiny against the 10^5..10^7 voxels of a
volume, yet unlike 1e-5 it keeps a gradient on volumes without tumour (the negative patches of stage 2):
there the tumour term is eps / (sum p + eps), whose gradient vanishes as eps -> 0.

That same term is a hazard: it pays up to a whole point of loss for a tumour-free block whose summed
tumour probability falls below one voxel, a reward a network can take by marking no tumour anywhere
(measured in docs/results/demo-model.md). ``present-dice`` keeps eq. 1-2 for the classes a block's truth
holds and drops the term of a class it does not: a tumour-free block then teaches through its background
and liver terms (tumour probability there lowers their Dice) with no reward for an empty tumour map.
Measured there, it also loses the term's use: without it false tumour doubled and no more small lesions
were found, so the paper's loss stays the default.

``floored-dice`` keeps the term and its penalty on false tumour, but stops paying below a floor: an absent
class's summed probability counts as at least ``EMPTY_MAP_FLOOR`` voxels, so the last 0.9 of the reward, which
only a map with (almost) no tumour anywhere earns, is gone along with its gradient. Above the floor it is
the paper's loss.

``floored-lesion-ce`` adds a cross-entropy per lesion. The demo models missed every small hemangioma as
bright as the blood pool, even on the phantoms they were trained on, with a tumour probability of 0.000 there
(docs/results/demo-model.md). Two things keep a Dice loss from teaching them. Eq. 1 pools a block's tumour
voxels, so a 30-voxel lesion beside a 1,700-voxel one earns 2 % of the tumour term. And a Dice loss's gradient
on a voxel's logit carries that voxel's probability as a factor, so a lesion the network is sure is liver gets
almost none (a Dice per lesion, the blob loss of Kofler et al., IPMI 2023, was measured and did not find
them either). The term is a cross-entropy, whose gradient does not fade on a confident mistake, over each
lesion (connected component of the tumour truth) and the 2-voxel shell of tissue around it, every voxel of
the two alike, so what it teaches is the lesion against its own surroundings (the vessels beside it, say).
Each lesion's neighbourhood weighs the same whatever its size. Weighing the shell as much as the lesion
instead made 0.5 the best tumour probability wherever a lesion cannot be told from its surroundings: that run
called 226-1,554 mL of a lesion-free phantom's liver tumour (docs/results/demo-model.md).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn

#: Voxels of summed probability below which ``floored-dice`` stops rewarding an absent class's map. Version 6
#: (2.5 mm), which never slid to an empty map, leaves a median 8.8 voxels of tumour probability in tumour-free
#: blocks; the 2.0 mm run that slid went from 67 voxels to 0.2 within six epochs. At 10 voxels the term still
#: pays 1/11 of a point for a cleared block, and 10 voxels at 2.0 mm are 0.08 mL, far below a false tumour
#: that counts (the demo's target: < 5 mL per lesion-free phantom).
EMPTY_MAP_FLOOR = 10.0


def weighted_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    eps: float = 1.0,
    skip_absent: bool = False,
    absent_floor: float = 0.0,
) -> torch.Tensor:
    """Equations (1)-(2) for ``logits`` ``(N, C, *spatial)`` and ``target``: integer classes
    ``(N, *spatial)``, or each class's share of each voxel ``(N, C, *spatial)`` (soft targets, which the
    equations take as they are: ``g^c`` is then a share, not 0 or 1).

    Each volume of the batch gets its own weights (eq. 2 is per input volume); the batch mean is returned.
    ``skip_absent`` drops, per volume, the term of every class its truth does not contain (weight 0);
    ``absent_floor`` counts such a class's summed probability as at least that many voxels (no reward, and no
    gradient, for clearing its map below the floor).
    """
    probabilities = torch.softmax(logits.float(), dim=1)
    one_hot = _class_shares(target, logits.shape[1]).to(probabilities.dtype)
    dims = tuple(range(2, logits.ndim))
    intersection = (probabilities * one_hot).sum(dims)
    predicted = probabilities.sum(dims)
    truth = one_hot.sum(dims)
    total = truth.sum(dim=1, keepdim=True)
    weights = ((total - truth + eps) / (total + eps)).detach()
    if skip_absent:
        weights = weights * (truth > 0)
    if absent_floor:
        predicted = torch.where(truth > 0, predicted, predicted.clamp_min(absent_floor))
    dice = (2.0 * intersection + eps) / (predicted + truth + eps)
    return (1.0 - (weights * dice).sum(dim=1)).mean()


def _class_shares(target: torch.Tensor, classes: int) -> torch.Tensor:
    """``target`` as (N, C, *spatial) shares: integer class maps one-hot encoded, shares as they are."""
    if target.is_floating_point():
        return target
    return torch.nn.functional.one_hot(target.long(), classes).movedim(-1, 1)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """The weighted Dice loss plus voxel-wise cross-entropy (equal weights, as nnU-Net's Dice + CE).

    Dice alone gives a block without tumour almost no gradient on the tumour class, and its gradient
    for a voxel depends on every other voxel of the block: with batch-1 blocks it is noisy and slow to
    start. Cross-entropy adds a dense, per-voxel signal (measured in docs/results/recipe.md).
    """
    labels = target if target.is_floating_point() else target.long()  # cross_entropy takes shares too
    return weighted_dice_loss(logits, target, eps) + torch.nn.functional.cross_entropy(logits.float(), labels)


def present_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Equations (1)-(2) over the classes each volume's truth holds (no reward for an empty class map)."""
    return weighted_dice_loss(logits, target, eps, skip_absent=True)


def floored_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Equations (1)-(2) with an absent class's map rewarded down to ``EMPTY_MAP_FLOOR`` voxels, not below."""
    return weighted_dice_loss(logits, target, eps, absent_floor=EMPTY_MAP_FLOOR)


#: Weight of the per-lesion term against eq. 1-2: blob loss's 1 to 2 (Kofler et al.: alpha 2, beta 1).
LESION_TERM_WEIGHT = 0.5
#: Voxels around each lesion that its cross-entropy term also covers (4 mm at the demo's 2.0 mm).
LESION_SHELL_VOXELS = 2


def lesion_ce_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per lesion, the mean cross-entropy over its voxels and the shell of :data:`LESION_SHELL_VOXELS` around
    it; averaged over each volume's lesions and then over the batch (0 for a volume without one). ``eps`` is
    unused (the losses share one signature).

    A lesion is a connected component (26-neighbourhood) of the last class in ``target`` (the tumour; soft
    targets are read as their largest share). A shell voxel near two lesions counts for the higher-numbered.
    """
    del eps
    labels = target.argmax(dim=1) if target.is_floating_point() else target.long()
    lesion_class = logits.shape[1] - 1
    losses = []
    for volume_logits, volume_labels in zip(logits.float().flatten(2), labels.flatten(1)):
        mask = (volume_labels == lesion_class).view(labels.shape[1:]).cpu().numpy()
        ids, count = ndimage.label(mask, np.ones((3,) * mask.ndim, bool))
        if count == 0:
            losses.append(volume_logits.sum() * 0.0)  # keeps the graph whole
            continue
        shell = np.where(ids > 0, 0, ndimage.maximum_filter(ids, size=2 * LESION_SHELL_VOXELS + 1)).ravel()
        lesion_of = ids.ravel() + shell  # 1-based lesion number of each voxel the term covers, else 0
        covered = np.flatnonzero(lesion_of)
        index = torch.from_numpy(covered).to(logits.device)
        ce = torch.nn.functional.cross_entropy(volume_logits[:, index].T, volume_labels[index], reduction="none")
        neighbourhood = torch.from_numpy(lesion_of[covered] - 1).to(logits.device, torch.long)
        summed = torch.zeros(count, device=logits.device).index_add_(0, neighbourhood, ce)
        losses.append((summed / torch.bincount(neighbourhood, minlength=count).to(summed.dtype)).mean())
    return torch.stack(losses).mean()


def floored_lesion_ce_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``floored-dice`` plus :data:`LESION_TERM_WEIGHT` times :func:`lesion_ce_loss`."""
    return floored_dice_loss(logits, target, eps) + LESION_TERM_WEIGHT * lesion_ce_loss(logits, target)


#: Training losses by name: ``weighted-dice`` is the paper's (eq. 1-2).
LOSSES = {
    "weighted-dice": weighted_dice_loss,
    "dice-ce": dice_ce_loss,
    "present-dice": present_dice_loss,
    "floored-dice": floored_dice_loss,
    "floored-lesion-ce": floored_lesion_ce_loss,
}


class WeightedDiceLoss(nn.Module):
    """Module form of :func:`weighted_dice_loss`."""

    def __init__(self, eps: float = 1.0) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return weighted_dice_loss(logits, target, self.eps)
