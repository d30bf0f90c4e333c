"""``DetDiffusionModule``: a layout-conditioned latent diffusion model with a perception head."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch.optim.lr_scheduler import LambdaLR

from detdiffusion.heads import HeadInputs, PerceptionHead
from detdiffusion.layout.encoding import LayoutTokenizer
from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.prompt import PromptBuilder, PromptTemplate
from detdiffusion.layout.types import LongPromptPolicy
from detdiffusion.losses import diffusion_target, foreground_weight, ldm_loss, perception_loss
from detdiffusion.model.components import extend_for_layouts, load_components
from detdiffusion.model.taps import UpBlockTaps

log = logging.getLogger(__name__)


class DetDiffusionModule(L.LightningModule):
    """DetDiffusion: latent diffusion on layout prompts, plus a perception head on the UNet decoder.

    The loss is ``L_LDM + λ·L_p`` with ``L_p = sqrt(ᾱ_t)·(BCE + dice)`` on the head's masks
    (DESIGN.md §1). The model owns the prompt vocabulary (grid, template, tokenizer): a
    ``LayoutDataModule`` in the same Trainer uses this model's ``layout_tokenizer``.

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
        num_classes: classes of the semantic head; None: the datamodule's, at setup.
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
        num_classes: int | None = None,
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
    ) -> None:
        super().__init__()
        # Under LightningCLI the head and optimizer are saved as their class_path configs, so
        # load_from_checkpoint rebuilds the configured head.
        self.save_hyperparameters()
        if pa_weight < 0:
            raise ValueError(f"--model.pa_weight must be >= 0, got {pa_weight}")
        parts = load_components(
            pretrained_model_name_or_path, unet, vae, text_encoder, noise_scheduler, tokenizer
        )
        extend_for_layouts(parts, grid)
        self.unet, self.vae, self.text_encoder = parts.unet, parts.vae, parts.text_encoder
        self.noise_scheduler = parts.scheduler
        self.layout_tokenizer = LayoutTokenizer(parts.tokenizer, PromptBuilder(grid, template), long_prompts)
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
        self.head = head
        self.taps = UpBlockTaps(self.unet) if head is not None else None
        self.optimizer_factory = optimizer
        if head is not None and num_classes is not None:
            self._build_head(num_classes)

    # -- set-up ---------------------------------------------------------------------------------

    def _build_head(self, num_classes: int) -> None:
        self.hparams.num_classes = num_classes  # saved, so load_from_checkpoint builds it the same
        self.head.build(self.taps.channels, self.text_encoder.config.hidden_size, num_classes)

    def setup(self, stage: str) -> None:
        if self.head is not None and self.hparams.num_classes is None:
            categories = getattr(self.trainer.datamodule, "categories", None)
            if not categories:
                raise ValueError("--model.num_classes is unset and the datamodule has no categories to count")
            self._build_head(len(categories))

    def train(self, mode: bool = True) -> DetDiffusionModule:
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()
        return self

    # -- the recipe -----------------------------------------------------------------------------

    def encode_prompts(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Text-encoder hidden states ``(B, W·77, D)`` of ``W`` concatenated 77-token windows."""
        window = self.layout_tokenizer.window
        b = input_ids.shape[0]
        hidden = self.text_encoder(input_ids.reshape(-1, window))[0]  # (B·W, 77, D)
        return hidden.reshape(b, -1, hidden.shape[-1])

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """VAE latents of images in [-1, 1], scaled as the UNet expects (the images in pixel space)."""
        if self.vae is None:
            return pixel_values
        latents = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist.sample()
        return latents * self.vae.config.scaling_factor

    def _losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The training-step order of diffusers' text-to-image script, plus the perception head."""
        latents = self.encode_images(batch["pixel_values"])
        noise = torch.randn_like(latents)
        b = latents.shape[0]
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (b,), device=self.device
        )
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        text = self.encode_prompts(batch["input_ids"])
        pred = self.unet(noisy, timesteps, text).sample
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

    def _check_finite(self, losses: dict[str, torch.Tensor], stage: str) -> None:
        for name in ("loss_ldm", "loss_pa"):
            if name in losses and not torch.isfinite(losses[name]):
                raise FloatingPointError(
                    f"{stage}/{name} is {losses[name].item()} at global step {self.global_step} "
                    f"(timesteps {losses['timesteps'].tolist()})"
                )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        self._check_finite(losses, "train")
        b = batch["pixel_values"].shape[0]
        for name in ("loss", "loss_ldm", "loss_pa"):
            if name in losses:
                self.log(f"train/{name}", losses[name], prog_bar=name == "loss", batch_size=b)
        self.log("train/objects_per_image", batch["object_mask"].sum(1).float().mean(), batch_size=b)
        self.log(
            "train/empty_layouts",
            (batch["object_mask"].sum(1) == 0).sum().float(),
            reduce_fx="sum",
            batch_size=b,
        )
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Fixed noise per batch, so validation losses are comparable across epochs.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(batch_idx)
            losses = self._losses(batch)
        b = batch["pixel_values"].shape[0]
        for name in ("loss", "loss_ldm", "loss_pa"):
            if name in losses:
                self.log(f"val/{name}", losses[name], prog_bar=name == "loss", batch_size=b, sync_dist=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    # -- optimisation ---------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
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
            groups.append({"params": list(self.head.parameters()), "lr": hp.head_lr or hp.lr, "name": "head"})
        if not groups:
            raise ValueError(
                "nothing to train: --model.train_unet and --model.train_text_encoder are false and no head"
            )
        for group in groups:
            group["weight_decay"] = hp.weight_decay
        optimizer = self.optimizer_factory(groups)
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
