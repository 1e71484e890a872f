"""2D SE-ResNet building blocks, the SE-ResNet classifier, and the U-Net with an SE-ResNet encoder
(with an optional classification head on the bottleneck: the Y-Net).

Module names follow timm's ``seresnet18/34`` (``conv1``, ``bn1``, ``layerN.M.conv1``, ``...se.fc1``,
``...downsample.0``, ``fc``), so ImageNet-style encoder weights load by name after
:func:`map_encoder_keys`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al.): channel weights from global average pooling, reduction ``r``."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(scale))))
        return x * scale


class SEBasicBlock(nn.Module):
    """ResNet basic block (two 3x3 conv-BN) with SE before the residual sum."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = SqueezeExcitation(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


@dataclass(frozen=True)
class SEResNetConfig:
    """Encoder size: SE-ResNet-18 by default (widths 64-512, two blocks per stage)."""

    in_channels: int = 1
    widths: tuple[int, ...] = (64, 128, 256, 512)
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    stem_width: int = 64

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SEResNetConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class SEResNetEncoder(nn.Module):
    """Stem (7x7 conv stride 2, BN, ReLU, 3x3 max-pool) and four SE-ResNet stages.

    ``forward`` returns the features of every scale, finest first: stem (1/2), stages (1/4 .. 1/32).
    """

    def __init__(self, config: SEResNetConfig = SEResNetConfig()) -> None:
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(config.in_channels, config.stem_width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(config.stem_width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        previous = config.stem_width
        for index, (width, blocks) in enumerate(zip(config.widths, config.blocks), start=1):
            stride = 1 if index == 1 else 2
            layer = nn.Sequential(
                *(SEBasicBlock(previous if b == 0 else width, width, stride if b == 0 else 1) for b in range(blocks))
            )
            self.add_module(f"layer{index}", layer)
            previous = width

    @property
    def channels(self) -> list[int]:
        return [self.config.stem_width, *self.config.widths]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = torch.relu(self.bn1(self.conv1(x)))
        features = [stem]
        x = self.maxpool(stem)
        for index in range(1, len(self.config.widths) + 1):
            x = getattr(self, f"layer{index}")(x)
            features.append(x)
        return features


class SEResNetClassifier(nn.Module):
    """Framework 1: the encoder, global average pooling and a linear layer to the lesion classes."""

    def __init__(self, config: SEResNetConfig = SEResNetConfig(), classes: int = 3) -> None:
        super().__init__()
        self.encoder = SEResNetEncoder(config)
        self.fc = nn.Linear(config.widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x)[-1].mean((2, 3)))


class DecoderBlock(nn.Module):
    """Upsample x2, concatenate the skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class SEResUNet(nn.Module):
    """Frameworks 2-4: U-Net with the SE-ResNet encoder.

    ``segmentation_classes`` output maps (2 for lesion vs rest; 5 for joint pixel-wise classification:
    background, liver, cyst, hemangioma, metastasis). With ``classification_classes`` a second output, a
    linear layer on the pooled bottleneck, makes it the Y-Net; ``forward`` then returns both.
    """

    def __init__(
        self,
        config: SEResNetConfig = SEResNetConfig(),
        segmentation_classes: int = 2,
        classification_classes: int | None = None,
        decoder_widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = SEResNetEncoder(config)
        skips = self.encoder.channels[:-1][::-1]  # stage 3, 2, 1, stem
        widths = list(decoder_widths or [max(16, c // 2) for c in skips] + [16])
        previous = self.encoder.channels[-1]
        self.decoder = nn.ModuleList()
        for index, width in enumerate(widths):
            skip = skips[index] if index < len(skips) else 0
            self.decoder.append(DecoderBlock(previous, skip, width))
            previous = width
        self.segmentation_head = nn.Conv2d(previous, segmentation_classes, 3, padding=1)
        self.classification_head = (
            nn.Linear(self.encoder.channels[-1], classification_classes) if classification_classes else None
        )

    @property
    def divisor(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise ValueError(f"input sides {tuple(x.shape[-2:])} must be multiples of {self.divisor}")
        features = self.encoder(x)
        y = features[-1]
        skips = features[:-1][::-1]
        for index, block in enumerate(self.decoder):
            y = block(y, skips[index] if index < len(skips) else None)
        segmentation = self.segmentation_head(y)
        if self.classification_head is None:
            return segmentation
        return segmentation, self.classification_head(features[-1].mean((2, 3)))


#: Renames of other SE-ResNet implementations onto timm's names (which ours follow).
_KEY_RENAMES = (
    ("layer0.conv1.", "conv1."),  # Cadene's pretrainedmodels se_resnet*
    ("layer0.bn1.", "bn1."),
    (".se_module.", ".se."),
    ("last_linear.", "fc."),
    ("module.", ""),  # DataParallel checkpoints
    ("encoder.", ""),  # our own models' encoders
)


def map_encoder_keys(state: dict[str, torch.Tensor], encoder: SEResNetEncoder) -> dict[str, torch.Tensor]:
    """ImageNet-style SE-ResNet weights (timm, Cadene's pretrainedmodels, or ours) as a state dict for
    ``encoder``. RGB first-layer weights are summed over colour for a one-channel CT input (the usual
    transfer of ImageNet filters to grey images); the classifier is dropped.

    Raises :class:`~livertumor.errors.LiverTumorError` naming the keys that are missing or do not fit.
    """
    from ..errors import LiverTumorError

    renamed = {}
    for key, value in state.items():
        for old, new in _KEY_RENAMES:
            if key.startswith(old) or (old.startswith(".") and old in key):
                key = key.replace(old, new, 1)
        renamed[key] = value
    target = encoder.state_dict()
    first = renamed.get("conv1.weight")
    expected = target["conv1.weight"].shape
    if first is not None and first.ndim == 4 and first.shape[0] == expected[0] and first.shape[1] != expected[1]:
        renamed["conv1.weight"] = first.sum(dim=1, keepdim=True).repeat(1, expected[1], 1, 1)
    missing = [k for k in target if k not in renamed]
    misfit = [
        f"{k} {tuple(renamed[k].shape)} != {tuple(v.shape)}"
        for k, v in target.items()
        if k in renamed and renamed[k].shape != v.shape
    ]
    if missing or misfit:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if misfit:
            detail.append(f"{len(misfit)} shapes differ (e.g. {'; '.join(misfit[:3])})")
        raise LiverTumorError("the weight file does not fit the SE-ResNet encoder: " + ", ".join(detail))
    return {k: renamed[k] for k in target}
