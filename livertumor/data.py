"""Training data of the curriculum: whole input volumes (sub-images) and tumour patches.

Each case is prepared once (body crop, spacing interpolation, HU window, effective range: the paper's
preprocessing, with the parameters of the model's :class:`~livertumor.preprocess.PreprocessConfig`). A
sample is then drawn from a random generator seeded by ``(seed, stage, epoch, index)``, so what a sample
holds depends neither on the number of loader workers nor on whether the run was resumed: runs are
reproducible and a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from .datasets import Case
from .errors import DatasetError
from .io import read_ct, read_label
from .networks import round_up
from .preprocess import (
    PreprocessConfig,
    body_box,
    effective_range,
    extract_block,
    resample_label,
    resample_to_grid,
    resample_to_spacing,
    sub_image_starts,
    window_hu,
)
from .volume import Grid

#: What a network learns: ``tumour`` (tumour vs rest), ``liver`` (liver with its tumours vs rest) or
#: ``joint`` (background / liver / tumour: a tumour network that learns the liver as context, see
#: docs/design.md).
Task = Literal["tumour", "liver", "joint"]
TUMOUR, LIVER = 2, 1


def task_for(classes: int) -> Task:
    """The tumour network's task for a network with ``classes`` outputs (2: tumour, 3: joint)."""
    if classes not in (2, 3):
        raise ValueError(f"a tumour network has 2 or 3 classes, not {classes}")
    return "joint" if classes == 3 else "tumour"


def foreground_channel(task: Task) -> int:
    """The output channel of the structure the task is scored on (tumour, or liver for ``liver``)."""
    return TUMOUR if task == "joint" else 1


