"""The first paper's 3D residual U-Net (Li et al., layout as published by the authors).

Encoder: level 1 is two 3x3x3 convolutions; levels 2-5 start with a 2x2x2 max-pooling and hold 2, 2, 3, 3
residual blocks. Decoder levels 4-1: a 2x2x2 transposed convolution (with instance norm and ReLU)
upsamples, the encoder's features of that level are concatenated, then 3, 3, 2, 2 residual blocks. Head:
1x1x1 conv-IN-ReLU and a 1x1x1 conv to the classes (softmax is applied by the loss and by inference).
Features 8, 16, 32, 64, 128. A residual block is conv-IN-ReLU-conv-IN plus the input (through a 1x1x1
convolution when the width changes), then ReLU. Weights are Kaiming-uniform initialised.

Width and depth are arguments, so a tiny configuration serves the tests and CPU work.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from .errors import LiverTumorError, require_number

#: Spatial rows summed per reduction step of the CPU inference norm: small enough for the cache.
_ROWS_PER_CHUNK = 4096


class _FastPaths:
    """Whether the CPU fast paths below are taken (off while tracing a graph for another runtime)."""

    enabled = True


@contextlib.contextmanager
def standard_ops() -> Iterator[None]:
    """Run the networks with PyTorch's standard operations only (no direct oneDNN calls, no in-place
    norm): what a graph exporter (OpenVINO, ONNX) can trace and convert. Same results, slower in PyTorch."""
    previous, _FastPaths.enabled = _FastPaths.enabled, False
    try:
        yield
    finally:
        _FastPaths.enabled = previous


def _channels_last_mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and (biased) variance of a channels-last ``(N, C, D, H, W)`` tensor.

    A plain reduction over D, H, W strides across channels and runs at a fraction of memory speed
    on CPU; folding ``fold`` voxels into each row makes the reduced rows long and contiguous. The
    variance is summed over the centred values in chunks (stable, and no full-size temporary).
    """
    n, c = x.shape[:2]
    voxels = x.shape[2] * x.shape[3] * x.shape[4]
    fold = math.gcd(voxels, 32)
    rows = x.permute(0, 2, 3, 4, 1).reshape(n, voxels // fold, fold * c)
    mean = rows.sum(1).view(n, fold, c).sum(1) / voxels
    centre = mean.repeat(1, fold).unsqueeze(1)
    squares = torch.zeros(n, fold * c, dtype=x.dtype, device=x.device)
    for chunk in rows.split(_ROWS_PER_CHUNK, dim=1):
        squares += (chunk - centre).square_().sum(1)
    return mean, squares.view(n, fold, c).sum(1) / voxels


class InstanceNorm3d(nn.InstanceNorm3d):
    """Affine instance norm; on CPU without autograd, channels-last inputs take a faster path with the
    same result that overwrites the input (in this network a norm's input is a convolution's output
    that nothing else reads). Training and other devices use PyTorch's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _FastPaths.enabled and x[0, 0].numel() == 1:
            # A one-voxel input (a small image's deepest level) normalises to the bias, as on the fast path;
            # PyTorch's own norm refuses it, and an exporter traces PyTorch's (a constant branch per shape).
            return torch.zeros_like(x) + self.bias[None, :, None, None, None]
        if (
            not _FastPaths.enabled
            or torch.is_grad_enabled()
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or not x.is_contiguous(memory_format=torch.channels_last_3d)
        ):
            return super().forward(x)
        mean, var = _channels_last_mean_var(x)
        scale = torch.rsqrt(var + self.eps) * self.weight
        shift = self.bias - mean * scale
        return torch.addcmul(shift[:, :, None, None, None], x, scale[:, :, None, None, None], out=x)


def _mkldnn_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: Sequence[int]):
    return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(padding), [1, 1, 1], [1, 1, 1], 1)


class _BatchOneConv3d(torch.autograd.Function):
    """A stride-1 3D convolution of one sample whose backward stays on oneDNN.

    PyTorch sends the backward of a batch-1 convolution with fewer than ~20k input rows to its im2col
    path, 6-13x slower than oneDNN here (4->4 channels, 32x64x64: 129 ms for the input gradient against
    10 ms forward). The input gradient is the forward convolution of the output gradient with the
    flipped, transposed kernel; the weight gradient is PyTorch's own, on the sample split in two halves
    along z (with the kernel's halo), a batch of two that takes oneDNN.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, ...]):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return _mkldnn_conv(x, weight, bias, padding)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        padding = ctx.padding
        grad_out = grad_out.contiguous()
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(2, 3, 4).transpose(0, 1).contiguous()
            kernel = weight.shape[2:]
            grad_input = _mkldnn_conv(grad_out, flipped, None, [k - 1 - p for k, p in zip(kernel, padding)])
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_gradient(grad_out, x, weight, padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum((0, 2, 3, 4))
        return grad_input, grad_weight, grad_bias, None


def _weight_gradient(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: Sequence[int]):
    """The kernel's gradient with the sample split along z into a batch of two (see _BatchOneConv3d)."""
    depth, halo = grad_out.shape[2], padding[0]
    mask = [False, True, False]
    if depth % 2 or depth < 2:
        return torch.ops.aten.convolution_backward(
            grad_out, x, weight, None, [1, 1, 1], list(padding), [1, 1, 1], False, [0, 0, 0], 1, mask
        )[1]
    half = depth // 2
    padded = torch.nn.functional.pad(x, (0, 0, 0, 0, halo, halo)) if halo else x
    inputs = torch.cat([padded[:, :, : half + 2 * halo], padded[:, :, half:]])
    grads = torch.cat([grad_out[:, :, :half], grad_out[:, :, half:]])
    split_padding = [0, *padding[1:]]
    return torch.ops.aten.convolution_backward(
        grads, inputs, weight, None, [1, 1, 1], split_padding, [1, 1, 1], False, [0, 0, 0], 1, mask
    )[1]


class Conv3d(nn.Conv3d):
    """nn.Conv3d that always takes oneDNN on the CPU: PyTorch sends batch-1 inputs with few channels or
    small slices to its slow im2col path (3x slower for the one-channel stem; a batch-1 training step
    of the demo network 0.74 -> 0.51 s), in the forward and, worse, in the backward
    (:class:`_BatchOneConv3d`)."""

    #: Take :class:`_BatchOneConv3d` for batch-1 training (off only to measure PyTorch's own backward).
    batch_one_backward = True

    @property
    def _stride_one(self) -> bool:
        return tuple(self.stride) == (1, 1, 1) and tuple(self.dilation) == (1, 1, 1) and self.groups == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cpu_float = x.device.type == "cpu" and x.dtype == torch.float32
        if not (_FastPaths.enabled and cpu_float and torch.backends.mkldnn.is_available()):
            return super().forward(x)
        weight = self.weight
        if torch.is_grad_enabled() and x.shape[0] == 1 and self.batch_one_backward and self._stride_one:
            return _BatchOneConv3d.apply(x, weight, self.bias, tuple(self.padding))
        if not torch.is_grad_enabled():
            # Inference: channels-last weights make oneDNN return channels-last activations, about
            # twice as fast here; the norms, additions and concatenations after it keep that layout.
            # (In training PyTorch's norm would convert them back at every layer.)
            weight = weight.contiguous(memory_format=torch.channels_last_3d)
        return torch.ops.aten.mkldnn_convolution(
            x, weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups
        )


def _norm(channels: int) -> InstanceNorm3d:
    return InstanceNorm3d(channels, affine=True)


class ResidualBlock3d(nn.Module):
    """conv3-IN-ReLU-conv3-IN + shortcut (1x1x1 conv if the width changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
            nn.ReLU(inplace=True),
            Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
        )
        self.shortcut = (
            nn.Identity() if in_channels == out_channels else Conv3d(in_channels, out_channels, 1, bias=False)
        )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        out += self.shortcut(x)
        return self.activation(out)


def _stack(in_channels: int, out_channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(
        *(ResidualBlock3d(in_channels if i == 0 else out_channels, out_channels) for i in range(blocks))
    )


@dataclass(frozen=True)
class ResUNetConfig:
    """Architecture of :class:`ResUNet3d`; stored in each model's card."""

    in_channels: int = 1
    classes: int = 2
    widths: tuple[int, ...] = (8, 16, 32, 64, 128)
    encoder_blocks: tuple[int, ...] = (2, 2, 3, 3)
    decoder_blocks: tuple[int, ...] = (3, 3, 2, 2)
    #: Initial probability of each foreground class (head bias), None for zero bias. With eq. (2)'s
    #: weights the background term weighs ~0, so false positives fall only through the tumour term's
    #: denominator, slowly; starting from a 1% prior skips that phase (as RetinaNet's prior init does).
    foreground_prior: float | None = 0.01
    #: Channels of the head's last ReLU features, None for ``widths[0]``. The last 1x1x1 convolution
    #: can rank tumour first only where some channel favours it over every other class; with 4 channels
    #: and 3 classes about 1 seed in 5 draws none and never starts (docs/results/curriculum.md), with 16
    #: none of 500 seeds did, for 1.3 % more FLOPs of the width-4 CPU recipe. It moved dead starts
    #: rather than ending them there, so it stays off by default.
    head_width: int | None = None

    def __post_init__(self) -> None:
        # Bounds before anything is built from a card: a width of 10^6 would ask for terabytes.
        require_number("in_channels", self.in_channels, 1, 16, integer=True)
        require_number("classes", self.classes, 2, 16, integer=True)
        for key, low, high in (("widths", 1, 1024), ("encoder_blocks", 0, 16), ("decoder_blocks", 0, 16)):
            values = getattr(self, key)
            if not isinstance(values, (list, tuple)) or not 1 <= len(values) <= 8:
                raise LiverTumorError(f"setting {key} = {values!r} must be a list of 1 to 8 whole numbers")
            for value in values:
                require_number(key, value, low, high, integer=True)
            object.__setattr__(self, key, tuple(values))
        if self.foreground_prior is not None:
            require_number("foreground_prior", self.foreground_prior, 1e-6, 0.5)
        if self.head_width is not None:
            require_number("head_width", self.head_width, 1, 1024, integer=True)
        levels = len(self.widths) - 1
        if levels < 1 or len(self.encoder_blocks) != levels or len(self.decoder_blocks) != levels:
            raise ValueError(
                f"{len(self.widths)} widths need {len(self.widths) - 1} encoder and decoder block counts, "
                f"got {self.encoder_blocks} and {self.decoder_blocks}"
            )

    @property
    def divisor(self) -> int:
        """Every input side must be a multiple of this (2 to the number of poolings)."""
        return 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict:
        values = asdict(self)
        if self.head_width is None:  # cards written before the field existed stay byte for byte the same
            del values["head_width"]
        return {"type": "ResUNet3d", **values}

    @classmethod
    def from_dict(cls, data: dict) -> ResUNetConfig:
        values = {k: v for k, v in data.items() if k != "type"}
        if data.get("type", "ResUNet3d") != "ResUNet3d":
            raise ValueError(f"unknown architecture {data.get('type')!r}")
        return cls(**values)


#: A small configuration for tests and quick CPU runs (four times narrower, three levels).
TINY = ResUNetConfig(widths=(4, 8, 16), encoder_blocks=(1, 1), decoder_blocks=(1, 1))


class ResUNet3d(nn.Module):
    """The paper's 3D residual U-Net; returns logits ``(N, classes, D, H, W)``."""

    def __init__(self, config: ResUNetConfig = ResUNetConfig()) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        self.stem = nn.Sequential(
            Conv3d(config.in_channels, widths[0], 3, padding=1, bias=False),
            _norm(widths[0]),
            nn.ReLU(inplace=True),
            Conv3d(widths[0], widths[0], 3, padding=1, bias=False),
            _norm(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.MaxPool3d(2)
        self.encoder = nn.ModuleList(
            _stack(widths[i], widths[i + 1], blocks) for i, blocks in enumerate(config.encoder_blocks)
        )
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level, blocks in zip(range(len(widths) - 2, -1, -1), config.decoder_blocks):
            self.upsample.append(
                nn.Sequential(
                    nn.ConvTranspose3d(widths[level + 1], widths[level], 2, stride=2, bias=False),
                    _norm(widths[level]),
                    nn.ReLU(inplace=True),
                )
            )
            self.decoder.append(_stack(2 * widths[level], widths[level], blocks))
        head_width = config.head_width or widths[0]
        self.head = nn.Sequential(
            Conv3d(widths[0], head_width, 1, bias=False),
            _norm(head_width),
            nn.ReLU(inplace=True),
            Conv3d(head_width, config.classes, 1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weights (as in the paper), zero biases, unit norms; the head's foreground
        biases start at the configured prior."""
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.InstanceNorm3d) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        prior = self.config.foreground_prior
        if prior is not None:
            with torch.no_grad():
                self.head[-1].bias[1:] = math.log(prior / (1.0 - prior))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        divisor = self.config.divisor
        if any(side % divisor for side in x.shape[2:]):
            raise ValueError(f"input sides {tuple(x.shape[2:])} must be multiples of {divisor}")
        skips = [self.stem(x)]
        for stage in self.encoder:
            skips.append(stage(self.pool(skips[-1])))
        x = skips.pop()
        for upsample, stage in zip(self.upsample, self.decoder):
            x = stage(torch.cat([upsample(x), skips.pop()], dim=1))
        return self.head(x)


class ProbabilityMean(nn.Module):
    """Networks of one architecture as one (an ensemble): returns the logarithm of their mean class
    probabilities, whose softmax (what the loss and inference take) is that mean. The members run one after
    another, so only one member's activations exist at a time."""

    def __init__(self, members: Sequence[ResUNet3d]) -> None:
        super().__init__()
        if not members or any(member.config != members[0].config for member in members):
            raise LiverTumorError("an ensemble needs one or more networks of one architecture")
        self.config = members[0].config
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.softmax(self.members[0](x).float(), dim=1)
        for member in self.members[1:]:
            total += torch.softmax(member(x).float(), dim=1)
        # the floor keeps log finite where every member gives a class exactly 0 (underflow)
        return torch.log((total / len(self.members)).clamp_min(1e-30))


def ensemble_member(network: nn.Module, index: int) -> nn.Module:
    """Member ``index`` of a :class:`ProbabilityMean`; a single network is its own only member."""
    if isinstance(network, ProbabilityMean):
        return network.members[index]
    if index:
        raise IndexError(f"a single network has no member {index}")
    return network


def round_up(size: Sequence[int], divisor: int) -> tuple[int, ...]:
    """Each side rounded up to a multiple of ``divisor``."""
    return tuple(-(-int(s) // divisor) * divisor for s in size)


def widened(network: ResUNet3d, widths: Sequence[int]) -> ResUNet3d:
    """A copy of ``network`` with ``widths`` channels per level that computes the same function, so a
    trained model can grow and go on training. Old channels keep their weights; new ones start from the
    usual initialisation; every weight by which an old channel reads a new one starts at zero (Net2Net's
    zero-padding widening), so the new channels join as their readers' weights move off zero.
    A head that follows ``widths[0]`` grows with it."""
    old = network.config
    if len(widths) != len(old.widths) or any(wide < narrow for wide, narrow in zip(widths, old.widths)):
        raise LiverTumorError(
            f"widths {tuple(widths)} must keep the {len(old.widths)} levels of {old.widths}, none narrower"
        )
    for level in range(len(widths) - 1):
        if old.widths[level] != old.widths[level + 1] and widths[level] == widths[level + 1]:
            # the old 1x1x1 shortcut between these levels would become an identity and change the function
            raise LiverTumorError(
                f"widths {tuple(widths)}: levels {level + 1} and {level + 2} differ in {old.widths}, so they must "
                "stay different"
            )
    grown = ResUNet3d(replace(old, widths=tuple(widths)))
    levels = len(widths) - 1
    # A decoder stage's first block reads [upsampled, skip] of its level: the old channels of each half.
    concatenated = {
        f"decoder.{stage}.0.{layer}.weight": levels - 1 - stage
        for stage in range(levels)
        for layer in ("body.0", "shortcut")
    }
    transposed = {f"{name}.weight" for name, module in grown.named_modules() if isinstance(module, nn.ConvTranspose3d)}
    state = network.state_dict()
    with torch.no_grad():
        for name, tensor in grown.state_dict().items():
            source = state[name]
            in_dim = 0 if name in transposed else 1
            positions = []
            for dim, size in enumerate(source.shape[:2]):
                level = concatenated.get(name) if dim == in_dim else None
                if level is None:
                    positions.append(torch.arange(size))
                else:
                    half = torch.arange(old.widths[level])
                    positions.append(torch.cat([half, widths[level] + half]))
            if source.ndim == 1:
                tensor[positions[0]] = source
                continue
            if tensor.shape[in_dim] > source.shape[in_dim]:
                is_new = torch.ones(tensor.shape[in_dim], dtype=torch.bool)
                is_new[positions[in_dim]] = False
                reads = [positions[1 - in_dim], positions[1 - in_dim]]  # old outputs on their own dimension
                reads[in_dim] = is_new.nonzero()[:, 0]  # reading new inputs on theirs
                tensor[reads[0][:, None], reads[1][None, :]] = 0.0
            tensor[positions[0][:, None], positions[1][None, :]] = source
    return grown
