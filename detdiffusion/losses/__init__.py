"""Losses as pure functions: the latent-diffusion loss and DetDiffusion's perception-aware loss."""

from detdiffusion.losses.diffusion import diffusion_target, foreground_weight, ldm_loss
from detdiffusion.losses.perception import (
    dice_loss,
    mask_bce,
    perception_loss,
    resize_masks,
    timestep_weight,
)

__all__ = [
    "dice_loss",
    "diffusion_target",
    "foreground_weight",
    "ldm_loss",
    "mask_bce",
    "perception_loss",
    "resize_masks",
    "timestep_weight",
]
