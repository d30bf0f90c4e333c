"""``DetDiffusionModule``: a layout-conditioned latent diffusion model with a perception head."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from diffusers import SchedulerMixin
from lightning.pytorch.cli import OptimizerCallable
from torch.optim.lr_scheduler import LambdaLR

from detdiffusion.generation.pipeline import LayoutDiffusionPipeline, encode_windows
from detdiffusion.heads import HeadInputs, PerceptionHead
from detdiffusion.layout.encoding import LayoutTokenizer
from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.prompt import PromptBuilder, PromptTemplate
from detdiffusion.layout.types import Layout, LongPromptPolicy
from detdiffusion.losses import diffusion_target, foreground_weight, ldm_loss, perception_loss
from detdiffusion.model import export
from detdiffusion.model.components import extend_for_layouts, load_components
from detdiffusion.model.ema import ema_decay, update_ema
from detdiffusion.model.spatial import add_input_channels, check_spatial_categories, layout_maps
from detdiffusion.model.taps import UpBlockTaps

log = logging.getLogger(__name__)


class DetDiffusionModule(L.LightningModule):
    """DetDiffusion: latent diffusion on layout prompts, plus a perception head on the UNet decoder.

    The loss is ``L_LDM + λ·L_p`` with ``L_p = sqrt(ᾱ_t)·(BCE + dice)`` on the head's masks
    (DESIGN.md §1). Samples without objects in their prompt train the LDM loss only: a layout
    with no objects (counted as ``train/empty_layouts``) has no masks, and an empty-prompt sample
    (classifier-free guidance dropout, counted as ``train/empty_prompts``) gives the instance
    head no object tokens to query; the semantic head still supervises the image's classes,
    which it reads from the UNet features, not the prompt. ``L_p`` is the mean over samples
    with at least one mask, and 0 for a batch with none.

    The model owns the prompt vocabulary (grid, template, tokenizer): a ``LayoutDataModule``
    in the same Trainer uses this model's ``layout_tokenizer``.

    ``spatial_conditioning`` (off by default) adds the layout's boxes as per-class maps on extra,
    zero-initialised UNet input channels (``detdiffusion.model.spatial``); the prompt still
    carries classes, locations and attributes. Not the paper's model: the CPU shapes miniature
    uses it so that position is learned at all (CALIBRATION.md), and its numbers say so.

    Args:
        pretrained_model_name_or_path: local diffusers Stable Diffusion folder; or give the
            part configs below.
        unet: ``UNet2DConditionModel`` config (tiny models for tests and the shapes).
        vae: ``AutoencoderKL`` config; None with configs: pixel-space diffusion (CPU miniature).
        text_encoder: ``CLIPTextConfig`` fields.
        noise_scheduler: ``DDPMScheduler`` config (ε- or v-prediction from ``prediction_type``).
        tokenizer: tokenizer folder when built from configs (None: SD 1.x's, offline).
        grid: location token grid.
        template: prompt template.
        long_prompts: policy for prompts longer than one 77-token window.
        head: perception head (None: plain layout-to-image fine-tuning, no P.A. loss).
        class_names: prompt names of dataset classes, ``{raw: prompt name}`` overrides of
            ``normalize_class_name`` (as ``LayoutDataModule``'s; the model's win).
        num_classes: classes of the perception head; None: the datamodule's, at setup.
        categories: dataset class names in label order; None: the datamodule's, at setup.
        pa_weight: λ, weight of the P.A. loss.
        pa_timestep_weight: weight the P.A. loss by ``sqrt(ᾱ_t)`` (the paper; off: ablation).
        pa_dice: add the dice term to the P.A. loss (the paper; off: ablation).
        foreground_weight: GeoDiffusion's foreground re-weighting of the LDM loss (None: off).
        train_unet: fine-tune the UNet.
        train_text_encoder: fine-tune the text encoder.
        optimizer: optimizer over the parameter groups (UNet, text encoder, head).
        lr: UNet learning rate.
        text_encoder_lr_ratio: text-encoder lr as a fraction of ``lr`` (GeoDiffusion: 0.75).
        head_lr: head learning rate (None: ``lr``).
        weight_decay: AdamW-style weight decay of all groups.
        warmup_steps: linear warm-up steps.
        lr_schedule: after warm-up, ``cosine`` to zero over the run or ``constant``.
        gradient_checkpointing: trade compute for memory in the UNet and text encoder.
        ema_decay: keep an exponential moving average of the UNet with this decay (None: off);
            samples and exports use it.
        compile: ``torch.compile`` the UNet's transformer blocks one by one (diffusers' regional
            compilation: fast to compile, and the decoder feature hooks stay outside the graphs).
        spatial_conditioning: dataset category ids (COCO ``category_id``, as in
            ``LayoutObject.category_id``) whose boxes are drawn as extra UNet input channels, one
            channel each in this order (None: off, token-only conditioning as in the paper).
            Objects of other categories (stuff bands, classes not listed) draw nothing and reach
            the model through the prompt only. Layouts given to ``sample`` / ``generate`` need
            their objects' ``category_id``; token ids need the batch's ``boxes`` and ``labels``.
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str | None = None,
        unet: dict[str, Any] | None = None,
        vae: dict[str, Any] | None = None,
        text_encoder: dict[str, Any] | None = None,
        noise_scheduler: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        grid: LocationGrid = LocationGrid(16, 16),
        template: PromptTemplate = PromptTemplate(),
        long_prompts: LongPromptPolicy = "long",
        head: PerceptionHead | None = None,
        class_names: dict[str, str] | None = None,
        num_classes: int | None = None,
        categories: list[str] | None = None,
        pa_weight: float = 0.01,
        pa_timestep_weight: bool = True,
        pa_dice: bool = True,
        foreground_weight: float | None = None,
        train_unet: bool = True,
        train_text_encoder: bool = True,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float = 1e-4,
        text_encoder_lr_ratio: float = 0.75,
        head_lr: float | None = None,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        gradient_checkpointing: bool = False,
        ema_decay: float | None = None,
        compile: bool = False,
        spatial_conditioning: list[int] | None = None,
    ) -> None:
        super().__init__()
        # Under LightningCLI the head and optimizer are saved as their class_path configs, so
        # load_from_checkpoint rebuilds the configured head.
        with warnings.catch_warnings():
            # A head built in Python is saved as its class path and arguments (on_save_checkpoint).
            warnings.filterwarnings("ignore", message="Attribute 'head' is an instance of `nn.Module`")
            self.save_hyperparameters()
        grid, template, head, optimizer = export.coerce_hparams(grid, template, head, optimizer)
        if pa_weight < 0:
            raise ValueError(f"--model.pa_weight must be >= 0, got {pa_weight}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"--model.ema_decay must be in (0, 1) or null, got {ema_decay}")
        if categories is not None:
            if num_classes is not None and num_classes != len(categories):
                raise ValueError(
                    f"--model.num_classes is {num_classes} but --model.categories has {len(categories)} names"
                )
            self.hparams.num_classes = num_classes = len(categories)
        parts = load_components(
            pretrained_model_name_or_path, unet, vae, text_encoder, noise_scheduler, tokenizer
        )
        extend_for_layouts(parts, grid)
        self.unet, self.vae, self.text_encoder = parts.unet, parts.vae, parts.text_encoder
        #: Category ids with a box-map channel, in channel order (None: spatial conditioning off).
        self.spatial_ids = check_spatial_categories(spatial_conditioning)
        self._fit_unet_inputs()  # before the EMA copy, which must get the same channels
        #: Category id of each batch label (the datamodule's categories, at setup): what the
        #: box maps of a training batch need, since batches carry class indices.
        self.label_category_ids: list[int] | None = None
        self.noise_scheduler = parts.scheduler
        self.layout_tokenizer = LayoutTokenizer(
            parts.tokenizer, PromptBuilder(grid, template, class_names), long_prompts
        )
        # Frozen once and kept in eval (train() below never flips it back).
        if self.vae is not None:
            self.vae.requires_grad_(False).eval()
        self.unet.requires_grad_(train_unet)
        self.text_encoder.requires_grad_(train_text_encoder)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.text_encoder.gradient_checkpointing_enable()
        self.register_buffer(
            "alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone().float(), persistent=False
        )
        # Copied before the taps hook the UNet, so the average carries no hooks.
        self.ema_unet = None
        if ema_decay is not None:
            self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False).eval()
        if compile:
            # Regional: diffusers compiles each transformer block; the up-block hooks stay eager.
            self.unet.compile_repeated_blocks()
        self.head = head
        self.taps = UpBlockTaps(self.unet) if head is not None else None
        self.optimizer_factory = optimizer
        if head is not None and num_classes is not None:
            self._build_head(num_classes)
        # diffusers/transformers load in eval mode; train() keeps the VAE and EMA in eval.
        self.train()

    # -- set-up ---------------------------------------------------------------------------------

    def _fit_unet_inputs(self) -> None:
        """Widen ``conv_in`` for the box maps (a UNet that has them already is kept), or refuse."""
        latent = 3 if self.vae is None else self.vae.config.latent_channels
        extra = len(self.spatial_ids or ())
        have = self.unet.config.in_channels
        if extra and have == latent:
            add_input_channels(self.unet, extra)
        elif have != latent + extra:
            raise ValueError(
                f"the UNet takes {have} input channels; expected {latent} "
                f"({'image' if self.vae is None else 'latent'} channels) plus {extra} box-map channels "
                f"for --model.spatial_conditioning={list(self.spatial_ids) if extra else None}. A "
                "spatially conditioned model needs the category ids it was trained with."
            )

    def _build_head(self, num_classes: int) -> None:
        self.hparams.num_classes = num_classes  # saved, so load_from_checkpoint builds it the same
        self.head.build(self.taps.channels, self.text_encoder.config.hidden_size, num_classes)

    def setup(self, stage: str) -> None:
        categories = getattr(self.trainer.datamodule, "categories", None)
        if self.hparams.categories is None and categories:
            self.hparams.categories = [c.name for c in categories]
        if self.head is not None and self.hparams.num_classes is None:
            if not categories:
                raise ValueError("--model.num_classes is unset and the datamodule has no categories to count")
            self._build_head(len(categories))
        if self.spatial_ids is not None and stage != "predict":
            if not isinstance(categories, list) or not categories:
                raise ValueError(
                    "--model.spatial_conditioning draws boxes by category id: the datamodule must list its "
                    "categories (LayoutDataModule.categories) to map batch labels to ids"
                )
            self.label_category_ids = [c.id for c in categories]
            missing = sorted(set(self.spatial_ids) - set(self.label_category_ids))
            if missing:
                log.warning("--model.spatial_conditioning: category ids %s are not in the dataset", missing)

    def train(self, mode: bool = True) -> DetDiffusionModule:
        super().train(mode)
        for frozen in (self.vae, self.ema_unet):
            if frozen is not None:
                frozen.eval()
        return self

    # -- the recipe -----------------------------------------------------------------------------

    def encode_prompts(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Text-encoder hidden states ``(B, W·77, D)`` of ``W`` concatenated 77-token windows."""
        return encode_windows(self.text_encoder, input_ids, self.layout_tokenizer.window)

    @torch.no_grad()
    def encode_images(
        self, pixel_values: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """VAE latents of images in [-1, 1], scaled as the UNet expects (the images in pixel space)."""
        if self.vae is None:
            return pixel_values
        latents = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist.sample(generator)
        return latents * self.vae.config.scaling_factor

    def _generator(self, *key: int) -> torch.Generator:
        """A generator seeded from ``key`` and the run's seed (``seed_everything``): the noise of a
        batch does not depend on what ran before it, so a resumed run draws what the first would."""
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        state = np.random.SeedSequence([seed, *key]).generate_state(2, np.uint64)[0]
        return torch.Generator(self.device).manual_seed(int(state) >> 1)

    def _losses(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """The training-step order of diffusers' text-to-image script, plus the perception head."""
        latents = self.encode_images(batch["pixel_values"], generator)
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        b = latents.shape[0]
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (b,), device=self.device, generator=generator
        )
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        text = self.encode_prompts(batch["input_ids"])
        if self.spatial_ids is not None:
            # A dropped caption drops the maps too: the unconditional branch is (empty prompt, no maps).
            shown = batch["object_mask"] & ~batch["prompt_dropped"][:, None].to(batch["object_mask"].device)
            maps = self.box_maps(batch["boxes"], batch["labels"].masked_fill(~shown, -1), latents.shape[-2:])
            noisy_in = torch.cat([noisy, maps.to(noisy.dtype)], 1)
        else:
            noisy_in = noisy
        pred = self.unet(noisy_in, timesteps, text).sample
        target = diffusion_target(
            self.noise_scheduler.config.prediction_type, noise, latents, timesteps, self.alphas_cumprod
        )
        weight = None
        if self.hparams.foreground_weight is not None:
            weight = foreground_weight(
                batch["boxes"], batch["object_mask"], latents.shape[-2:], self.hparams.foreground_weight
            )
        losses = {"loss_ldm": ldm_loss(pred.float(), target.float(), weight), "timesteps": timesteps}
        if self.head is not None:
            out = self.head(
                self.taps.pop(),
                HeadInputs(
                    text, batch["object_index"], batch["labels"], batch["object_mask"], batch["masks"]
                ),
            )
            losses["loss_pa"] = perception_loss(
                out.logits.float(),
                out.targets,
                out.valid,
                timesteps,
                self.alphas_cumprod,
                use_timestep_weight=self.hparams.pa_timestep_weight,
                use_dice=self.hparams.pa_dice,
            )
            losses["loss"] = losses["loss_ldm"] + self.hparams.pa_weight * losses["loss_pa"]
        else:
            losses["loss"] = losses["loss_ldm"]
        return losses

    def category_ids_of(self, labels: torch.Tensor) -> torch.Tensor:
        """Category ids of a batch's ``labels`` (class indices into the datamodule's categories; -1 pads)."""
        if self.label_category_ids is None:
            raise RuntimeError(
                "batch labels are class indices: mapping them to category ids needs the datamodule's "
                "categories (read at setup; or set label_category_ids to each label's category id)"
            )
        table = torch.as_tensor(self.label_category_ids, device=labels.device)
        return torch.where(labels >= 0, table[labels.clamp(min=0)], -1)

    def box_maps(self, boxes: torch.Tensor, labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """``(B, C, H, W)`` box maps of a batch's ``boxes`` and ``labels`` (class indices, -1 pads)."""
        return layout_maps(boxes, self.category_ids_of(labels), self.spatial_ids, *size)

    def _check_finite(self, losses: dict[str, torch.Tensor], stage: str) -> None:
        terms = [name for name in ("loss_ldm", "loss_pa") if name in losses]
        # One device-to-host sync a step; the terms are only looked at one by one on failure.
        if torch.stack([losses[n].detach().float() for n in terms]).isfinite().all():
            return
        for name in terms:
            if not torch.isfinite(losses[name]):
                raise FloatingPointError(
                    f"{stage}/{name} is {losses[name].item()} at global step {self.global_step} "
                    f"(timesteps {losses['timesteps'].tolist()})"
                )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # Keyed by optimizer step (and micro-batch under accumulation): what a resumed run restores.
        micro = batch_idx % self.trainer.accumulate_grad_batches
        losses = self._losses(batch, self._generator(0, self.global_step, micro, self.global_rank))
        self._check_finite(losses, "train")
        b = batch["pixel_values"].shape[0]
        for name in ("loss", "loss_ldm", "loss_pa"):
            if name in losses:
                self.log(f"train/{name}", losses[name], prog_bar=name == "loss", batch_size=b)
        self.log("train/objects_per_image", batch["object_mask"].sum(1).float().mean(), batch_size=b)
        for name, count in (
            ("empty_layouts", (batch["object_mask"].sum(1) == 0).sum()),
            ("empty_prompts", batch["prompt_dropped"].sum()),
        ):
            self.log(f"train/{name}", count.float(), reduce_fx="sum", batch_size=b)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Fixed noise per batch, so validation losses are comparable across epochs.
        losses = self._losses(batch, self._generator(1, batch_idx, self.global_rank))
        b = batch["pixel_values"].shape[0]
        for name in ("loss", "loss_ldm", "loss_pa"):
            if name in losses:
                self.log(f"val/{name}", losses[name], prog_bar=name == "loss", batch_size=b, sync_dist=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    # -- sampling -------------------------------------------------------------------------------

    def pipeline(self, use_ema: bool = True) -> LayoutDiffusionPipeline:
        """A diffusers pipeline over this module's weights (shared, not copied)."""
        return LayoutDiffusionPipeline.from_module(self, use_ema)

    def prompt_ids(self, prompts: Sequence[Layout | str]) -> torch.Tensor:
        """``(B, W·77)`` token ids of layouts (encoded in dataset order) or free-text prompts.

        Prompts of fewer windows are padded with empty-prompt windows, as in training batches.
        """
        return self.pipeline().prompt_ids(prompts)[0].to(self.device)

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[Layout | str] | torch.Tensor,
        num_inference_steps: int = 25,
        guidance_scale: float = 5.0,
        scheduler: str | SchedulerMixin | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        use_ema: bool = True,
        negative_prompt: str = "",
        boxes: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1] generated for layouts, text, or token ids.

        Args:
            prompts: layouts, free-text prompts, or ``(B, W·77)`` token ids (a batch's ``input_ids``).
            num_inference_steps: denoising steps.
            guidance_scale: classifier-free guidance scale against the negative prompt (<= 1: none).
            scheduler: diffusers scheduler class name or instance (None: DDIM), set up with the
                training noise schedule.
            generator: one generator, or one per image.
            height: image height in pixels (None: the UNet's sample size).
            width: image width in pixels (None: the UNet's sample size).
            use_ema: denoise with the EMA UNet where there is one.
            negative_prompt: text of the guidance's negative branch ("": the empty prompt of training).
            boxes: with token ids under ``spatial_conditioning``: the batch's ``boxes`` ``(B, N, 4)``
                (layouts bring their own; text prompts have none).
            labels: with ``boxes``: the batch's ``labels`` ``(B, N)`` (class indices, -1 pads).
        """
        pipe = self.pipeline(use_ema)
        category_ids = None
        if isinstance(prompts, torch.Tensor):
            ids, negative = (
                prompts,
                torch.from_numpy(self.layout_tokenizer.encode_text(negative_prompt))[None],
            )
            if self.spatial_ids is not None:
                if boxes is None or labels is None:
                    raise ValueError(
                        "this model is spatially conditioned (--model.spatial_conditioning): sampling from "
                        "token ids needs the batch's boxes and labels (sample(ids, boxes=..., labels=...))"
                    )
                category_ids = self.category_ids_of(labels.to(self.device))
        else:
            ids, negative, kept = pipe.prompt_ids(prompts, negative_prompt)
            if self.spatial_ids is not None:
                boxes, category_ids = pipe.prompt_boxes(prompts, kept)
        with self.taps.paused() if self.taps is not None else contextlib.nullcontext():
            return pipe.generate_ids(
                ids.to(self.device),
                negative,
                num_inference_steps,
                guidance_scale,
                scheduler,
                generator,
                height,
                width,
                boxes=boxes if category_ids is not None else None,
                category_ids=category_ids,
            )

    def generate(self, layouts: Sequence[Layout] | Layout, strategy: str = "origin", **kwargs: Any) -> list:
        """PIL images for layouts under an attribute ``strategy`` (``origin``, ``easy``, ``hard``).

        ``kwargs`` go to ``LayoutDiffusionPipeline.__call__`` (``seed``, ``num_inference_steps``,
        ``guidance_scale``, ``scheduler``, ``attribute_overrides``, …). ``viz.draw_layout`` draws the
        boxes on an image.
        """
        with self.taps.paused() if self.taps is not None else contextlib.nullcontext():
            return self.pipeline()(layouts, strategy, **kwargs).images

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """A ``LayoutSetDataModule`` batch: each image from its own seed, with the batch's settings."""
        settings = batch["settings"]
        if not batch["items"]:  # a rank with no share left (see LayoutSetDataModule)
            return {"images": torch.empty(0, 3, 1, 1), "items": []}
        generators = [torch.Generator(self.device).manual_seed(int(s)) for s in batch["seeds"]]
        with self.taps.paused() if self.taps is not None else contextlib.nullcontext():
            images = self.pipeline(settings.use_ema).generate_ids(
                batch["input_ids"],
                batch["negative_ids"],
                settings.num_inference_steps,
                settings.guidance_scale,
                settings.scheduler,
                generators,
                settings.height,
                settings.width,
                boxes=batch.get("boxes"),
                category_ids=batch.get("category_ids"),
            )
        return {"images": images, "items": batch["items"]}

    # -- EMA, checkpoints, export ---------------------------------------------------------------

    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        # Once per optimizer step (after it, before the next backward): right under accumulation.
        if self.ema_unet is not None:
            update_ema(self.ema_unet, self.unet, ema_decay(self.global_step, self.hparams.ema_decay))

    def _vocabulary(self) -> dict[str, Any]:
        grid = self.layout_tokenizer.builder.grid
        tokenizer = self.layout_tokenizer.tokenizer
        return {
            "grid": [grid.h_bins, grid.w_bins],
            "vocab_size": len(tokenizer),
            "first_location_token_id": tokenizer.convert_tokens_to_ids(grid.tokens[0]),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["detdiffusion_vocabulary"] = self._vocabulary()
        if self.spatial_ids is not None:  # also in the hyperparameters, which load_from_checkpoint overrides
            checkpoint["detdiffusion_spatial_conditioning"] = list(self.spatial_ids)
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = export.plain_hparams(checkpoint["hyper_parameters"])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Runs before the state dict is loaded, so a mismatch is named here rather than as a
        # size error on the embedding matrix.
        saved, here = checkpoint.get("detdiffusion_vocabulary"), self._vocabulary()
        if saved is not None and saved != here:

            def describe(v: dict[str, Any]) -> str:
                return (
                    f"grid {v['grid'][0]}x{v['grid'][1]}, {v['vocab_size']} tokens, "
                    f"first location token id {v['first_location_token_id']}"
                )

            raise ValueError(
                "the checkpoint's layout vocabulary does not match this model's: checkpoint "
                f"{describe(saved)}; model {describe(here)}. Use the grid and tokenizer the "
                "checkpoint was trained with."
            )
        state = checkpoint["state_dict"]
        self._check_spatial_checkpoint(checkpoint)
        has_ema = any(k.startswith("ema_unet.") for k in state)
        if self.ema_unet is not None and not has_ema:
            log.info("checkpoint has no EMA UNet: starting the average from its UNet weights")
            state.update({"ema_" + k: v for k, v in list(state.items()) if k.startswith("unet.")})
        elif self.ema_unet is None and has_ema:
            log.info("ema_decay is off: dropping the checkpoint's EMA UNet")
            for k in [k for k in state if k.startswith("ema_unet.")]:
                del state[k]

    def _check_spatial_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose box-map channels differ from this model's, naming both."""
        here = None if self.spatial_ids is None else list(self.spatial_ids)
        saved = checkpoint.get("detdiffusion_spatial_conditioning")  # written only when on
        weight = checkpoint["state_dict"].get("unet.conv_in.weight")
        width = self.unet.conv_in.in_channels
        if saved != here or (weight is not None and weight.shape[1] != width):
            theirs = f"{saved}" + (
                "" if weight is None else f" (UNet conv_in with {weight.shape[1]} input channels)"
            )
            raise ValueError(
                f"the checkpoint's --model.spatial_conditioning is {theirs}; this model's is {here} "
                f"(UNet conv_in with {width} input channels). Load it with the category ids it was "
                "trained with."
            )

    def save_pretrained(self, path: str | Path, ema: bool = True) -> Path:
        """Export a diffusers ``StableDiffusionPipeline`` folder plus the head and layout settings.

        See ``detdiffusion.model.export``; ``from_pretrained`` reads it back.
        """
        return export.save_pretrained(self, path, ema)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> DetDiffusionModule:
        """The module a ``save_pretrained`` folder holds; keyword arguments override its settings."""
        return export.from_pretrained(cls, path, **overrides)

    # -- optimisation ---------------------------------------------------------------------------

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: UNet, text encoder and head, each with its lr."""
        hp = self.hparams
        groups = []
        if hp.train_unet:
            groups.append(
                {
                    "params": [p for p in self.unet.parameters() if p.requires_grad],
                    "lr": hp.lr,
                    "name": "unet",
                }
            )
        if hp.train_text_encoder:
            groups.append(
                {
                    "params": [p for p in self.text_encoder.parameters() if p.requires_grad],
                    "lr": hp.lr * hp.text_encoder_lr_ratio,
                    "name": "text_encoder",
                }
            )
        if self.head is not None:
            head_lr = hp.lr if hp.head_lr is None else hp.head_lr
            groups.append({"params": list(self.head.parameters()), "lr": head_lr, "name": "head"})
        if not groups:
            raise ValueError(
                "nothing to train: --model.train_unet and --model.train_text_encoder are false and no head"
            )
        for group in groups:
            group["weight_decay"] = hp.weight_decay
        return groups

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = self.optimizer_factory(self.param_groups())
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = hp.warmup_steps

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if hp.lr_schedule == "constant":
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
