"""``FidelityCallback``: FID and YOLO score of samples from fixed validation layouts, during training."""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch

from detdiffusion.callbacks.samples import publish_grid
from detdiffusion.data.dataset import record_layout
from detdiffusion.detectors.base import Detector
from detdiffusion.detectors.running import load_image
from detdiffusion.evaluation.fid import FID
from detdiffusion.evaluation.yolo_score import YOLOScore
from detdiffusion.generation.pipeline import apply_strategy
from detdiffusion.layout.types import Layout
from detdiffusion.viz import draw_layout, image_grid

__all__ = ["FidelityCallback"]

log = logging.getLogger(__name__)


class FidelityCallback(L.Callback):
    """Every ``every_n_validations`` validation runs, generates from the first validation layouts
    and logs ``val/fid``, ``val/yolo_map``, ``val/yolo_map50``, ``val/yolo_map75`` and a grid.

    The layouts are the first ``num_layouts`` of the datamodule's validation set and the seeds
    are fixed, so successive scores differ only by the model. FID compares the samples with the
    validation images (their statistics computed once, or loaded from ``real_statistics``). Rank
    zero generates, scores and logs; the other ranks go on. The grid (samples with their layout
    boxes) goes to ``<log_dir>/fidelity/step=N.png`` and to TensorBoard / W&B as ``val/fidelity``.

    Args:
        detector: scores the samples (YOLO score); None: no YOLO score.
        fid: the FID metric (Inception weights or a feature extractor); None: no FID.
        every_n_validations: score after every N-th validation run (sanity check excluded).
        num_layouts: validation layouts to generate from.
        samples_per_layout: samples of each layout.
        class_ids: YOLO score class subset (None: every class the detector knows).
        real_statistics: file of the real images' FID statistics (read if there, else written).
        strategy: attribute strategy of the generation (``origin``, ``easy``, ``hard``).
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance scale.
        scheduler: diffusers scheduler class name (None: DDIM).
        seed: base seed of the samples.
        batch_size: images a generation batch.
        grid_images: samples drawn in the grid (0: no grid).
        tile: pixel size of each grid image.
    """

    def __init__(
        self,
        detector: Detector | None = None,
        fid: FID | None = None,
        every_n_validations: int = 1,
        num_layouts: int = 64,
        samples_per_layout: int = 1,
        class_ids: list[int] | None = None,
        real_statistics: str | None = None,
        strategy: str = "origin",
        num_inference_steps: int = 25,
        guidance_scale: float = 5.0,
        scheduler: str | None = None,
        seed: int = 0,
        batch_size: int = 16,
        grid_images: int = 16,
        tile: int = 128,
    ) -> None:
        if detector is None and fid is None:
            raise ValueError("FidelityCallback needs a detector (YOLO score), an FID metric, or both")
        if min(every_n_validations, num_layouts, samples_per_layout, batch_size) < 1:
            raise ValueError(
                "every_n_validations, num_layouts, samples_per_layout and batch_size must be >= 1"
            )
        self.yolo = YOLOScore(detector, class_ids) if detector is not None else None
        self.fid = fid
        self.every_n_validations = every_n_validations
        self.num_layouts = num_layouts
        self.samples_per_layout = samples_per_layout
        self.real_statistics = real_statistics
        self.strategy = strategy
        self.sampling = {
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "scheduler": scheduler,
            "seed": seed,
        }
        self.batch_size = batch_size
        self.grid_images = grid_images
        self.tile = tile
        self._validations = 0
        self._real_done = False

    def _layouts(self, trainer: L.Trainer) -> tuple[list[Layout], list]:
        dataset = getattr(trainer.datamodule, "val_dataset", None)
        if dataset is None:
            raise ValueError("FidelityCallback needs a datamodule with a val_dataset (a validation split)")
        records = dataset.coco.images[: self.num_layouts]
        layouts = [record_layout(r, dataset.coco.categories, dataset.names) for r in records]
        return [apply_strategy(lay, self.strategy) for lay in layouts], list(dataset.coco.images)

    def _add_real(self, pl_module: L.LightningModule, records: list) -> None:
        if self.real_statistics and self.fid.load_real_statistics(self.real_statistics):
            log.info("FID: real statistics from %s", self.real_statistics)
        else:
            for start in range(0, len(records), self.batch_size):
                chunk = records[start : start + self.batch_size]
                images = [load_image(r) for r in chunk]
                if len({im.shape for im in images}) == 1:
                    self.fid.update(torch.stack(images).to(pl_module.device), real=True)
                else:
                    for image in images:
                        self.fid.update(image[None].to(pl_module.device), real=True)
            if self.real_statistics:
                self.fid.save_real_statistics(self.real_statistics)
        self._real_done = True

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if self._validations % self.every_n_validations or not trainer.is_global_zero:
            return
        layouts, records = self._layouts(trainer)
        if self.fid is not None:
            self.fid.to(pl_module.device)
            if not self._real_done:
                self._add_real(pl_module, records)
            self.fid.reset()  # generated features only; the real ones are kept
        if self.yolo is not None:
            self.yolo.reset()
        samples = []
        was_training = pl_module.training
        pl_module.eval()
        try:
            jobs = [(lay, k) for k in range(self.samples_per_layout) for lay in layouts]
            for start in range(0, len(jobs), self.batch_size):
                chunk = jobs[start : start + self.batch_size]
                batch = [lay for lay, _ in chunk]
                images = pl_module.generate(
                    batch,
                    sample_index=[k for _, k in chunk],
                    output_type="pt",
                    progress=False,
                    **self.sampling,
                )
                if self.fid is not None:
                    self.fid.update(images, real=False)
                if self.yolo is not None:
                    self.yolo.update(images, batch)
                samples += [(img.cpu(), lay) for img, lay in zip(images, batch, strict=True)]
        finally:
            pl_module.train(was_training)
        metrics = {}
        if self.fid is not None:
            metrics["val/fid"] = float(self.fid.compute())
        if self.yolo is not None:
            scores = self.yolo.compute()
            metrics |= {
                f"val/yolo_{k.replace('map_', 'map')}": float(scores[k]) for k in ("map", "map_50", "map_75")
            }
        for name, value in metrics.items():
            pl_module.log(name, value, rank_zero_only=True)
        log.info(
            "fidelity at step %d: %s",
            trainer.global_step,
            ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        )
        if self.grid_images:
            tiles = [
                draw_layout(
                    (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), lay, tile=self.tile
                )
                for img, lay in samples[: self.grid_images]
            ]
            publish_grid(trainer, image_grid(tiles, columns=min(8, len(tiles))), "fidelity")
