"""The paper's network layout and the weighted Dice loss of equations (1)-(2), by hand."""

from __future__ import annotations

import math

import pytest
import torch

from livertumor.errors import LiverTumorError
from livertumor.losses import (
    EMPTY_MAP_FLOOR,
    LESION_TERM_WEIGHT,
    dice_ce_loss,
    floored_dice_loss,
    floored_lesion_ce_loss,
    lesion_ce_loss,
    present_dice_loss,
    weighted_dice_loss,
)
from livertumor.networks import TINY, ResidualBlock3d, ResUNet3d, ResUNetConfig, widened


def test_paper_layout_widths_blocks_and_cost():
    net = ResUNet3d(ResUNetConfig())
    assert [len(stage) for stage in net.encoder] == [2, 2, 3, 3]
    assert [len(stage) for stage in net.decoder] == [3, 3, 2, 2]
    assert [stage[-1].body[3].out_channels for stage in net.encoder] == [16, 32, 64, 128]
    assert [stage[-1].body[3].out_channels for stage in net.decoder] == [64, 32, 16, 8]
    assert net.head[-1].out_channels == 2
    from torch.utils.flop_counter import FlopCounterMode

    # In float64, as the counter does not see float32's direct oneDNN calls.
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.double()(torch.zeros(1, 1, 16, 64, 64, dtype=torch.float64))
    # ~221 GFLOP per 64x256x256 volume, i.e. 221e9 / 64 for this 1/64 volume
    assert counter.get_total_flops() * 64 == pytest.approx(221e9, rel=0.01)


def test_residual_block_shortcut_only_when_width_changes():
    assert isinstance(ResidualBlock3d(8, 8).shortcut, torch.nn.Identity)
    assert isinstance(ResidualBlock3d(8, 16).shortcut, torch.nn.Conv3d)


def test_kaiming_uniform_initialisation():
    net = ResUNet3d(TINY)
    conv = net.encoder[0][0].body[0]
    bound = math.sqrt(6.0 / (conv.in_channels * 27))  # gain sqrt(2) for ReLU: sqrt(2) * sqrt(3 / fan_in)
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.9 * bound


def test_shapes_and_gradients_reach_every_parameter():
    net = ResUNet3d(TINY)
    x = torch.randn(2, 1, 8, 16, 12)
    out = net(x)
    assert out.shape == (2, 2, 8, 16, 12)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.randn(1, 1, 8, 16, 10))