@dataclass(frozen=True)
class PreparedCase:
    """A training case on the network's grid: windowed image in [0, 1] and the 0/1/2 label map, and where
    asked for, ``shares`` (3, D, H, W): each label's share of each voxel (see :func:`prepare_case`)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    grid: Grid
    shares: np.ndarray | None = None

    def target(self, task: Task) -> np.ndarray:
        """The class map a network learns (see :data:`Task`)."""
        if task == "joint":
            return self.label.astype(np.uint8)
        return (self.label == TUMOUR if task == "tumour" else self.label >= LIVER).astype(np.uint8)

    def soft_target(self, task: Task) -> np.ndarray:
        """The classes' shares of each voxel for ``task``, (C, D, H, W) summing to 1 per voxel (float16, as
        stored: a few hundred training cases hold gigabytes of them)."""
        if self.shares is None:
            raise DatasetError(f"case {self.name} was prepared without label shares")
        if task == "joint":
            return self.shares
        foreground = self.shares[TUMOUR] if task == "tumour" else self.shares[LIVER] + self.shares[TUMOUR]
        return np.stack([1.0 - foreground, foreground])

    def scored(self, task: Task) -> np.ndarray:
        """The true mask of the structure the task is scored on."""
        return self.label == TUMOUR if task != "liver" else self.label >= LIVER


def prepare_case(case: Case, config: PreprocessConfig, shares: bool = False) -> PreparedCase:
    """Read a case and apply the training preprocessing (effective range included).

    ``shares``: also each label's share of each voxel of the network's grid, its one-hot map on the case's
    own (finer) grid interpolated linearly, so a voxel the liver's outline cuts is, say, 0.4 liver. Soft
    targets let a network say where between voxel centres an outline runs (docs/results/demo-model.md)."""
    ct = read_ct(case.image)
    fine = read_label(case.label, reference=ct.grid)
    if config.crop_body:
        start, stop = body_box(ct)
        ct, fine = ct.crop(start, stop), fine.crop(start, stop)
    ct = resample_to_spacing(ct, config.spacing, config.interpolation)
    label = resample_label(fine, ct.grid)
    first, last = effective_range(label.array, config.range_margin)
    ct = ct.crop((first, 0, 0), (last, *ct.shape[1:]))
    label = label.crop((first, 0, 0), (last, *label.shape[1:]))
    image = window_hu(ct.array, config.window_width, config.window_center)
    share_maps = None
    if shares:
        share_maps = np.stack(
            [
                resample_to_grid(fine.with_array(fine.array == value), ct.grid, "linear").array
                for value in (0, LIVER, TUMOUR)
            ]
        )
        share_maps[0] = 1.0 - share_maps[1:].sum(0)  # outside the case's grid: background
        share_maps = np.clip(share_maps, 0.0, 1.0).astype(np.float16)
    return PreparedCase(case.name, image, label.array.astype(np.uint8), ct.grid, share_maps)


def require_tumour(cases: Sequence[PreparedCase], source: str = "the training data") -> None:
    """Refuse a data set without any tumour voxel: the curriculum has nothing to learn from it."""
    if not any((c.label == TUMOUR).any() for c in cases):
        raise DatasetError(f"{source} holds no tumour (label 2) in any of its {len(cases)} cases")


def tumour_patch_size(cases: Sequence[PreparedCase], divisor: int, limit: Sequence[int]) -> tuple[int, int, int]:
    """Stage 2's patch: the largest tumour bounding box of the training set (the paper's rule), rounded up
    to what the network's poolings need, at least two voxels per axis at the deepest level (instance norm
    needs more than one value to train), and no larger than the whole-volume block."""
    largest = np.zeros(3, int)
    structure = np.ones((3, 3, 3), bool)
    for case in cases:
        ids, _ = ndimage.label(case.label == TUMOUR, structure)
        for box in ndimage.find_objects(ids):
            largest = np.maximum(largest, [s.stop - s.start for s in box])
    minimum = 2 * divisor
    return tuple(min(max(int(b), minimum), int(s)) for b, s in zip(round_up(np.maximum(largest, 1), divisor), limit))


@dataclass(frozen=True)
class Augmentation:
    """Random changes a careful expert applies to CT training samples.

    Flips are off by default: the liver lies on the patient's right, and a network that segments
    without a liver mask uses that context. Rotations are about the slice axis only (patients lie on
    their back), scalings mimic body size, intensity jitter mimics contrast timing and scanners.

    The scanner changes (each applied with its probability, all 0 by default so that earlier settings
    replay as they were) are nnU-Net's intensity augmentations, with its probabilities and ranges in
    :data:`SCANNER_AUGMENTATION`, on the windowed image (1 = the window's 200 HU): white noise of sd
    up to ``noise_sd`` (dose), a Gaussian blur of ``blur_sigma`` voxels (softer kernels, thicker
    slices), contrast about the block's mean scaled by ``contrast`` (how far organs stand apart), a
    coarser grid by ``low_resolution`` (resampled down and back), and a gamma curve ``gamma`` (moves
    mid-grey tissue against fat and bone). Phantoms draw one tissue table per phase; these changes
    are what keeps a network from learning its exact grey levels.
    """

    enabled: bool = True
    rotate_degrees: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    flip_axes: tuple[int, ...] = ()
    noise_probability: float = 0.0
    noise_sd: float = 0.05
    blur_probability: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    contrast_probability: float = 0.0
    contrast: tuple[float, float] = (0.75, 1.25)
    low_resolution_probability: float = 0.0
    low_resolution: tuple[float, float] = (1.0, 2.0)
    gamma_probability: float = 0.0
    gamma: tuple[float, float] = (0.7, 1.5)

    def apply(self, image: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augment one ``(D, H, W)`` sample; returns new arrays of the same shape. ``target``: a class map
        ``(D, H, W)`` (moved by nearest neighbour) or the classes' shares ``(C, D, H, W)`` (moved linearly,
        channel 0 the background that fills in from outside)."""
        if not self.enabled:
            return image, target
        angle = math.radians(rng.uniform(-self.rotate_degrees, self.rotate_degrees))
        zoom = rng.uniform(*self.scale)
        soft = target.ndim == image.ndim + 1
        if abs(angle) > 1e-6 or abs(zoom - 1.0) > 1e-6:
            # affine_grid works in (x, y, z) normalised coordinates; rotate in the x-y plane.
            cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
            theta = torch.tensor([[[cos, -sin, 0.0, 0.0], [sin, cos, 0.0, 0.0], [0.0, 0.0, 1.0 / zoom, 0.0]]])
            shape = (1, 1, *image.shape)
            grid = torch.nn.functional.affine_grid(theta, shape, align_corners=False)
            image = _sample(image, grid, "bilinear")
            if soft:
                target = np.stack([_sample(channel, grid, "bilinear") for channel in target])
                target[0] = 1.0 - target[1:].sum(0)
            else:
                target = _sample(target.astype(np.float32), grid, "nearest").astype(target.dtype)
        image = image * np.float32(1 + rng.uniform(-self.intensity_scale, self.intensity_scale))
        image = image + np.float32(rng.uniform(-self.intensity_shift, self.intensity_shift))
        image = self._scanner(image, rng)
        for axis in self.flip_axes:
            if rng.random() < 0.5:
                image, target = np.flip(image, axis), np.flip(target, axis + soft)
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(target)

    def _scanner(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The scanner changes, in nnU-Net's order; a change with probability 0 draws nothing."""

        def drawn(probability: float) -> bool:
            return probability > 0 and rng.random() < probability

        if drawn(self.noise_probability):
            sd = rng.uniform(0.0, self.noise_sd)
            image = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sd)
        if drawn(self.blur_probability):
            image = ndimage.gaussian_filter(image, rng.uniform(*self.blur_sigma, size=3), truncate=3.0)
        if drawn(self.contrast_probability):
            low, high, mean = image.min(), image.max(), image.mean()
            image = np.clip((image - mean) * np.float32(rng.uniform(*self.contrast)) + mean, low, high)
        if drawn(self.low_resolution_probability):
            coarse = [max(1, round(n / rng.uniform(*self.low_resolution))) for n in image.shape]
            tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
            tensor = torch.nn.functional.interpolate(tensor, size=coarse, mode="nearest")
            image = torch.nn.functional.interpolate(tensor, size=image.shape, mode="trilinear")[0, 0].numpy()
        if drawn(self.gamma_probability):
            low, high = image.min(), image.max()
            span = max(float(high - low), 1e-6)
            image = ((image - low) / span) ** np.float32(rng.uniform(*self.gamma)) * span + low
        return image


#: nnU-Net's intensity augmentations with its default probabilities and ranges, but for the noise: its sd
#: is up to 0.05 of the window (10 HU, about the phantoms' own 12 HU), where nnU-Net's is in units of an
#: image normalised to unit sd. For networks that must meet real scans after training on phantoms.
SCANNER_AUGMENTATION = Augmentation(
    noise_probability=0.1,
    blur_probability=0.2,
    contrast_probability=0.15,
    low_resolution_probability=0.25,
    gamma_probability=0.3,
)


#: A tumour lies at the liver's surface when at least this share of the voxels around it is background.
#: On the phantoms' own grids (30 phantoms, 75 lesions) subcapsular lesions have 0.25-0.43 of their
#: shell in the background, nine in ten of the others at most 0.13 (they bulge a little out of the liver).
SURFACE_SHARE = 0.2


def _at_surface(ids: np.ndarray, label: np.ndarray, number: int, box: tuple[slice, ...]) -> bool:
    """Whether at least :data:`SURFACE_SHARE` of the one-voxel shell around component ``number`` of ``ids``
    (inside ``box``) is background (label 0)."""
    grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    inside = ids[grown] == number
    shell = ndimage.binary_dilation(inside, np.ones((3, 3, 3), bool)) & ~inside
    return bool((label[grown][shell] == 0).mean() >= SURFACE_SHARE)


def _sample(array: np.ndarray, grid: torch.Tensor, mode: str) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = torch.nn.functional.grid_sample(tensor, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out[0, 0].numpy()


class CurriculumSamples(Dataset):
    """Samples of one stage: whole input volumes (``kind="whole"``) or tumour patches (``"patch"``).

    ``length`` samples per epoch; call :meth:`set_epoch` before each epoch. Patches are positive
    (around a random tumour, anywhere inside the patch) with probability ``positive_fraction``, else
    negative (no tumour voxel). Whole-volume blocks hold a tumour with probability ``tumour_fraction``
    (foreground oversampling, as nnU-Net's), else come from the sub-image starts.

    The tumour a block is drawn around is chosen as if first a case and then one of its tumours were
    drawn uniformly, except that a tumour at the liver's surface (:data:`SURFACE_SHARE` of its shell is
    background; there cysts look like the fluid beside the liver) weighs ``surface_weight`` times as much.
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        kind: Literal["whole", "patch"],
        size: Sequence[int],
        stride: Sequence[int],
        length: int,
        seed: int,
        stage: int,
        task: Task = "tumour",
        positive_fraction: float = 0.5,
        augmentation: Augmentation = Augmentation(),
        region_fraction: float = 0.5,
        tumour_fraction: float = 0.0,
        surface_weight: float = 1.0,
        soft: bool = False,
    ) -> None:
        self.cases, self.kind, self.size, self.stride = list(cases), kind, tuple(size), tuple(stride)
        self.length, self.seed, self.stage, self.task = int(length), int(seed), int(stage), task
        self.positive_fraction, self.augmentation = positive_fraction, augmentation
        self.region_fraction, self.tumour_fraction = region_fraction, tumour_fraction
        self.epoch = 0
        self.targets = [case.target(task) for case in self.cases]
        #: with ``soft``, samples' targets are the classes' shares of each voxel (PreparedCase.soft_target)
        self.soft_targets = [case.soft_target(task) for case in self.cases] if soft else None
        self.all_starts = [sub_image_starts(case.image.shape, self.size, self.stride) for case in self.cases]
        self.region_starts = [self._region_starts(case, starts) for case, starts in zip(self.cases, self.all_starts)]
        if surface_weight <= 0:
            raise DatasetError(f"surface_weight must be > 0, got {surface_weight}")
        structure = np.ones((3, 3, 3), bool)
        self.tumours: list[tuple[int, tuple[slice, ...]]] = []  # (case, box) of every tumour
        weights = []
        for index, (case, target) in enumerate(zip(self.cases, self.targets)):
            ids, count = ndimage.label(target, structure)
            for number, box in enumerate(ndimage.find_objects(ids), 1):
                surface = _at_surface(ids, case.label, number, box)
                self.tumours.append((index, box))
                weights.append((surface_weight if surface else 1.0) / count)
        self.tumour_weights = np.asarray(weights) / sum(weights) if weights else np.zeros(0)
        self.positive_cases = sorted({index for index, _ in self.tumours})
        if kind == "patch" and not self.positive_cases:
            raise DatasetError("tumour patches need at least one case with a tumour")

    def _region_starts(self, case: PreparedCase, starts: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """The sub-image starts whose block centre lies in the labelled region's box.

        The paper's 64x256x256 sub-images span whole slices of the effective range, so each shows liver.
        Small CPU blocks mostly miss it; a share (``region_fraction``) of whole-volume samples is drawn
        from these starts to keep liver in view, the rest from anywhere, so the network still sees the
        spleen, kidneys and bowel it must not call tumour.
        """
        labelled = np.argwhere(case.label > 0)
        if labelled.size == 0:
            return starts
        low, high = labelled.min(0), labelled.max(0)
        half = np.asarray(self.size) // 2
        kept = [s for s in starts if np.all(np.asarray(s) + half >= low) and np.all(np.asarray(s) + half <= high)]
        return kept or starts

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.stage, self.epoch, int(index)])
        if self.kind == "whole" and self.positive_cases and rng.random() < self.tumour_fraction:
            case, start = self._positive_start(rng)
        elif self.kind == "whole":
            case = int(rng.integers(len(self.cases)))
            starts = self.region_starts[case] if rng.random() < self.region_fraction else self.all_starts[case]
            start = starts[int(rng.integers(len(starts)))]
        elif rng.random() < self.positive_fraction:
            case, start = self._positive_start(rng)
        else:
            case, start = self._negative_start(rng)
        image = extract_block(self.cases[case].image, start, self.size, 0.0)
        if self.soft_targets is not None:
            shares = self.soft_targets[case]
            target = np.stack([extract_block(c, start, self.size, float(i == 0)) for i, c in enumerate(shares)])
        else:
            target = extract_block(self.targets[case], start, self.size, 0)
        image, target = self.augmentation.apply(image, target, rng)
        dtype = np.float32 if self.soft_targets is not None else np.int64
        return torch.from_numpy(image)[None], torch.from_numpy(target.astype(dtype))

    def _positive_start(self, rng: np.random.Generator) -> tuple[int, tuple[int, ...]]:
        case, box = self.tumours[int(rng.choice(len(self.tumours), p=self.tumour_weights))]
        shape = self.cases[case].image.shape
        start = []
        for s, length, n in zip(box, self.size, shape):
            low, high = s.stop - length, s.start  # every start that keeps the tumour inside the patch
            if low > high:  # tumour larger than the patch: centre it
                low = high = (s.start + s.stop - length) // 2
            low, high = max(low, 0), max(min(high, n - length), 0)
            start.append(int(rng.integers(min(low, high), max(low, high) + 1)))
        return case, tuple(start)

    def _negative_start(self, rng: np.random.Generator) -> tuple[int, tuple[int, ...]]:
        for _ in range(50):
            case = int(rng.integers(len(self.cases)))
            shape = self.cases[case].image.shape
            start = tuple(int(rng.integers(0, max(1, n - length + 1))) for n, length in zip(shape, self.size))
            window = tuple(slice(a, a + length) for a, length in zip(start, self.size))
            if not self.targets[case][window].any():
                return case, start
        return case, start  # tumour everywhere: accept a mixed patch rather than loop forever
