"""Layout-to-image generation: a diffusers pipeline over a DetDiffusion model's parts.

``LayoutDiffusionPipeline`` is a ``DiffusionPipeline`` (``.to(device)``, progress bars, CPU
offload) whose prompt is a layout: objects with class, box and perception-aware attribute.
Every image is drawn from its own generator, seeded from ``(base seed, layout id, sample
index)``, so an image does not depend on its batch, on the number of ranks or on a resume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from diffusers import DiffusionPipeline, SchedulerMixin
from diffusers.utils import BaseOutput
from PIL import Image

from detdiffusion.layout.encoding import LayoutTokenizer
from detdiffusion.layout.types import Attribute, Layout
from detdiffusion.model.sampling import denoise, make_scheduler
from detdiffusion.model.spatial import check_spatial_categories, layout_boxes, layout_maps

__all__ = [
    "STRATEGIES",
    "LayoutDiffusionPipeline",
    "LayoutPipelineOutput",
    "Strategy",
    "apply_strategy",
    "encode_windows",
    "image_seed",
    "to_pil",
]

#: How generation sets the attribute of each object: ``origin`` keeps the layout's own, ``easy``
#: and ``hard`` set every thing object's, and stuff's to ``background`` (what labelling gives it).
Strategy = Literal["origin", "easy", "hard"]
STRATEGIES: tuple[str, ...] = Strategy.__args__


def apply_strategy(
    layout: Layout, strategy: str, overrides: Mapping[int, Attribute | str] | None = None
) -> Layout:
    """``layout`` with attributes set by ``strategy``, then by per-object ``overrides``.

    Args:
        layout: the layout.
        strategy: one of ``STRATEGIES``.
        overrides: ``{annotation id: attribute}``, applied after the strategy; ids the layout
            does not hold are ignored (one mapping serves a whole layout set).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    objects = list(layout.objects)
    if strategy != "origin":
        # Stuff is what a detector cannot detect: ``background``, as ``label_attributes`` makes it.
        objects = [o.with_attribute(Attribute.BACKGROUND if o.is_stuff else strategy) for o in objects]
    if overrides:
        objects = [
            o.with_attribute(overrides[o.annotation_id]) if o.annotation_id in overrides else o
            for o in objects
        ]
    return layout.with_objects(objects)


def image_seed(base_seed: int, layout_id: int, sample_index: int) -> int:
    """The seed of sample ``sample_index`` of layout ``layout_id``: independent of batch and rank."""
    state = np.random.SeedSequence([base_seed, layout_id, sample_index]).generate_state(2, np.uint64)[0]
    return int(state) >> 1  # torch seeds are signed 64-bit