def test_head_width_sets_the_last_features_and_travels_in_the_card():
    plain = ResUNetConfig(widths=(4, 8, 16), encoder_blocks=(1, 1), decoder_blocks=(1, 1))
    assert "head_width" not in plain.to_dict()  # older cards keep their exact text
    assert ResUNet3d(plain).head[-1].in_channels == 4
    wide = ResUNetConfig.from_dict({**plain.to_dict(), "head_width": 16})
    assert ResUNetConfig.from_dict(wide.to_dict()) == wide
    net = ResUNet3d(wide)
    assert net.head[0].out_channels == net.head[-1].in_channels == 16
    assert net(torch.randn(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)
    with pytest.raises(LiverTumorError, match="head_width"):
        ResUNetConfig(head_width=0)


def test_widened_network_computes_the_same_and_its_new_channels_learn():
    torch.manual_seed(0)
    net = ResUNet3d(ResUNetConfig(widths=(4, 8, 16), encoder_blocks=(1, 1), decoder_blocks=(2, 1), classes=3))
    with torch.no_grad():  # trained-looking norms and biases, not the initial ones and zeros
        for parameter in net.parameters():
            parameter += 0.05 * torch.randn_like(parameter)
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    grown = widened(net, (6, 12, 16))
    assert grown.config.widths == (6, 12, 16) and grown.head[0].out_channels == 6
    x = torch.randn(1, 1, 8, 16, 16)
    net.eval()
    grown.eval()
    with torch.no_grad():
        torch.testing.assert_close(grown(x), net(x), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(before[name], tensor) for name, tensor in net.state_dict().items())
    grown.train()
    optimiser = torch.optim.SGD(grown.parameters(), lr=0.1)
    stem = grown.stem[0].weight
    for _ in range(2):  # the first step moves the readers of the new channels off zero, the second the new channels
        optimiser.zero_grad()
        grown(x).square().mean().backward()
        optimiser.step()
    assert stem.grad[4:].abs().sum() > 0


def test_widening_refuses_narrower_levels_and_a_shortcut_that_would_vanish():
    net = ResUNet3d(TINY)
    with pytest.raises(LiverTumorError, match="none narrower"):
        widened(net, (2, 8, 16))
    with pytest.raises(LiverTumorError, match="stay different"):
        widened(net, (8, 8, 16))


def test_bad_architecture_is_refused():
    with pytest.raises(ValueError, match="need 2 encoder"):
        ResUNetConfig(widths=(4, 8, 16), encoder_blocks=(1,), decoder_blocks=(1, 1))


def test_weighted_dice_matches_hand_computation():
    # 4 voxels, 2 classes; truth: one tumour voxel.
    p_tumour = torch.tensor([0.9, 0.2, 0.1, 0.4])
    logits = torch.stack([torch.zeros(4), torch.log(p_tumour / (1 - p_tumour))])[None]
    target = torch.tensor([[1, 0, 0, 0]])
    eps = 1e-3
    g = [3.0, 1.0]  # voxels of background, tumour
    w = [(1.0 + eps) / (4.0 + eps), (3.0 + eps) / (4.0 + eps)]  # eq. (2): share of the *other* classes
    p_bg = 1 - p_tumour
    dice_bg = (2 * float(p_bg[1:].sum()) + eps) / (float(p_bg.sum()) + g[0] + eps)
    dice_t = (2 * 0.9 + eps) / (float(p_tumour.sum()) + g[1] + eps)
    expected = 1 - (w[0] * dice_bg + w[1] * dice_t)
    assert weighted_dice_loss(logits, target, eps).item() == pytest.approx(expected, rel=1e-5)


def test_weights_sum_to_c_minus_one_and_perfect_prediction():
    target = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    target[0, 0, 0] = 2
    perfect = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 50
    # perfect: each Dice term is 1, so L = 1 - sum(w) = 1 - (C - 1) = -1 for three classes
    assert weighted_dice_loss(perfect, target, eps=1e-6).item() == pytest.approx(-1.0, abs=1e-4)
    two = (target > 0).long()
    perfect_two = torch.nn.functional.one_hot(two, 2).movedim(-1, 1).float() * 50
    assert weighted_dice_loss(perfect_two, two, eps=1e-6).item() == pytest.approx(0.0, abs=1e-4)


def test_negative_volume_still_teaches_with_eps_one():
    logits = torch.zeros(1, 2, 8, 8, 8, requires_grad=True)
    weighted_dice_loss(logits, torch.zeros(1, 8, 8, 8, dtype=torch.long), eps=1.0).backward()
    assert logits.grad[0, 1].mean() > 0  # pushes tumour logits down where there is no tumour


def _tumour_free_block(tumour_voxels: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Background/liver/tumour logits on a 4x8x8 block of background and liver, no tumour in the truth,
    with the given summed tumour probability spread evenly."""
    target = torch.zeros(1, 4, 8, 8, dtype=torch.long)
    target[0, :, 4:] = 1
    one_hot = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    p_tumour = tumour_voxels / target.numel()
    probabilities = one_hot * (1 - p_tumour)
    probabilities[:, 2] = p_tumour
    return probabilities.clamp_min(1e-12).log(), target


def test_present_dice_drops_the_reward_for_an_empty_tumour_map():
    # the paper's loss with eps 1 pays most of a point for taking a block from 10 voxels of summed
    # tumour probability to none; present-dice drops the term of the class the block lacks
    paper_gain = weighted_dice_loss(*_tumour_free_block(10.0)) - weighted_dice_loss(*_tumour_free_block(0.01))
    present_gain = present_dice_loss(*_tumour_free_block(10.0)) - present_dice_loss(*_tumour_free_block(0.01))
    assert paper_gain > 0.8
    assert 0 < present_gain < 0.05  # what is left: tumour probability lowers the liver's Dice


def test_present_dice_still_pushes_false_tumour_down_and_equals_the_paper_when_all_classes_are_there():
    logits, target = _tumour_free_block(10.0)
    logits.requires_grad_(True)
    present_dice_loss(logits, target).backward()
    assert logits.grad[0, 2][target[0] == 1].mean() > 0
    target[0, 0, 0, 4] = 2
    mixed = torch.randn(1, 3, 4, 8, 8)
    assert present_dice_loss(mixed, target).item() == pytest.approx(weighted_dice_loss(mixed, target).item())


def test_floored_dice_stops_rewarding_an_empty_map_below_the_floor_and_is_the_paper_above_it():
    def gain(loss, high: float, low: float) -> float:
        return (loss(*_tumour_free_block(high)) - loss(*_tumour_free_block(low))).item()

    # below the floor the tumour term is constant: clearing the map earns only the liver term's gain
    below = (EMPTY_MAP_FLOOR / 2, 0.01)
    assert gain(floored_dice_loss, *below) == pytest.approx(gain(present_dice_loss, *below), abs=1e-5)
    assert gain(weighted_dice_loss, *below) > 0.8
    assert gain(floored_dice_loss, 5 * EMPTY_MAP_FLOOR, EMPTY_MAP_FLOOR) > 0.05  # false tumour above it still costs
    for voxels in (EMPTY_MAP_FLOOR, 5 * EMPTY_MAP_FLOOR):
        logits, target = _tumour_free_block(voxels)
        assert floored_dice_loss(logits, target).item() == pytest.approx(weighted_dice_loss(logits, target).item())
    target[0, 0, 0, 4] = 2  # a block with tumour: a small tumour map is not floored
    logits = _tumour_free_block(1.0)[0]
    assert floored_dice_loss(logits, target).item() == pytest.approx(weighted_dice_loss(logits, target).item())


def test_each_volume_of_a_batch_gets_its_own_weights():
    target = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    target[0, 0, 0, 0] = 1
    logits = torch.randn(2, 2, 4, 4, 4)
    batch = weighted_dice_loss(logits, target)
    single = [weighted_dice_loss(logits[i : i + 1], target[i : i + 1]) for i in range(2)]
    assert batch.item() == pytest.approx(sum(s.item() for s in single) / 2)


def test_head_starts_at_the_foreground_prior_or_zero():
    prior = ResUNet3d(ResUNetConfig(widths=(4, 8), encoder_blocks=(1,), decoder_blocks=(1,), foreground_prior=0.05))
    assert torch.softmax(prior.head[-1].bias, 0)[1].item() == pytest.approx(0.05)
    plain = ResUNet3d(ResUNetConfig(widths=(4, 8), encoder_blocks=(1,), decoder_blocks=(1,), foreground_prior=None))
    assert torch.equal(plain.head[-1].bias, torch.zeros(2))


def _randomised(config: ResUNetConfig) -> ResUNet3d:
    """A network whose norms are not the identity, so the inference path's norm arithmetic shows."""
    torch.manual_seed(3)
    network = ResUNet3d(config).eval()
    for module in network.modules():
        if isinstance(module, torch.nn.InstanceNorm3d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.3, 0.3)
    return network


@pytest.mark.parametrize("shape", [(16, 24, 40), (8, 16, 16)])
def test_cpu_inference_path_equals_pytorchs_own(shape):
    # Without autograd the CPU path runs in channels-last layout with its own instance norm and in-place
    # additions; with autograd PyTorch's norm runs on contiguous tensors. Both must give the same logits.
    network = _randomised(ResUNetConfig(widths=(4, 8, 16), encoder_blocks=(2, 1), decoder_blocks=(1, 2)))
    image = torch.randn(1, 1, *shape) * 50 + 20
    reference = network(image).detach()
    with torch.no_grad():
        fast = network(image)
    assert fast.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(fast, reference, atol=1e-4, rtol=1e-4)
    assert not torch.equal(reference, torch.zeros_like(reference))


def test_channels_last_norm_statistics_on_sizes_that_do_not_fold_evenly():
    from livertumor.networks import _channels_last_mean_var

    values = torch.randn(2, 3, 5, 7, 9, dtype=torch.float32) * 4 + 100
    values = values.to(memory_format=torch.channels_last_3d)
    mean, var = _channels_last_mean_var(values)
    assert torch.allclose(mean, values.mean(dim=(2, 3, 4)), atol=1e-4)
    assert torch.allclose(var, values.var(dim=(2, 3, 4), correction=0), rtol=1e-4)


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "kernel", "bias", "depth"),
    [(4, 4, 3, False, 16), (1, 4, 3, False, 8), (8, 3, 1, True, 8), (4, 8, 3, False, 3), (2, 2, 3, True, 1)],
)
def test_batch_one_convolution_gradients_equal_pytorchs(in_channels, out_channels, kernel, bias, depth):
    """The oneDNN backward of batch-1 training (input gradient by the flipped kernel, weight gradient on
    the sample split in two along z, odd depths falling back) gives PyTorch's gradients."""
    from livertumor.networks import Conv3d

    torch.manual_seed(0)
    conv = Conv3d(in_channels, out_channels, kernel, padding=kernel // 2, bias=bias)
    x = torch.randn(1, in_channels, depth, 12, 10, requires_grad=True)
    grad = torch.randn(1, out_channels, depth, 12, 10)
    conv(x).backward(grad)
    ours = [x.grad, conv.weight.grad] + ([conv.bias.grad] if bias else [])
    x_ref = x.detach().clone().requires_grad_(True)
    weight = conv.weight.detach().clone().requires_grad_(True)
    bias_ref = conv.bias.detach().clone().requires_grad_(True) if bias else None
    torch.nn.functional.conv3d(x_ref, weight, bias_ref, padding=kernel // 2).backward(grad)
    reference = [x_ref.grad, weight.grad] + ([bias_ref.grad] if bias else [])
    for mine, theirs in zip(ours, reference):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))


