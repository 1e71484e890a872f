"""The second paper's building blocks: SE-ResNet, U-Net and Y-Net shapes and gradients, the class
weighting, the majority vote and the weight-file key mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from livertumor.errors import LiverTumorError
from livertumor.lesions.losses import inverse_frequency_weights, majority_vote, ynet_loss
from livertumor.lesions.networks import (
    SEResNetClassifier,
    SEResNetConfig,
    SEResNetEncoder,
    SEResUNet,
    SqueezeExcitation,
    map_encoder_keys,
)

SMALL = SEResNetConfig(widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1), stem_width=8)


def all_parameters_learn(model, loss):
    loss.backward()
    return all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_squeeze_excitation_rescales_channels_only():
    se = SqueezeExcitation(16)
    x = torch.rand(2, 16, 8, 8)
    ratio = se(x) / x
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)  # one factor per channel
    assert (ratio > 0).all() and (ratio < 1).all()


def test_classifier_shapes_and_gradients():
    model = SEResNetClassifier(SMALL, classes=3)
    logits = model(torch.rand(4, 1, 64, 64))
    assert logits.shape == (4, 3)
    assert all_parameters_learn(model, logits.logsumexp(1).sum())


@pytest.mark.parametrize("classes", [2, 5])
def test_unet_segmentation_shapes_and_gradients(classes):
    model = SEResUNet(SMALL, segmentation_classes=classes)
    out = model(torch.rand(2, 1, 64, 96))
    assert out.shape == (2, classes, 64, 96)
    assert all_parameters_learn(model, out.square().mean())
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 1, 60, 64))


def test_ynet_has_both_outputs_and_combined_loss():
    model = SEResUNet(SMALL, segmentation_classes=2, classification_classes=3)
    segmentation, classification = model(torch.rand(2, 1, 64, 64))
    assert segmentation.shape == (2, 2, 64, 64) and classification.shape == (2, 3)
    seg_target = torch.zeros(2, 64, 64, dtype=torch.long)
    cls_target = torch.tensor([0, 2])
    only_seg = ynet_loss(segmentation, seg_target, classification, cls_target, weight=1.0)
    only_cls = ynet_loss(segmentation, seg_target, classification, cls_target, weight=0.0)
    half = ynet_loss(segmentation, seg_target, classification, cls_target, weight=0.5)
    assert half.item() == pytest.approx(0.5 * only_seg.item() + 0.5 * only_cls.item())
    assert only_cls.item() == pytest.approx(torch.nn.functional.cross_entropy(classification, cls_target).item())
    assert all_parameters_learn(model, half)
    with pytest.raises(ValueError, match="lambda"):
        ynet_loss(segmentation, seg_target, classification, cls_target, weight=1.5)


def test_inverse_frequency_weights():
    weights = inverse_frequency_weights(np.array([900.0, 90.0, 10.0]), eps=0.0)
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights[2] / weights[1] == pytest.approx(9.0) and weights[1] / weights[0] == pytest.approx(10.0)


def test_majority_vote_counts_lesion_pixels_only():
    classes = np.array([[0, 2, 2], [1, 2, -1], [0, 0, 0]])
    mask = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 0]], bool)
    winner, counts = majority_vote(classes, mask)
    assert winner == 2 and counts.tolist() == [1, 1, 3]
    assert majority_vote(np.array([0, 1]), np.array([True, True]))[0] == 0  # tie: lower index
    assert majority_vote(np.array([-1, -1]), np.array([True, True]))[0] == -1


def timm_like_state(config: SEResNetConfig, channels: int = 3) -> dict[str, torch.Tensor]:
    """A generated stand-in for an ImageNet checkpoint: timm's names, RGB first layer, classifier."""
    encoder = SEResNetEncoder(SEResNetConfig(channels, config.widths, config.blocks, config.stem_width))
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in encoder.state_dict().items()}
    state["fc.weight"] = torch.randn(1000, config.widths[-1])
    state["fc.bias"] = torch.randn(1000)
    return state


def test_timm_and_cadene_names_map_onto_the_encoder():
    encoder = SEResNetEncoder(SMALL)
    timm = timm_like_state(SMALL)
    mapped = map_encoder_keys(timm, encoder)
    encoder.load_state_dict(mapped)
    torch.testing.assert_close(encoder.conv1.weight, timm["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(encoder.layer2[0].se.fc1.weight, timm["layer2.0.se.fc1.weight"])
    cadene = {}
    for key, value in timm.items():
        key = (
            key.replace(".se.", ".se_module.").replace("fc.", "last_linear.")
            if key.startswith("fc.") or ".se." in key
            else key
        )
        key = "layer0." + key if key.startswith(("conv1.", "bn1.")) else key
        cadene[key] = value
    torch.testing.assert_close(map_encoder_keys(cadene, encoder)["layer3.0.se.fc2.bias"], timm["layer3.0.se.fc2.bias"])


def test_weight_file_that_does_not_fit_is_refused():
    encoder = SEResNetEncoder(SMALL)
    wider = timm_like_state(SEResNetConfig(widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), stem_width=8))
    with pytest.raises(LiverTumorError, match="shapes differ"):
        map_encoder_keys(wider, encoder)
    partial = {k: v for k, v in timm_like_state(SMALL).items() if not k.startswith("layer4")}
    with pytest.raises(LiverTumorError, match="missing"):
        map_encoder_keys(partial, encoder)
