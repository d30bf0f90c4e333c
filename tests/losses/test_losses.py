"""The loss functions on small hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from detdiffusion.losses import (
    dice_loss,
    diffusion_target,
    foreground_weight,
    ldm_loss,
    mask_bce,
    perception_loss,
    resize_masks,
    timestep_weight,
)


def _alphas(steps: int = 1000) -> torch.Tensor:
    return DDPMScheduler(num_train_timesteps=steps).alphas_cumprod.float()


# -- diffusion ----------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_v_prediction_target_matches_diffusers(schedule: str) -> None:
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule=schedule, prediction_type="v_prediction"
    )
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    timesteps = torch.tensor([0, 500, 999])
    target = diffusion_target("v_prediction", noise, latents, timesteps, scheduler.alphas_cumprod)
    torch.testing.assert_close(target, scheduler.get_velocity(latents, noise, timesteps))


def test_epsilon_and_sample_targets() -> None:
    latents, noise, t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.tensor([1, 2])
    assert diffusion_target("epsilon", noise, latents, t, _alphas()) is noise
    assert diffusion_target("sample", noise, latents, t, _alphas()) is latents


def test_unknown_prediction_type_is_named() -> None:
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="'flow'"):
        diffusion_target("flow", x, x, torch.tensor([0]), _alphas())


def test_ldm_loss_is_per_sample_mse_then_batch_mean() -> None:
    pred, target = torch.zeros(2, 1, 2, 2), torch.tensor([1.0, 3.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    assert ldm_loss(pred, target).item() == pytest.approx((1 + 9) / 2)
    torch.testing.assert_close(ldm_loss(pred, target), F.mse_loss(pred, target))


@pytest.mark.parametrize("channels", [1, 4])
def test_ldm_loss_with_uniform_weight_equals_unweighted(channels: int) -> None:
    pred, target = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    weight = torch.full((3, channels, 5, 5), 2.5)
    torch.testing.assert_close(ldm_loss(pred, target, weight), ldm_loss(pred, target))


def test_ldm_loss_weighted_mean() -> None:
    pred = torch.zeros(1, 1, 1, 2)
    target = torch.tensor([[[[1.0, 2.0]]]])  # errors 1 and 4
    weight = torch.tensor([[[[3.0, 1.0]]]])
    assert ldm_loss(pred, target, weight).item() == pytest.approx((3 * 1 + 1 * 4) / 4)


def test_ldm_loss_checks_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        ldm_loss(torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 4))
    with pytest.raises(ValueError, match=r"expected weight of shape \(B, 1\|4"):
        ldm_loss(torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8), torch.ones(2, 2, 8, 8))


def test_foreground_weight_constant_rule() -> None:
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.25], [0.0, 0.0, 0.0, 0.0]]])  # second: padding
    mask = torch.tensor([[True, False]])
    weight = foreground_weight(boxes, mask, (8, 8), 3.0, area_exponent=0.0, normalize=False)
    assert weight.shape == (1, 1, 8, 8)
    expected = torch.ones(8, 8)
    expected[0:2, 0:4] = 3.0
    torch.testing.assert_close(weight[0, 0], expected)


def test_foreground_weight_geodiffusion_rule() -> None:
    # A 2×4-cell box and a 1×1-cell box inside it on a 4×8 grid.
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.125, 0.25]]])
    weight = foreground_weight(boxes, torch.tensor([[True, True]]), (4, 8), 2.0, 0.2, normalize=False)[0, 0]
    assert weight[0, 0].item() == pytest.approx(2.0)  # the smaller box wins: 2 / 1^0.2
    assert weight[1, 3].item() == pytest.approx(2.0 / 8**0.2)
    assert weight[3, 7].item() == pytest.approx(1.0 / 32**0.2)
    normalised = foreground_weight(boxes, torch.tensor([[True, True]]), (4, 8))
    assert normalised.mean().item() == pytest.approx(1.0)
    torch.testing.assert_close(normalised[0, 0] / normalised[0, 0, 3, 7], weight / weight[3, 7])


def test_foreground_weight_keeps_tiny_boxes_and_handles_no_objects() -> None:
    tiny = torch.tensor([[[0.5, 0.5, 0.51, 0.51]]])
    weight = foreground_weight(tiny, torch.tensor([[True]]), (8, 8), normalize=False)
    assert (weight > weight.min()).sum() == 1
    empty = foreground_weight(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), (4, 4))
    torch.testing.assert_close(empty, torch.ones(2, 1, 4, 4))


# -- perception ---------------------------------------------------------------------------------

BIG = 20.0  # a logit whose sigmoid is 1 to 9 digits


def test_dice_of_perfect_and_opposite_predictions() -> None:
    target = torch.zeros(1, 2, 8, 8)
    target[0, :, :4] = 1
    valid = torch.ones(1, 2, dtype=torch.bool)
    perfect = torch.where(target > 0, BIG, -BIG)
    assert dice_loss(perfect, target, valid).max().item() == pytest.approx(0.0, abs=1e-6)
    # Opposite: no overlap, so 1 − s / (Σp + Σt + s) = 1 − 1/65.
    assert dice_loss(-perfect, target, valid)[0, 0].item() == pytest.approx(1 - 1 / 65, abs=1e-6)


def test_dice_of_empty_target_and_empty_prediction_is_zero() -> None:
    loss = dice_loss(
        torch.full((1, 1, 4, 4), -BIG), torch.zeros(1, 1, 4, 4), torch.ones(1, 1, dtype=torch.bool)
    )
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_dice_hand_computed_soft_case() -> None:
    logits = torch.zeros(1, 1, 1, 2)  # p = 0.5, 0.5
    target = torch.tensor([[[[1.0, 0.0]]]])
    expected = 1 - (2 * 0.5 + 1) / (1.0 + 1.0 + 1)
    assert dice_loss(logits, target, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(expected)


def test_bce_matches_torch_and_zeroes_invalid() -> None:
    logits, targets = torch.randn(2, 3, 5, 5), torch.rand(2, 3, 5, 5)
    valid = torch.tensor([[True, False, True], [True, True, True]])
    loss = mask_bce(logits, targets, valid)
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean((2, 3))
    torch.testing.assert_close(loss, torch.where(valid, expected, 0.0))
    assert loss[0, 1] == 0


def test_timestep_weight_is_sqrt_alpha_bar() -> None:
    alphas, t = _alphas(), torch.tensor([0, 10, 999])
    torch.testing.assert_close(timestep_weight(alphas, t), alphas[t].sqrt())


def _manual(logits, targets, valid, weights, dice=True):
    per_sample = []
    for b in range(logits.shape[0]):
        terms = []
        for k in range(logits.shape[1]):
            if valid[b, k]:
                x, y = logits[b, k], targets[b, k]
                term = F.binary_cross_entropy_with_logits(x, y)
                if dice:
                    p = x.sigmoid()
                    term = term + 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
                terms.append(term)
        if terms:
            per_sample.append(weights[b] * torch.stack(terms).mean())
    return torch.stack(per_sample).mean()


@pytest.mark.parametrize(("use_timestep_weight", "use_dice"), [(True, True), (False, True), (True, False)])
def test_perception_loss_equals_manual_formula(use_timestep_weight: bool, use_dice: bool) -> None:
    logits, targets = torch.randn(3, 4, 6, 6), (torch.rand(3, 4, 6, 6) > 0.5).float()
    valid = torch.tensor([[True, True, False, False], [False] * 4, [True, False, True, True]])
    alphas, t = _alphas(), torch.tensor([5, 300, 900])
    weights = alphas[t].sqrt() if use_timestep_weight else torch.ones(3)
    loss = perception_loss(logits, targets, valid, t, alphas, use_timestep_weight, use_dice)
    torch.testing.assert_close(loss, _manual(logits, targets, valid, weights, use_dice))


def test_invalid_masks_do_not_change_the_loss() -> None:
    logits, targets = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    valid = torch.tensor([[True, False, True], [True, True, False]])
    alphas, t = _alphas(), torch.tensor([1, 2])
    loss = perception_loss(logits, targets, valid, t, alphas)
    logits2, targets2 = logits.clone(), targets.clone()
    logits2[~valid], targets2[~valid] = 100.0, 0.0
    torch.testing.assert_close(perception_loss(logits2, targets2, valid, t, alphas), loss)


def test_no_valid_mask_gives_zero_with_grad() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = perception_loss(
        logits, torch.ones(2, 3, 4, 4), torch.zeros(2, 3, dtype=torch.bool), torch.tensor([1, 2]), _alphas()
    )
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 0


def test_targets_are_area_resized_to_the_logits() -> None:
    big = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    big[0, 0, :4, :3] = True
    soft = resize_masks(big, (4, 4))
    assert soft[0, 0, 0].tolist() == [1.0, 0.5, 0.0, 0.0]
    logits = torch.randn(1, 1, 4, 4)
    valid, alphas, t = torch.ones(1, 1, dtype=torch.bool), _alphas(), torch.tensor([0])
    torch.testing.assert_close(
        perception_loss(logits, big, valid, t, alphas), perception_loss(logits, soft, valid, t, alphas)
    )


def test_perception_loss_checks_shapes() -> None:
    logits, targets, t = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"expected targets of shape \(2, 3, h, w\)"):
        perception_loss(logits, torch.zeros(2, 4, 8, 8), torch.ones(2, 3, dtype=torch.bool), t, _alphas())
    with pytest.raises(ValueError, match="expected valid of shape"):
        perception_loss(logits, targets, torch.ones(2, 3), t, _alphas())
    with pytest.raises(ValueError, match=r"expected timesteps of shape \(2,\)"):
        perception_loss(logits, targets, torch.ones(2, 3, dtype=torch.bool), torch.tensor([0]), _alphas())
    with pytest.raises(ValueError, match=r"expected logits of shape \(B, K, H, W\)"):
        perception_loss(torch.zeros(2, 3, 4), targets, torch.ones(2, 3, dtype=torch.bool), t, _alphas())


def test_timestep_weight_favours_clean_timesteps() -> None:
    alphas = _alphas()
    w = timestep_weight(alphas, torch.tensor([0, 999]))
    assert w[0] > 0.99 and w[1] < 0.01 and not math.isnan(w.sum().item())
