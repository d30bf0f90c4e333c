"""The perception-aware (P.A.) loss of DetDiffusion: ``L_p = sqrt(ᾱ_t)·(L_mask + L_dice)`` (§3.3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dice_loss", "mask_bce", "perception_loss", "resize_masks", "timestep_weight"]


def _check_masks(logits: Tensor, targets: Tensor, valid: Tensor, same_size: bool = True) -> None:
    if logits.ndim != 4:
        raise ValueError(f"expected logits of shape (B, K, H, W), got {tuple(logits.shape)}")
    if targets.ndim != 4 or targets.shape[:2] != logits.shape[:2]:
        b, k = logits.shape[:2]
        raise ValueError(f"expected targets of shape ({b}, {k}, h, w), got {tuple(targets.shape)}")
    if same_size and targets.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"expected targets of logits' size {tuple(logits.shape[2:])}, got {tuple(targets.shape[2:])}"
        )
    if valid.shape != logits.shape[:2] or valid.dtype != torch.bool:
        raise ValueError(
            f"expected valid of shape {tuple(logits.shape[:2])} and dtype bool, "
            f"got {tuple(valid.shape)} {valid.dtype}"
        )


def resize_masks(masks: Tensor, size: Sequence[int]) -> Tensor:
    """Masks ``(B, K, h, w)`` (bool or float) as float at ``size``, by area averaging.

    Area averaging turns a pixel's coverage into a soft target (a cell half inside an object
    gets 0.5), where nearest-neighbour would flip thin objects on and off.
    """
    masks = masks.to(torch.float32) if not masks.is_floating_point() else masks
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks, size=tuple(size), mode="area")


def timestep_weight(alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """``sqrt(ᾱ_t)`` per sample, ``(B,)``: nearly clean timesteps count most in the P.A. loss."""
    if timesteps.ndim != 1:
        raise ValueError(f"expected timesteps of shape (B,), got {tuple(timesteps.shape)}")
    return alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps].sqrt()


def mask_bce(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Per-pixel binary cross-entropy of each mask, averaged over its pixels.

    Args:
        logits: mask logits ``(B, K, H, W)``.
        targets: targets in [0, 1], same shape (soft targets allowed).
        valid: ``(B, K)`` bool; invalid masks get 0.

    Returns:
        ``(B, K)`` losses.
    """
    _check_masks(logits, targets, valid)
    bce = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return torch.where(valid, bce.flatten(2).mean(-1), 0.0)


def dice_loss(logits: Tensor, targets: Tensor, valid: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft dice loss of each mask on sigmoid probabilities.

    ``1 − (2·Σ p·t + s) / (Σ p + Σ t + s)`` with sums over pixels. The smooth term ``s`` (as in
    DETR/Mask2Former) keeps it finite for an empty target and makes an empty prediction of an
    empty mask score ≈ 0, so absent classes and tiny objects can be supervised too.

    Args:
        logits: mask logits ``(B, K, H, W)``.
        targets: targets in [0, 1], same shape (soft targets allowed).
        valid: ``(B, K)`` bool; invalid masks get 0.
        smooth: the smoothing term ``s`` (in pixels).

    Returns:
        ``(B, K)`` losses in [0, 1].
    """
    _check_masks(logits, targets, valid)
    probs = logits.sigmoid().flatten(2)
    targets = targets.to(probs.dtype).flatten(2)
    numerator = 2 * (probs * targets).sum(-1) + smooth
    denominator = probs.sum(-1) + targets.sum(-1) + smooth
    return torch.where(valid, 1 - numerator / denominator, 0.0)


def perception_loss(
    logits: Tensor,
    targets: Tensor,
    valid: Tensor,
    timesteps: Tensor,
    alphas_cumprod: Tensor,
    use_timestep_weight: bool = True,
    use_dice: bool = True,
) -> Tensor:
    """DetDiffusion's P.A. loss ``sqrt(ᾱ_t)·(BCE + dice)`` over the valid masks of a batch.

    Each sample's loss is the mean over its valid masks, weighted by its ``sqrt(ᾱ_t)``; the
    result is the mean over samples with at least one valid mask. Targets of another size than
    the logits are area-resized to the logits (``resize_masks``): the head predicts at feature
    resolution, so the masks are the supervision at that resolution; shrinking them once (no
    gradient) is cheaper than upsampling every logit map, and its gradient, to the image size.

    Args:
        logits: mask logits ``(B, K, H, W)`` at feature resolution.
        targets: masks ``(B, K, h, w)``, bool or float in [0, 1].
        valid: ``(B, K)`` bool, which masks count.
        timesteps: diffusion timestep of each sample ``(B,)``.
        alphas_cumprod: the noise schedule's ``ᾱ`` ``(T,)``.
        use_timestep_weight: weight by ``sqrt(ᾱ_t)`` (the paper; off for its ablation).
        use_dice: add the dice term (the paper; off for its ablation).

    Returns:
        The scalar loss; a batch without valid masks gives a zero that keeps the graph (so
        every rank of a DDP run still gets gradients for the head).
    """
    _check_masks(logits, targets, valid, same_size=False)
    if timesteps.shape != logits.shape[:1]:
        raise ValueError(f"expected timesteps of shape ({logits.shape[0]},), got {tuple(timesteps.shape)}")
    targets = resize_masks(targets, logits.shape[-2:])
    per_mask = mask_bce(logits, targets, valid)
    if use_dice:
        per_mask = per_mask + dice_loss(logits, targets, valid)
    count = valid.sum(1)  # (B,)
    per_sample = per_mask.sum(1) / count.clamp_min(1)
    if use_timestep_weight:
        per_sample = per_sample * timestep_weight(alphas_cumprod, timesteps).to(per_sample.dtype)
    has_masks = count > 0
    # Mean over samples with masks, without a data-dependent branch (no host sync); the
    # torch.where in the terms keeps the graph to the logits when no mask is valid.
    return (per_sample * has_masks).sum() / has_masks.sum().clamp_min(1)
