"""The latent-diffusion loss: regression target, per-sample MSE and GeoDiffusion's foreground weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["diffusion_target", "foreground_weight", "ldm_loss"]


def _gather(alphas_cumprod: Tensor, timesteps: Tensor, like: Tensor) -> Tensor:
    """``alphas_cumprod[timesteps]`` shaped ``(B, 1, ..., 1)`` to broadcast over ``like``."""
    values = alphas_cumprod.to(device=timesteps.device)[timesteps].to(like.dtype)
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def diffusion_target(
    prediction_type: str, noise: Tensor, latents: Tensor, timesteps: Tensor, alphas_cumprod: Tensor
) -> Tensor:
    """The regression target of the denoiser for the scheduler's prediction type.

    Matches diffusers' training scripts and ``DDPMScheduler.get_velocity``.

    Args:
        prediction_type: the scheduler config's ``prediction_type``: ``epsilon`` (the noise),
            ``v_prediction`` (``v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x0``) or ``sample`` (``x0``).
        noise: the noise ``ε`` added to the latents, ``(B, C, H, W)``.
        latents: the clean latents ``x0``, ``(B, C, H, W)``.
        timesteps: the timestep of each sample, ``(B,)`` long.
        alphas_cumprod: the schedule's ``ᾱ``, ``(T,)``.

    Returns:
        The target, shaped like ``noise``.

    Raises:
        ValueError: on an unknown prediction type or mismatched shapes.
    """
    if noise.shape != latents.shape:
        raise ValueError(
            f"expected noise and latents of one shape, got {tuple(noise.shape)} and {tuple(latents.shape)}"
        )
    if timesteps.shape != (noise.shape[0],):
        raise ValueError(f"expected timesteps of shape ({noise.shape[0]},), got {tuple(timesteps.shape)}")
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return latents
    if prediction_type == "v_prediction":
        alpha = _gather(alphas_cumprod, timesteps, noise)
        return alpha.sqrt() * noise - (1 - alpha).sqrt() * latents
    raise ValueError(
        f"expected prediction_type 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}"
    )


def ldm_loss(model_pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error per sample (over channels and pixels), then the mean over the batch.

    Args:
        model_pred: the denoiser's output, ``(B, C, H, W)``.
        target: the regression target (see ``diffusion_target``), same shape.
        weight: optional per-pixel weights ``(B, 1 | C, H, W)`` (see ``foreground_weight``); each
            sample's error is then its weighted mean ``Σ w·e / Σ w``. With weights of mean 1 (as
            ``foreground_weight`` normalises them) that is GeoDiffusion's ``mean(w·e)``.

    Returns:
        The scalar loss.
    """
    if model_pred.shape != target.shape:
        raise ValueError(
            "expected model_pred and target of one shape, "
            f"got {tuple(model_pred.shape)} and {tuple(target.shape)}"
        )
    error = (model_pred - target).square()
    if weight is None:
        return error.flatten(1).mean(1).mean()
    if (
        weight.ndim != error.ndim
        or weight.shape[0] != error.shape[0]
        or weight.shape[1] not in (1, error.shape[1])
        or weight.shape[2:] != error.shape[2:]
    ):
        c = error.shape[1]
        raise ValueError(
            f"expected weight of shape (B, 1|{c}, ...) matching {tuple(error.shape)}, "
            f"got {tuple(weight.shape)}"
        )
    weight = weight.to(error.dtype).expand_as(error)
    per_sample = (weight * error).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1e-12)
    return per_sample.mean()


def foreground_weight(
    boxes: Tensor,
    object_mask: Tensor,
    size: Sequence[int],
    foreground_weight: float = 2.0,
    area_exponent: float = 0.2,
    normalize: bool = True,
) -> Tensor:
    """GeoDiffusion's foreground re-weighting map of the LDM loss (its ``constant`` mode).

    GeoDiffusion (``utils/data/coco_stuff.py``, run with ``--foreground_loss_mode constant
    --foreground_loss_weight 2.0 --foreground_loss_norm``) rasterises each box onto the latent
    grid by rounding ``box·(W, H)``; a cell inside a box of ``a`` cells weighs
    ``foreground_weight / a^0.2``, a background cell ``1 / (H·W)^0.2`` (the whole image as one
    "box"), and the map is scaled to mean 1 per image. Small objects so weigh more than large
    ones and everything more than background. Where boxes overlap, GeoDiffusion keeps the last
    one drawn (a random order); here the largest weight (the smallest box) wins, so the map does
    not depend on object order. A box that rounds to no cell keeps one cell, so tiny objects are
    not dropped. ``area_exponent=0, normalize=False`` gives the plain rule: ``foreground_weight``
    inside boxes, 1 outside.

    Args:
        boxes: normalised xyxy boxes ``(B, N, 4)``.
        object_mask: ``(B, N)`` bool, which boxes are real (padding is ignored).
        size: ``(h, w)`` of the map (the latents' spatial size).
        foreground_weight: weight of foreground cells, before the area term.
        area_exponent: ``p`` of the ``1/area^p`` term (GeoDiffusion: 0.2).
        normalize: scale each map to mean 1 (GeoDiffusion's ``--foreground_loss_norm``).

    Returns:
        The weights ``(B, 1, h, w)``, float, on ``boxes``' device.
    """
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"expected boxes of shape (B, N, 4), got {tuple(boxes.shape)}")
    if object_mask.shape != boxes.shape[:2]:
        raise ValueError(
            f"expected object_mask of shape {tuple(boxes.shape[:2])}, got {tuple(object_mask.shape)}"
        )
    if len(size) != 2:
        raise ValueError(f"expected size (h, w), got {tuple(size)}")
    h, w = int(size[0]), int(size[1])
    scale = boxes.new_tensor([w, h, w, h], dtype=torch.float32)
    cells = torch.round(boxes.float().clamp(0, 1) * scale).long()  # (B, N, 4) cell edges
    x0, y0, x1, y1 = cells.unbind(-1)
    x0, y0 = x0.clamp(max=w - 1), y0.clamp(max=h - 1)
    x1, y1 = torch.maximum(x1, x0 + 1), torch.maximum(y1, y0 + 1)
    area = ((x1 - x0) * (y1 - y0)).float()  # (B, N) cells covered
    box_weight = foreground_weight / area.pow(area_exponent)  # (B, N)

    ys = torch.arange(h, device=boxes.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=boxes.device).view(1, 1, 1, w)
    inside = (
        (ys >= y0[..., None, None])
        & (ys < y1[..., None, None])
        & (xs >= x0[..., None, None])
        & (xs < x1[..., None, None])
        & object_mask[..., None, None]
    )  # (B, N, h, w)
    background = 1.0 / float(h * w) ** area_exponent
    fg = torch.where(inside, box_weight[..., None, None], torch.zeros((), device=boxes.device))
    fg = fg.amax(1) if fg.shape[1] else fg.new_zeros(fg.shape[0], h, w)  # (B, h, w)
    weight = torch.where(inside.any(1), fg, torch.full_like(fg, background)).unsqueeze(1)
    if normalize:
        weight = weight / weight.mean(dim=(2, 3), keepdim=True)
    return weight
