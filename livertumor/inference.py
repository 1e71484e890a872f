"""Sliding-window inference with Gaussian blending, and ``segment``: a CT in, tumour labels on its grid out."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import LIVER, TUMOUR, foreground_channel, task_for
from .errors import LiverTumorError
from .networks import round_up
from .preprocess import (
    PreprocessConfig,
    axis_starts,
    extract_block,
    highest,
    prepare_ct_and_body,
    restore_to_grid,
    sub_image_starts,
)
from .volume import Grid, Volume

Progress = Callable[[float, str], None]


class DeviceError(LiverTumorError):
    """The requested compute device is not available here."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; a named device must exist here."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as error:
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} asked for, but this PyTorch sees no CUDA GPU; use --device cpu or auto")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"device {name!r} asked for, but Apple MPS is not available here")
    return resolved


def gaussian_importance(size: tuple[int, ...], sigma_fraction: float = 0.125) -> np.ndarray:
    """Weights that fall off from a window's centre (sigma = 1/8 of the side), so overlapping windows
    blend smoothly and a window's unreliable border counts least. Never zero."""
    axes = []
    for n in size:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        axes.append(np.exp(-0.5 * (x / max(n * sigma_fraction, 1e-6)) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights /= weights.max()
    return np.maximum(weights, 1e-3).astype(np.float32)


def resolve_precision(device: torch.device, precision: str) -> str:
    """``precision``: ``fp32``, ``bf16`` or ``auto`` (bf16 on GPU, fp32 on CPU)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return precision


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """PyTorch's autocast for ``precision`` (:func:`resolve_precision`); none for fp32."""
    if resolve_precision(device, precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def window_plan(
    shape: tuple[int, ...], block: tuple[int, ...], divisor: int, overlap: float, stretch: float = 0.0
) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """The sliding window's size and start indices on an image of ``shape``.

    Per axis the window is ``block``, shrunk to the image (rounded up to ``divisor``) where the image is
    smaller. ``stretch`` > 0 lets it grow by up to that fraction, in steps of ``divisor``, where that
    covers the axis with fewer voxels computed: 258 voxels take two 256-voxel windows at any overlap, or
    one of 272. A plan costs the product over the axes of (windows x window length), so each axis is
    chosen on its own; ties keep the smaller window. Neighbouring windows overlap by at least
    ``overlap`` of their length.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if stretch < 0:
        raise ValueError(f"stretch must be >= 0, got {stretch}")

    def stride(length: int) -> int:
        return max(1, round(length * (1.0 - overlap)))

    window = []
    for size, length in zip(shape, block):
        fitted = round_up((size,), divisor)[0]
        longest = min(fitted, max(length, int(length * (1.0 + stretch)) // divisor * divisor))
        candidates = range(length, longest + 1, divisor) if fitted > length else [fitted]
        window.append(min(candidates, key=lambda n: (len(axis_starts(size, n, stride(n))) * n, n)))
    return tuple(window), sub_image_starts(shape, window, [stride(n) for n in window])


@torch.no_grad()
def sliding_window(
    network: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    block: tuple[int, int, int],
    divisor: int,
    overlap: float = 0.5,
    batch_size: int = 1,
    device: torch.device | None = None,
    precision: str = "auto",
    progress: Progress | None = None,
    stretch: float = 0.0,
) -> np.ndarray:
    """Class probabilities ``(C, D, H, W)`` of ``image`` ``(D, H, W)`` from overlapping windows placed by
    :func:`window_plan` (``block``, ``overlap``, ``stretch``).

    At most ``batch_size`` windows of logits exist at once, so memory stays bounded on any CT.
    ``network``: a module, or any callable from a (N, 1, *window) batch to logits (a compiled backend).
    The volume-sized sums take one array of ``C`` channels: channel 0 sums the windows' weights, and
    becomes class 0's probability, one minus the others', at the end (softmax's classes sum to one).
    """
    device = device or torch.device("cpu")
    window, starts = window_plan(image.shape, block, divisor, overlap, stretch)
    weights = torch.from_numpy(gaussian_importance(window))
    weights_on_device = weights.to(device)
    accumulated: np.ndarray | None = None
    if isinstance(network, nn.Module):
        network.eval()
    for first in range(0, len(starts), batch_size):
        group = starts[first : first + batch_size]
        batch = np.stack([extract_block(image, start, window, 0.0) for start in group])[:, None]
        with autocast_context(device, precision):
            logits = network(torch.from_numpy(batch).to(device))
        probabilities = (torch.softmax(logits.float(), dim=1)[:, 1:] * weights_on_device).cpu()
        if accumulated is None:
            accumulated = np.zeros((1 + probabilities.shape[1], *image.shape), np.float32)
            sums = torch.from_numpy(accumulated)  # the same memory: torch's in-place adds use every core
        for start, values in zip(group, probabilities):
            target = tuple(slice(s, min(s + w, n)) for s, w, n in zip(start, window, image.shape))
            crop = tuple(slice(0, t.stop - t.start) for t in target)
            sums[(slice(1, None), *target)] += values[(slice(None), *crop)]
            sums[(0, *target)] += weights[crop]
        if progress:
            progress(min(1.0, (first + len(group)) / len(starts)), "sliding window")
    sums[1:] /= sums[0]
    sums[0] = 1.0
    for channel in sums[1:]:  # in place: no volume-sized temporary while the network is alive
        sums[0] -= channel
    return accumulated


def class_map(probabilities: np.ndarray) -> np.ndarray:
    """``probabilities.argmax(0)`` as uint8, one channel at a time (:func:`highest`)."""
    return highest(enumerate(probabilities))


def drop_tumour_outside_liver(labels: np.ndarray) -> np.ndarray:
    """Keep only the liver: the largest 26-connected component of liver-or-tumour; tumour and liver
    elsewhere are set to background (a liver tumour lies in or on the one liver). Returns the removed
    tumour mask. Used when the model segments the liver too and its card asks for it."""
    from .lesions.measure import lesion_components

    ids, count = lesion_components(labels >= LIVER)
    if count < 2:
        return np.zeros(labels.shape, bool)
    largest = np.argmax(np.bincount(ids.ravel())[1:]) + 1
    outside = (ids > 0) & (ids != largest)
    removed = outside & (labels == TUMOUR)
    labels[outside] = 0
    return removed


@dataclass(frozen=True)
class Segmentation:
    """What ``segment`` returns: labels (0 background, 1 liver where the model gives it, 2 tumour) and,
    if asked, the tumour probability, both on the input CT's exact grid."""

    labels: Volume
    tumour_probability: Volume | None
    model_name: str
    #: What the user should know about this result's reliability, one sentence each (e.g. a CT too thin
    #: for the model's blocks).
    cautions: tuple[str, ...] = ()


def segment(
    image: Volume | str | os.PathLike,
    model: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 1,
    overlap: float = 0.5,
    probabilities: bool = False,
    precision: str = "auto",
    progress: Progress | None = None,
    tumour_in_liver: bool | None = None,
    min_lesion_mm: float = 0.0,
    backend: str = "torch",
    window: tuple[int, int, int] | None = None,
    stretch: float = 0.0,
) -> Segmentation:
    """Segment liver tumours in a CT: preprocessing from the model's card, sliding window, back onto the
    CT's grid. ``model`` is a registry name, a model folder, or None for the default model.

    ``backend`` (:mod:`livertumor.backends`): ``torch`` (default here), ``openvino``, ``onnxruntime`` or
    ``auto`` (OpenVINO on the CPU where installed, else PyTorch; the ``livertumor`` command's default);
    the compiled ones give the same labels up to float rounding. ``precision``: ``fp32``, ``bf16`` or
    ``auto`` (bf16 on a GPU, fp32 on the CPU); OpenVINO runs bf16 only on CPUs with native bf16 (about
    twice as fast there, checked against fp32 in docs/results/inference.md). In-process calls default to PyTorch:
    a compiled runtime's thread pools then live in the caller's process (Slicer, a notebook that also
    trains), where the test suite saw a later training crash; the command runs in its own process.
    ``window``: the sliding window (z, y, x voxels of the model's grid; multiples of the network's
    poolings) instead of the card's training block: a speed/accuracy choice, measured in
    ``benchmarks/windows.py`` (instance norm makes results depend on the window). ``stretch``: how much
    larger than that a window may grow to cover the CT with less computation (:func:`window_plan`).

    Labels outside the patient's body (:func:`~livertumor.preprocess.body_mask`) are dropped first.
    ``tumour_in_liver`` keeps only tumour in the largest liver component (None: as the card says; it
    needs a model that segments the liver). ``min_lesion_mm`` drops tumour components whose
    equivalent-sphere diameter on the CT's grid is below it (they become liver where the model gives
    liver, else background)."""
    from .io import check_ct_values, read_ct
    from .models import load_model

    if isinstance(image, (str, os.PathLike, Path)):
        ct = read_ct(image)
    else:
        check_ct_values(image)
        ct = image
    from .backends import check_precision, network_forward, resolve_backend

    torch_device = resolve_device(device)
    backend = resolve_backend(backend, torch_device)
    precision = resolve_precision(torch_device, precision)
    if backend != "torch":
        check_precision(backend, precision)  # before any minute of preprocessing
    loaded = load_model(model, torch_device)
    config = loaded.card.preprocess
    divisor = loaded.card.architecture.divisor
    block = tuple(config.block) if window is None else tuple(int(n) for n in window)
    if len(block) != 3 or any(n <= 0 or n % divisor for n in block):
        raise LiverTumorError(f"the window must be three positive multiples of {divisor} voxels, got {window}")
    report = progress or (lambda fraction, message: None)
    report(0.0, "preprocessing")
    cautions = thin_ct_cautions(ct.grid, config)
    prepared, body = prepare_ct_and_body(ct, config)
    grid = ct.grid
    del ct, image  # from here on only the grid: a CT read here is freed before the networks run
    stages = loaded.cascade_stages()
    labels = np.zeros(prepared.shape, np.uint8)
    tumour = np.zeros(prepared.shape, np.float32) if probabilities else None
    region = tuple(slice(0, n) for n in prepared.shape)
    # each label's probability, for the way back (resample_label); a cascade's stages see different
    # regions, so there the labels' one-hot (no scores) is interpolated instead
    scores: dict[int, np.ndarray] = {}
    for index, (role, network) in enumerate(stages):

        def stage_progress(fraction: float, message: str, index: int = index, role: str = role) -> None:
            report(0.05 + 0.85 * (index + fraction) / len(stages), f"{role}: {message}")

        forward = network_forward(
            network,
            backend,
            torch_device,
            loaded.weights_digest(role),
            lambda message, index=index: report(0.05 + 0.85 * index / len(stages), message),
            precision,
        )
        result = sliding_window(
            forward,
            prepared.array[region],
            block,
            divisor,
            overlap,
            batch_size,
            torch_device,
            precision if backend == "torch" else "fp32",  # a compiled graph holds its precision itself
            stage_progress,
            stretch,
        )
        classes = class_map(result)
        if role == "liver":
            liver = classes == 1
            labels[liver] = 1
            region = loaded.liver_box(liver, prepared.grid)
        else:
            channel = foreground_channel(task_for(result.shape[0]))
            if channel == TUMOUR:
                labels[region][classes == LIVER] = LIVER
            if tumour is not None:
                tumour[region] = result[channel]
            labels[region][classes == channel] = TUMOUR
            if len(stages) == 1:
                scores = {0: result[0], TUMOUR: result[channel]} | ({LIVER: result[LIVER]} if channel == TUMOUR else {})
        # a compiled runtime keeps its activation buffers while it lives: gone before mapping back
        # (until then its peak, docs/results/inference.md)
        del result, classes, forward
    if body is not None:  # nothing lies outside the patient: labels there go before the liver is chosen
        labels[~body] = 0
        if tumour is not None:
            tumour[~body] = 0.0
    keep_in_liver = loaded.card.tumour_in_liver if tumour_in_liver is None else tumour_in_liver
    if keep_in_liver and (labels == LIVER).any():
        outside = drop_tumour_outside_liver(labels)
        if tumour is not None:
            tumour[outside] = 0.0
    report(0.9, "mapping back onto the input grid")
    on_input = restore_to_grid(prepared.with_array(labels), grid, is_label=True, scores=scores)
    del scores
    if min_lesion_mm > 0:
        drop_small_lesions(on_input, min_lesion_mm)
    probability = None
    if tumour is not None:
        probability = restore_to_grid(prepared.with_array(tumour), grid, is_label=False)
    report(1.0, "done")
    return Segmentation(on_input, probability, f"{loaded.card.name}:{loaded.card.version}", cautions)


def thin_ct_cautions(grid: Grid, config: PreprocessConfig) -> tuple[str, ...]:
    """A caution where the CT covers less than a quarter of the model's training block head to foot: on
    phantom slabs that thin the demo model misses most of the liver (liver Dice 0.57 at 12 mm and 0.13 at
    6 mm, against 0.93 at 24 mm, a quarter of its 96 mm block: ``benchmarks/scan_edges.py``)."""
    extent_mm = grid.shape[0] * grid.spacing_zyx[0]
    block_mm = config.block[0] * config.spacing[2]
    if extent_mm >= block_mm / 4:
        return ()
    return (
        f"the CT covers only {extent_mm:g} mm head to foot, under a quarter of the {block_mm:g} mm blocks the "
        "model was trained on: with so few slices it misses most of the liver and its tumours",
    )


def drop_small_lesions(labels: Volume, min_diameter_mm: float) -> int:
    """Relabel (in place) tumour components whose equivalent-sphere diameter is below
    ``min_diameter_mm``: as liver where the model segments the liver (a liver tumour lies in it), else
    background. Returns how many went."""
    from .lesions.measure import lesion_components
    from .metrics import equivalent_diameter_mm

    ids, count = lesion_components(labels.array == TUMOUR)
    if not count:
        return 0
    diameters = equivalent_diameter_mm(np.bincount(ids.ravel())[1:], labels.grid.spacing)
    small = np.flatnonzero(diameters < min_diameter_mm) + 1
    if small.size:
        mask = np.isin(ids, small)
        labels.array[mask] = LIVER if (labels.array == LIVER).any() else 0
    return int(small.size)
