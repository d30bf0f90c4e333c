"""Sampling: classifier-free guided denoising with any diffusers scheduler."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import diffusers
import torch
from diffusers import SchedulerMixin
from diffusers.configuration_utils import FrozenDict
from diffusers.utils.torch_utils import randn_tensor


def make_scheduler(name: str | SchedulerMixin | None, training_config: FrozenDict) -> SchedulerMixin:
    """A sampling scheduler with the training noise schedule.

    Args:
        name: a diffusers scheduler class name (``DDIMScheduler``, ``DPMSolverMultistepScheduler``,
            ``EulerDiscreteScheduler``...), a scheduler instance (used as is), or None for DDIM.
        training_config: the training scheduler's config (betas, prediction type).
    """
    if isinstance(name, SchedulerMixin):
        return name
    name = name or "DDIMScheduler"
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ValueError(f"unknown diffusers scheduler {name!r}: expected a class name like 'DDIMScheduler'")
    # All of the training config, defaults included: diffusers would otherwise swap the training
    # scheduler's defaults for the new class's (``_use_default_values``), and a model built from
    # configs would sample differently from the same model saved and loaded.
    return cls.from_config({k: v for k, v in training_config.items() if k != "_use_default_values"})


def denoise(
    denoiser: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: SchedulerMixin,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    shape: tuple[int, ...],
    num_inference_steps: int,
    guidance_scale: float,
    generator: torch.Generator | list[torch.Generator] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> torch.Tensor:
    """Latents denoised from Gaussian noise, StableDiffusionPipeline's loop without the pipeline.

    Args:
        denoiser: ``(latents, timestep, text) -> model output`` (the UNet's ``.sample``).
        scheduler: sampling scheduler; ``set_timesteps`` is called here.
        cond: ``(B, L, D)`` text hidden states of the prompts.
        uncond: ``(B, L, D)`` hidden states of the empty prompt, for guidance (None: no guidance).
        shape: ``(B, C, H, W)`` of the latents.
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance scale; ``<= 1`` runs the conditional branch only.
        generator: one generator, or one per image (an image then does not depend on its batch);
            stochastic samplers (DDPM, ancestral Euler) draw their step noise from it too.
        progress: wraps the timesteps (a progress bar).
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    guided = uncond is not None and guidance_scale > 1.0
    scheduler.set_timesteps(num_inference_steps, device=cond.device)
    latents = randn_tensor(shape, generator=generator, device=cond.device, dtype=cond.dtype)
    latents = latents * scheduler.init_noise_sigma
    text = torch.cat([uncond, cond]) if guided else cond
    step_kwargs = (
        {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    )
    for t in progress(scheduler.timesteps) if progress else scheduler.timesteps:
        x = torch.cat([latents, latents]) if guided else latents
        x = scheduler.scale_model_input(x, t)
        out = denoiser(x, t, text)
        if guided:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + guidance_scale * (out_cond - out_uncond)
        latents = scheduler.step(out, t, latents, **step_kwargs).prev_sample
    return latents