def test_soft_targets_equal_to_the_labels_give_the_labels_loss_and_shares_move_it():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 6, 6, generator=generator, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 6, 6), generator=generator)
    shares = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float()
    for loss in (weighted_dice_loss, dice_ce_loss):
        torch.testing.assert_close(loss(logits, shares), loss(logits, labels))
    # a voxel that is 40 % liver: the loss follows the share, not a rounded label
    softened = shares.clone()
    softened[:, :, 0, 0, 0] = torch.tensor([0.6, 0.4, 0.0])
    assert not torch.allclose(weighted_dice_loss(logits, softened), weighted_dice_loss(logits, labels))
    weighted_dice_loss(logits, softened).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def _two_lesion_block(tumour_in_lesions: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Liver with a 64-voxel and a 1-voxel tumour on a 10x10x10 block; the given tumour probability in both
    lesions and 0.001 elsewhere."""
    target = torch.ones(1, 10, 10, 10, dtype=torch.long)
    large, small = torch.zeros(10, 10, 10, dtype=torch.bool), torch.zeros(10, 10, 10, dtype=torch.bool)
    large[:4, :4, :4], small[8, 8, 8] = True, True
    target[0][large | small] = 2
    tumour = torch.full((10, 10, 10), 0.001)
    tumour[large | small] = tumour_in_lesions
    probabilities = torch.stack([(1 - tumour) / 2, (1 - tumour) / 2, tumour])[None]
    return probabilities.log().requires_grad_(True), target, large, small


def test_lesion_ce_is_the_mean_cross_entropy_of_each_lesion_and_its_shell_averaged_over_lesions():
    logits, target, _, small = _two_lesion_block()
    lesion_ce, liver_ce = -math.log(0.1), -math.log(0.999 / 2)  # every shell voxel is liver
    # the 64-voxel lesion's 2-voxel shell holds 6**3 - 64 voxels; the corner voxel's, 4**3 - 1 (the block ends)
    large = (64 * lesion_ce + 152 * liver_ce) / 216
    assert lesion_ce_loss(logits, target).item() == pytest.approx(
        (large + (lesion_ce + 63 * liver_ce) / 64) / 2, rel=1e-5
    )
    logits.data[:, :, small] = torch.tensor([0.25, 0.25, 0.5]).log()[None, :, None]  # the small lesion half found
    expected = (large + (-math.log(0.5) + 63 * liver_ce) / 64) / 2
    assert lesion_ce_loss(logits, target).item() == pytest.approx(expected, rel=1e-5)
    assert floored_lesion_ce_loss(logits, target).item() == pytest.approx(
        floored_dice_loss(logits, target).item() + LESION_TERM_WEIGHT * expected, rel=1e-5
    )


def test_each_lesions_neighbourhood_weighs_the_same_and_a_confident_miss_still_pulls_hard():
    logits, target, large, small = _two_lesion_block()
    logits.data.zero_()  # every voxel's cross-entropy gradient alike: what each voxel weighs shows
    lesion_ce_loss(logits, target).backward()
    weight = logits.grad.abs().sum(1)[0]
    reach = torch.nn.functional.max_pool3d(torch.stack([large, small])[:, None].float(), 5, 1, 2)[:, 0] > 0
    assert weight[reach[0]].sum().item() == pytest.approx(weight[reach[1]].sum().item(), rel=1e-5)
    assert weight[~(reach[0] | reach[1])].sum() == 0

    def small_lesion_pull(loss) -> float:  # how hard the loss raises the tumour logits of a lesion called liver
        logits, target, _, small = _two_lesion_block(tumour_in_lesions=1e-4)
        loss(logits, target).backward()
        return -logits.grad[0, 2][small].sum().item()

    assert small_lesion_pull(lesion_ce_loss) > 1000 * small_lesion_pull(floored_dice_loss) > 0


def test_lesion_ce_is_zero_without_lesions_and_its_shell_teaches_the_tissue_around_a_lesion():
    logits = torch.zeros(2, 3, 8, 8, 8, requires_grad=True)
    target = torch.ones(2, 8, 8, 8, dtype=torch.long)
    target[1, 4, 4, 4] = 2
    loss = lesion_ce_loss(logits, target)
    loss.backward()
    assert logits.grad[0].abs().sum() == 0  # the lesion-free volume adds nothing
    shell = torch.zeros(8, 8, 8, dtype=torch.bool)
    shell[2:7, 2:7, 2:7] = True
    shell[4, 4, 4] = False
    assert (logits.grad[1, 2][shell] > 0).all()  # tumour pushed down on the 2-voxel shell around the lesion
    assert logits.grad[1][:, ~shell & (target[1] != 2)].abs().sum() == 0  # and nowhere further
    soft = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    assert lesion_ce_loss(logits, soft).item() == pytest.approx(loss.item())  # shares read as their labels
