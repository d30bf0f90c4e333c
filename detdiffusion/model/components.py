"""The latent diffusion parts: from a local Stable Diffusion folder, or built from configs."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.tokenizer import add_layout_tokens, extend_text_encoder, load_tokenizer

log = logging.getLogger(__name__)


# Stable Diffusion 1.x's scheduler_config.json (the parts a DDPMScheduler reads). Latents are not
# bounded, so no clipping; StableDiffusionPipeline insists on steps_offset 1.
SD_SCHEDULER = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "steps_offset": 1,
}


@dataclass
class DiffusionComponents:
    """What a DetDiffusion model is made of (Stable Diffusion's parts)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL | None
    """None: pixel-space diffusion (the UNet denoises the image itself; the CPU miniature)."""
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler


def load_components(
    pretrained_model_name_or_path: str | None = None,
    unet: dict[str, Any] | None = None,
    vae: dict[str, Any] | None = None,
    text_encoder: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
    tokenizer: str | None = None,
) -> DiffusionComponents:
    """Stable Diffusion's parts from a local diffusers folder, or each built from its config.

    Args:
        pretrained_model_name_or_path: a local diffusers Stable Diffusion folder (``unet/``,
            ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``). Nothing is downloaded.
        unet: ``UNet2DConditionModel`` config, when no folder is given.
        vae: ``AutoencoderKL`` config, when no folder is given; None: pixel-space diffusion (no
            VAE; a randomly initialised frozen VAE would make latents nothing can decode).
        text_encoder: ``CLIPTextConfig`` fields, when no folder is given.
        scheduler: ``DDPMScheduler`` config (the training noise schedule), when no folder is given;
            None: Stable Diffusion's schedule with a VAE, DDPM's defaults in pixel space.
        tokenizer: tokenizer folder when no folder is given; None builds SD 1.x's CLIP
            tokenizer offline (open_clip's BPE).
    """
    if pretrained_model_name_or_path is not None:
        given = [
            n for n, v in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)) if v is not None
        ]
        if given:
            raise ValueError(
                f"--model.pretrained_model_name_or_path loads every part; drop --model.{given[0]} "
                "(or drop the path to build the parts from configs)"
            )
        path = Path(pretrained_model_name_or_path).expanduser()
        pixel_space = _is_pixel_space_export(path)
        parts = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
        missing = [p for p in parts if not (path / p).is_dir() and not (p == "vae" and pixel_space)]
        if missing:
            raise FileNotFoundError(
                f"{path} is not a local diffusers Stable Diffusion folder: it lacks {', '.join(missing)}/"
            )
        kwargs = {"local_files_only": True}
        return DiffusionComponents(
            unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kwargs),
            vae=None if pixel_space else AutoencoderKL.from_pretrained(path, subfolder="vae", **kwargs),
            text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kwargs),
            tokenizer=load_tokenizer(path),
            scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler", **kwargs),
        )
    missing = [n for n, v in (("unet", unet), ("text_encoder", text_encoder)) if v is None]
    if missing:
        raise ValueError(
            "give --model.pretrained_model_name_or_path (a local Stable Diffusion folder) or configs for "
            f"every part; missing: {', '.join('--model.' + m for m in missing)}"
        )
    return DiffusionComponents(
        unet=UNet2DConditionModel(**unet),
        vae=None if vae is None else AutoencoderKL(**vae),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_encoder)),
        tokenizer=load_tokenizer(tokenizer),
        scheduler=DDPMScheduler(**(scheduler or (SD_SCHEDULER if vae is not None else {}))),
    )


def _is_pixel_space_export(path: Path) -> bool:
    """Whether ``path`` is a ``save_pretrained`` export of a pixel-space model (it has no ``vae/``)."""
    settings = path / "detdiffusion.json"
    return settings.is_file() and bool(json.loads(settings.read_text()).get("pixel_space"))


def extend_for_layouts(components: DiffusionComponents, grid: LocationGrid) -> None:
    """Add the layout tokens to the tokenizer and grow the text encoder to match (layout issue)."""
    add_layout_tokens(components.tokenizer, grid)
    vocab = components.text_encoder.get_input_embeddings().weight.shape[0]
    if vocab > len(components.tokenizer):
        raise ValueError(
            f"the text encoder has {vocab} token rows, the tokenizer {len(components.tokenizer)}: "
            "a checkpoint extended for another grid? Use the grid it was trained with."
        )
    extend_text_encoder(components.text_encoder, components.tokenizer, grid)
