"""``SampleGridCallback``: samples from fixed validation layouts, boxes drawn, to the logger and disk."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image

from detdiffusion.layout.types import ATTRIBUTE_CODES, Layout, LayoutObject
from detdiffusion.model.module import DetDiffusionModule
from detdiffusion.viz import draw_layout, image_grid

log = logging.getLogger(__name__)

_ATTRIBUTES = {code: attribute for attribute, code in ATTRIBUTE_CODES.items()}
_KEPT = ("pixel_values", "input_ids", "boxes", "labels", "attributes", "object_mask")


def publish_grid(trainer: L.Trainer, grid: Image.Image, name: str) -> Path:
    """Write ``grid`` to ``<log_dir>/<name>/step=N.png`` (atomically) and to TensorBoard / W&B
    as ``val/<name>``."""
    path = Path(trainer.log_dir or trainer.default_root_dir) / name / f"step={trainer.global_step}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    grid.save(tmp, format="PNG")
    os.replace(tmp, path)
    log.info("%s: %s", name, path)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(f"val/{name}", [grid], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(
                f"val/{name}", np.asarray(grid), trainer.global_step, dataformats="HWC"
            )
    return path


class SampleGridCallback(L.Callback):
    """Every ``every_n_validations`` validation runs, samples the first validation layouts.

    The layouts are the first ``num_layouts`` of the first validation batch (the validation
    loader is deterministic, so they are the same each time), and so is the noise: grids of
    successive runs differ only by the model. The grid's top row is the real images with
    their boxes, the rows below the samples with the same boxes. It goes to
    ``<log_dir>/samples/step=N.png`` and to the logger (TensorBoard, W&B) as
    ``val/samples``. Rank zero samples; the other ranks go on.

    Args:
        every_n_validations: sample after every N-th validation run (sanity check excluded).
        num_layouts: layouts in the grid (columns).
        samples_per_layout: samples of each layout (rows below the real images).
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance scale.
        scheduler: diffusers scheduler class name (None: DDIM).
        seed: seed of the sampling noise.
        tile: pixel size of each image in the grid.
    """

    def __init__(
        self,
        every_n_validations: int = 1,
        num_layouts: int = 8,
        samples_per_layout: int = 2,
        num_inference_steps: int = 25,
        guidance_scale: float = 5.0,
        scheduler: str | None = None,
        seed: int = 0,
        tile: int = 128,
    ) -> None:
        if every_n_validations < 1 or num_layouts < 1 or samples_per_layout < 1:
            raise ValueError(
                "every_n_validations, num_layouts and samples_per_layout must be >= 1, got "
                f"{every_n_validations}, {num_layouts}, {samples_per_layout}"
            )
        self.every_n_validations = every_n_validations
        self.num_layouts = num_layouts
        self.samples_per_layout = samples_per_layout
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.scheduler = scheduler
        self.seed = seed
        self.tile = tile
        self._batch: dict[str, Any] | None = None
        self._validations = 0

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._batch is None and batch_idx == 0 and dataloader_idx == 0 and not trainer.sanity_checking:
            n = self.num_layouts
            self._batch = {
                k: v[:n].cpu() if isinstance(v, torch.Tensor) and v.ndim else v
                for k, v in batch.items()
                if k in _KEPT
            }

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._batch is None:
            return
        self._validations += 1
        if self._validations % self.every_n_validations or not trainer.is_global_zero:
            return
        publish_grid(trainer, self.grid(pl_module), "samples")

    def grid(self, pl_module: DetDiffusionModule) -> Image.Image:
        """The grid of the stored layouts: real images on top, samples below, boxes drawn."""
        batch = self._batch
        n = batch["input_ids"].shape[0]
        k = self.samples_per_layout
        generators = [torch.Generator().manual_seed(self.seed + i) for i in range(n * k)]
        was_training = pl_module.training
        pl_module.eval()
        try:
            images = pl_module.sample(
                batch["input_ids"].repeat(k, 1),
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
                scheduler=self.scheduler,
                generator=generators,
                height=batch["pixel_values"].shape[-2],
                width=batch["pixel_values"].shape[-1],
                boxes=batch["boxes"].repeat(k, 1, 1),  # for spatially conditioned models
                labels=batch["labels"].repeat(k, 1),
            )
        finally:
            pl_module.train(was_training)
        real = (batch["pixel_values"].float() / 2 + 0.5).clamp(0, 1)
        names = pl_module.hparams.get("categories") or []
        tiles = []
        for i, image in enumerate(torch.cat([real, images.cpu()])):
            layout = self._layout(i % n, names, image.shape[-1], image.shape[-2])
            array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            tiles.append(draw_layout(array, layout, tile=self.tile))
        return image_grid(tiles, columns=n)

    def _layout(self, i: int, names: list[str], width: int, height: int) -> Layout:
        batch = self._batch
        objects = []
        for j in np.flatnonzero(batch["object_mask"][i].numpy()):
            label = int(batch["labels"][i, j])
            objects.append(
                LayoutObject(
                    names[label] if label < len(names) else str(label),
                    tuple(batch["boxes"][i, j].tolist()),
                    _ATTRIBUTES[int(batch["attributes"][i, j])],
                )
            )
        return Layout(tuple(objects), width, height)