def encode_windows(text_encoder: torch.nn.Module, input_ids: torch.Tensor, window: int) -> torch.Tensor:
    """Hidden states ``(B, W·window, D)`` of ``(B, W·window)`` ids: each window encoded on its own."""
    b = input_ids.shape[0]
    hidden = text_encoder(input_ids.reshape(-1, window))[0]  # (B·W, window, D)
    return hidden.reshape(b, -1, hidden.shape[-1])


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``(B, 3, H, W)`` images in [0, 1] as PIL images."""
    array = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


@dataclass
class LayoutPipelineOutput(BaseOutput):
    """Images with the layouts that made them (attributes as generated) and their seeds."""

    images: list[Image.Image] | torch.Tensor
    layouts: list[Layout]
    seeds: list[int]


class LayoutDiffusionPipeline(DiffusionPipeline):
    """Layouts in, images out, with a DetDiffusion model's UNet, text encoder and (optional) VAE.

    Build one with ``from_module(module)`` (a ``DetDiffusionModule``; the EMA UNet when it has
    one) or ``from_export(folder)`` (a ``save_pretrained`` folder). Without a VAE the UNet works
    in pixel space (the CPU miniature).

    With ``spatial_conditioning`` (the category id of each extra UNet input channel, see
    ``detdiffusion.model.spatial``) every step feeds the layouts' box maps to the conditional
    branch and zero maps to the negative one; objects of other categories draw nothing.
    """

    _optional_components: ClassVar[list[str]] = ["vae"]
    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        unet,
        text_encoder,
        tokenizer,
        scheduler,
        vae=None,
        layout_tokenizer=None,
        spatial_conditioning: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(layout_tokenizer, LayoutTokenizer):
            raise TypeError(
                "layout_tokenizer must be the model's LayoutTokenizer (grid, template, class names)"
            )
        spatial = check_spatial_categories(spatial_conditioning)
        latent = 3 if vae is None else vae.config.latent_channels
        if unet.config.in_channels != latent + len(spatial or ()):
            raise ValueError(
                f"the UNet takes {unet.config.in_channels} input channels: expected {latent} latent "
                f"channels plus one per spatial_conditioning category ({list(spatial or ())})"
            )
        self.register_modules(
            unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, vae=vae
        )
        #: Not a diffusers component: the vocabulary travels in the export's ``detdiffusion.json``.
        self.layout_tokenizer = layout_tokenizer
        #: Category id of each box-map channel (None: no spatial conditioning); in ``detdiffusion.json``.
        self.spatial_conditioning = spatial

    @classmethod
    def from_module(cls, module: Any, use_ema: bool = True) -> LayoutDiffusionPipeline:
        """The pipeline of a ``DetDiffusionModule``, sharing its weights (nothing is copied)."""
        unet = module.ema_unet if use_ema and module.ema_unet is not None else module.unet
        return cls(
            unet=unet,
            text_encoder=module.text_encoder,
            tokenizer=module.layout_tokenizer.tokenizer,
            scheduler=make_scheduler(None, module.noise_scheduler.config),
            vae=module.vae,
            layout_tokenizer=module.layout_tokenizer,
            spatial_conditioning=module.spatial_ids,
        )

    @classmethod
    def from_export(cls, path: str, **overrides: Any) -> LayoutDiffusionPipeline:
        """The pipeline of a ``DetDiffusionModule.save_pretrained`` folder."""
        from detdiffusion.model.module import DetDiffusionModule

        return cls.from_module(DetDiffusionModule.from_pretrained(path, **overrides).eval())

    # -- prompts --------------------------------------------------------------------------------

    def encode_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Text-encoder hidden states ``(B, W·77, D)`` of ``W`` concatenated 77-token windows."""
        return encode_windows(
            self.text_encoder, input_ids.to(self.text_encoder.device), self.layout_tokenizer.window
        )

    def prompt_ids(
        self, prompts: Sequence[Layout | str], negative_prompt: str = ""
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, ...]]]:
        """Token ids ``(B, W·77)`` of layouts or text, ``(1, 77)`` of the negative prompt, objects kept.

        Prompts are padded with empty-prompt windows to the longest, as training batches are.
        ``kept[i]`` lists the objects of layout ``i`` in its prompt (``drop_smallest`` may drop some).
        """
        tok = self.layout_tokenizer
        rows, kept = [], []
        for p in prompts:
            if isinstance(p, Layout):
                encoded = tok.encode(p)
                rows.append(encoded.input_ids)
                kept.append(encoded.kept)
            else:
                rows.append(tok.encode_text(p))
                kept.append(())
        windows = max(len(r) for r in rows) // tok.window
        ids = np.tile(tok.empty_window, (len(rows), windows))
        for row, r in zip(ids, rows, strict=True):
            row[: len(r)] = r
        negative = torch.from_numpy(tok.encode_text(negative_prompt))[None]
        return torch.from_numpy(ids), negative, kept

    @staticmethod
    def prompt_boxes(
        prompts: Sequence[Layout | str], kept: Sequence[tuple[int, ...]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes ``(B, N, 4)`` and category ids ``(B, N)`` (-1 pads) of the objects in each prompt.

        ``kept`` is ``prompt_ids``'s: objects left out of the prompt are left out of the maps too,
        as in training batches. Text prompts have no objects.
        """
        return layout_boxes(
            [
                p.with_objects([p.objects[j] for j in k]) if isinstance(p, Layout) else Layout(())
                for p, k in zip(prompts, kept, strict=True)
            ]
        )

    # -- generation -----------------------------------------------------------------------------

    @torch.no_grad()
    def generate_ids(
        self,
        input_ids: torch.Tensor,
        negative_ids: torch.Tensor | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 5.0,
        scheduler: str | SchedulerMixin | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        progress: bool = False,
        boxes: torch.Tensor | None = None,
        category_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1] for prompt token ids; StableDiffusionPipeline's loop.

        Args:
            input_ids: ``(B, W·77)`` prompt ids.
            negative_ids: ids of the guidance's negative branch, ``(B or 1, at most W·77)``, padded
                with empty windows (None: the empty prompt).
            num_inference_steps: denoising steps.
            guidance_scale: classifier-free guidance scale (<= 1: conditional branch only).
            scheduler: diffusers scheduler class name or instance (None: the pipeline's, DDIM).
            generator: one generator, or one per image (then an image does not depend on its batch).
            height: image height in pixels (None: the UNet's sample size).
            width: image width in pixels.
            progress: show a progress bar over the steps.
            boxes: ``(B, N, 4)`` normalised xyxy boxes of the layouts, for ``spatial_conditioning``
                (``prompt_boxes`` makes them; ignored without it).
            category_ids: ``(B, N)`` category id of each box, -1 pads.
        """
        device = self.unet.device
        dtype = self.unet.dtype
        b = input_ids.shape[0]
        if isinstance(generator, list) and len(generator) != b:
            raise ValueError(f"got {len(generator)} generators for {b} images")
        # The negative prompt, padded with empty windows to the prompts' length and repeated.
        window = self.layout_tokenizer.window
        empty = torch.from_numpy(self.layout_tokenizer.empty_window)
        negative = (
            empty[None] if negative_ids is None else negative_ids.cpu().reshape(-1, negative_ids.shape[-1])
        )
        if negative.shape[1] > input_ids.shape[1] or negative.shape[0] not in (1, b):
            raise ValueError(
                f"negative ids {tuple(negative.shape)} do not fit prompt ids {tuple(input_ids.shape)}"
            )
        pad = empty.repeat(negative.shape[0], (input_ids.shape[1] - negative.shape[1]) // window)
        negative = torch.cat([negative, pad], 1).expand(b, -1).to(input_ids.device)
        guided = guidance_scale > 1.0
        text = self.encode_ids(torch.cat([negative, input_ids]) if guided else input_ids).to(device, dtype)
        scale = 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = self.unet.config.sample_size
        h, w = (height or size * scale) // scale, (width or size * scale) // scale
        spatial = self.spatial_conditioning
        maps = None
        if spatial is not None:
            if boxes is None or category_ids is None or category_ids.shape[0] != b:
                raise ValueError(
                    f"this model is spatially conditioned (categories {list(spatial)}): give the boxes and "
                    f"category_ids of the {b} layouts (prompt_boxes makes them)"
                )
            maps = layout_maps(boxes.to(device), category_ids.to(device), spatial, h, w).to(dtype)
            # The negative branch sees no boxes, as dropped captions do in training.
            maps = torch.cat([torch.zeros_like(maps), maps]) if guided else maps

        def unet(x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            if maps is not None:
                x = torch.cat([x, maps], 1)
            return self.unet(x, t, encoder_hidden_states=text, return_dict=False)[0]

        latents = denoise(
            unet,
            self.scheduler if scheduler is None else make_scheduler(scheduler, self.scheduler.config),
            text[b:] if guided else text,
            text[:b] if guided else None,
            (b, self.unet.config.in_channels - len(spatial or ()), h, w),
            num_inference_steps,
            guidance_scale,
            generator,
            self.progress_bar if progress else None,
        )
        if self.vae is not None:
            latents = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return (latents.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def __call__(
        self,
        layouts: Sequence[Layout] | Layout,
        strategy: str = "origin",
        attribute_overrides: Mapping[int, Attribute | str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 5.0,
        negative_prompt: str = "",
        scheduler: str | SchedulerMixin | None = None,
        seed: int = 0,
        sample_index: int | Sequence[int] = 0,
        seeds: Sequence[int] | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: Literal["pil", "pt"] = "pil",
        progress: bool = True,
    ) -> LayoutPipelineOutput:
        """Generate one image per layout.

        Args:
            layouts: layouts (objects with class, normalised box and attribute).
            strategy: ``origin``, ``easy`` or ``hard`` (see ``apply_strategy``).
            attribute_overrides: ``{annotation id: attribute}`` set after the strategy.
            num_inference_steps: denoising steps.
            guidance_scale: classifier-free guidance scale.
            negative_prompt: text of the guidance's negative branch ("" as in training).
            scheduler: diffusers scheduler class name (``DPMSolverMultistepScheduler``, …).
            seed: base seed; image ``i`` uses ``image_seed(seed, layout id, sample index)``, the layout
                id being ``image_id`` (or the position in ``layouts`` when that is None).
            sample_index: which sample of each layout (one for all, or one per layout).
            seeds: explicit per-image seeds instead.
            height: image height in pixels (None: the model's size).
            width: image width in pixels.
            output_type: ``pil`` images or a ``pt`` tensor ``(B, 3, H, W)`` in [0, 1].
            progress: show a progress bar over the steps.
        """
        if isinstance(layouts, Layout):
            layouts = [layouts]
        if not layouts:
            raise ValueError("no layouts to generate from")
        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        layouts = [apply_strategy(layout, strategy, attribute_overrides) for layout in layouts]
        if seeds is None:
            indices = [sample_index] * len(layouts) if isinstance(sample_index, int) else list(sample_index)
            if len(indices) != len(layouts):
                raise ValueError(f"got {len(indices)} sample indices for {len(layouts)} layouts")
            seeds = [
                image_seed(seed, i if layout.image_id is None else layout.image_id, k)
                for i, (layout, k) in enumerate(zip(layouts, indices, strict=True))
            ]
        seeds = [int(s) for s in seeds]
        if len(seeds) != len(layouts):
            raise ValueError(f"got {len(seeds)} seeds for {len(layouts)} layouts")
        ids, negative, kept = self.prompt_ids(layouts, negative_prompt)
        boxes, category_ids = (
            self.prompt_boxes(layouts, kept) if self.spatial_conditioning is not None else (None, None)
        )
        generators = [torch.Generator(self.unet.device).manual_seed(s) for s in seeds]
        images = self.generate_ids(
            ids,
            negative,
            num_inference_steps,
            guidance_scale,
            scheduler,
            generators,
            height,
            width,
            progress,
            boxes=boxes,
            category_ids=category_ids,
        )
        layouts = [
            layout.with_objects([layout.objects[j] for j in k])
            for layout, k in zip(layouts, kept, strict=True)
        ]
        return LayoutPipelineOutput(to_pil(images) if output_type == "pil" else images, layouts, seeds)
