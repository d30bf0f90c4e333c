"""Training a ``TorchvisionDetector``: COCO-format (or shapes) detection batches and a LightningModule.

``detdiffusion fit --config experiments/shapes/detector.yaml`` trains one; the checkpoint loads with
``TorchvisionDetector(weights=ckpt)`` (the detector is the module's ``model``) or, with its label
map and sizes, with ``DetectorModule.load_from_checkpoint(ckpt).to_detector()``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Sampler
from torchmetrics.detection import MeanAveragePrecision

from detdiffusion.data.coco import Category, CocoLayouts, FilterConfig, ImageRecord, read_coco
from detdiffusion.data.datamodule import check_split_paths
from detdiffusion.data.shapes import ShapesConfig, default_shapes_dir, generate_shapes, shapes_paths
from detdiffusion.detectors.background import ignore_synthetic_background
from detdiffusion.detectors.running import load_image
from detdiffusion.detectors.torchvision import Architecture, TorchvisionDetector
from detdiffusion.evaluation.yolo_score import map_backend

__all__ = [
    "DETECTION_FILTERS",
    "DetectionDataModule",
    "DetectionDataset",
    "DetectorModule",
    "MixSampler",
    "collate_detection",
]

log = logging.getLogger(__name__)

#: Every valid, non-crowd object of every image (images without objects are kept as negatives).
DETECTION_FILTERS = FilterConfig(
    min_object_area=0.0, drop_crowd=True, drop_categories=(), min_objects=0, max_objects=None
)

#: One image's target, torchvision's format: ``boxes`` ``(N, 4)`` float xyxy pixels, ``labels``
#: ``(N,)`` int64 in ``1..K`` (index + 1 into ``category_ids``; 0 is background), ``image_id`` ``()``,
#: ``is_synthetic`` ``()`` bool.
Target = dict[str, torch.Tensor]


class DetectionDataset(Dataset):
    """Images of a ``CocoLayouts`` as ``(image, target)``; thing objects only.

    Args:
        records: the images (stuff annotations are dropped here).
        category_ids: dataset category id of labels 1, 2, …; objects of other categories are dropped.
        size: resize every image to ``size × size`` (boxes scaled); None keeps each image's size.
        hflip: flip each image left-right with probability 0.5 (training augmentation).
        seed: seed of the flips (with the epoch, see ``set_epoch``).
        synthetic_from: records from this index on are synthetic (``is_synthetic`` in targets);
            None: none is.
    """

    def __init__(
        self,
        records: tuple[ImageRecord, ...] | list[ImageRecord],
        category_ids: list[int],
        size: int | None = None,
        hflip: bool = False,
        seed: int = 0,
        synthetic_from: int | None = None,
    ) -> None:
        self.records = list(records)
        self.synthetic_from = len(self.records) if synthetic_from is None else synthetic_from
        self.label_of = {c: i + 1 for i, c in enumerate(category_ids)}
        self.size, self.hflip, self.seed = size, hflip, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        record = self.records[index]
        image = load_image(record)  # (3, H, W), its size checked against the record
        objects = [a for a in record.annotations if a.category_id in self.label_of]
        boxes = torch.tensor([a.box for a in objects], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.label_of[a.category_id] for a in objects], dtype=torch.int64)
        if self.size is not None and (record.height, record.width) != (self.size, self.size):
            image = F.interpolate(
                image[None], size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )[0].clamp_(0.0, 1.0)
            scale = torch.tensor([self.size / record.width, self.size / record.height] * 2)
            boxes = boxes * scale
        if self.hflip and np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        target = {"boxes": boxes, "labels": labels, "image_id": torch.tensor(record.id)}
        return image, target | {"is_synthetic": torch.tensor(index >= self.synthetic_from)}


class MixSampler(Sampler[int]):
    """Gen2Det's batch sampling: each slot is a synthetic image with probability ``p``, else real.

    An epoch has as many slots as there are real images; real images are visited in a seeded
    shuffle, synthetic ones drawn at random. Everything is a function of (seed, epoch), so every
    rank draws the same stream and Lightning's distributed wrapper shards it without overlap.

    Args:
        num_real: real images (dataset indices ``0..num_real-1``).
        num_synthetic: synthetic images (the indices after them).
        p: probability that a slot is synthetic.
        seed: base seed.
        epoch_source: returns the current epoch (the trainer's); None: 0, then counting passes.
    """

    def __init__(
        self,
        num_real: int,
        num_synthetic: int,
        p: float,
        seed: int,
        epoch_source: Callable[[], int | None] | None = None,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"--data.synthetic_prob must be in [0, 1], got {p}")
        if num_real < 1 or (p > 0 and num_synthetic < 1):
            raise ValueError(
                f"need real images, and synthetic ones when p > 0: got {num_real}, {num_synthetic}"
            )
        self.num_real, self.num_synthetic, self.p, self.seed = num_real, num_synthetic, p, seed
        self.epoch_source = epoch_source
        self._passes = 0

    def __len__(self) -> int:
        return self.num_real

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch_source() if self.epoch_source is not None else None
        epoch = self._passes if epoch is None else epoch
        self._passes += 1
        rng = np.random.default_rng([self.seed, epoch])
        real = rng.permutation(self.num_real)
        synthetic = rng.random(self.num_real) < self.p
        picks = self.num_real + rng.integers(0, max(self.num_synthetic, 1), self.num_real)
        return iter(np.where(synthetic, picks, real).tolist())


def collate_detection(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Lists, not stacks: torchvision detectors take images of different sizes."""
    return [image for image, _ in batch], [target for _, target in batch]


class DetectionDataModule(L.LightningDataModule):
    """Detection batches from COCO-format files, or from the built-in shapes when no paths are given.

    Batches are ``(images, targets)``: lists of ``(3, H, W)`` float images in [0, 1] and of targets
    ``{boxes, labels, image_id}`` (``Target``). ``category_ids`` (after ``setup``): dataset ids of
    labels 1, 2, … — the thing categories, sorted by id; stuff categories are never detected.

    Args:
        train_annotations: COCO instances JSON of the training split.
        train_images: image folder of the training split.
        val_annotations: COCO instances JSON of the validation split.
        val_images: image folder of the validation split.
        shapes: the built-in dataset used when no annotation paths are given (its things only).
        filters: object and image filters; None: ``DETECTION_FILTERS`` (every valid non-crowd object).
        size: resize images to ``size × size`` (boxes scaled); None keeps their size.
        hflip: random left-right flips of training images.
        train_subset: train on the first N images of a seeded shuffle of the training split (low-data
            runs); None: all of them.
        synthetic_annotations: a synthetic COCO dataset (``detdiffusion predict``'s ``annotations.json``)
            to train on beside the real images; its thing categories must be the real ones.
        synthetic_images: its image folder (None: the JSON's folder, where ``predict`` puts ``images/``).
        mix: ``concat``: real and synthetic images shuffled together; ``sample``: each batch slot is
            synthetic with probability ``synthetic_prob`` (Gen2Det), an epoch being as many slots as
            real images.
        synthetic_prob: the probability of ``sample``.
        batch_size: images per batch.
        num_workers: data loading processes.
        seed: seed of the subset, the shuffling and the flips.
    """

    def __init__(
        self,
        train_annotations: str | None = None,
        train_images: str | None = None,
        val_annotations: str | None = None,
        val_images: str | None = None,
        shapes: ShapesConfig = ShapesConfig(),
        filters: FilterConfig | None = None,
        size: int | None = None,
        hflip: bool = True,
        train_subset: int | None = None,
        synthetic_annotations: str | None = None,
        synthetic_images: str | None = None,
        mix: Literal["concat", "sample"] = "concat",
        synthetic_prob: float = 0.2,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_split_paths(train_annotations, train_images, val_annotations, val_images)
        if mix not in ("concat", "sample"):
            raise ValueError(f"--data.mix must be 'concat' or 'sample', got {mix!r}")
        if not 0.0 <= synthetic_prob <= 1.0:
            raise ValueError(f"--data.synthetic_prob must be in [0, 1], got {synthetic_prob}")
        if batch_size < 1:
            raise ValueError(f"--data.batch_size must be >= 1, got {batch_size}")
        if size is not None and size < 1:
            raise ValueError(f"--data.size must be >= 1 or null, got {size}")
        if train_subset is not None and train_subset < 1:
            raise ValueError(f"--data.train_subset must be >= 1 or null, got {train_subset}")
        # Kept as objects: under LightningCLI, hparams hold the config (plain dicts), not dataclasses.
        self.shapes = shapes
        self.filters = filters or DETECTION_FILTERS
        self.uses_shapes = train_annotations is None
        self.train_dataset: DetectionDataset | None = None
        self.val_dataset: DetectionDataset | None = None
        self.categories: list[Category] = []

    @property
    def category_ids(self) -> list[int]:
        """Dataset category id of labels 1, 2, … (after ``setup``)."""
        return [c.id for c in self.categories]

    def _split_paths(self, split: str) -> tuple[str | Path, str | Path] | None:
        hp = self.hparams
        if self.uses_shapes:
            paths = shapes_paths(default_shapes_dir(self.shapes))[split]
            return paths.annotations, paths.images
        if hp[f"{split}_annotations"] is None:
            return None
        return hp[f"{split}_annotations"], hp[f"{split}_images"]

    def prepare_data(self) -> None:
        if self.uses_shapes:
            generate_shapes(default_shapes_dir(self.shapes), self.shapes)

    def read_split(self, split: str) -> CocoLayouts | None:
        """The split read and filtered (None when it has no paths); logs the filter report."""
        paths = self._split_paths(split)
        if paths is None:
            return None
        coco = read_coco(*paths, filters=self.filters)
        rank_zero_info(f"{split}: {paths[0]}\n{coco.report.format()}")
        return coco

    def _adopt_categories(self, coco: CocoLayouts) -> None:
        if not self.categories:
            self.categories = [c for _, c in sorted(coco.categories.items()) if not c.is_stuff]
            if not self.categories:
                raise ValueError(f"{coco.sources[0]}: has no thing categories to detect")

    def setup(self, stage: str | None = None) -> None:
        if self.uses_shapes:
            self.prepare_data()  # a no-op when the cache is there; covers use outside a Trainer
        hp = self.hparams
        if stage in ("fit", None) and self.train_dataset is None:
            coco = self.read_split("train")
            self._adopt_categories(coco)
            records = list(coco.images)
            if hp.train_subset is not None:
                if hp.train_subset > len(records):
                    raise ValueError(
                        f"--data.train_subset is {hp.train_subset} but the training split has "
                        f"{len(records)} images"
                    )
                order = np.random.default_rng(hp.seed).permutation(len(records))
                records = [records[i] for i in order[: hp.train_subset]]
            num_real = len(records)
            records += self._synthetic_records()
            self.train_dataset = DetectionDataset(
                records, self.category_ids, hp.size, hflip=hp.hflip, seed=hp.seed, synthetic_from=num_real
            )
        if stage in ("fit", "validate", "test", None) and self.val_dataset is None:
            coco = self.read_split("val")
            if coco is not None and len(coco):
                self._adopt_categories(coco)
                self.val_dataset = DetectionDataset(coco.images, self.category_ids, hp.size)

    def _synthetic_records(self) -> list[ImageRecord]:
        hp = self.hparams
        if hp.synthetic_annotations is None:
            return []
        path = Path(hp.synthetic_annotations).expanduser()
        coco = read_coco(path, hp.synthetic_images or path.parent, filters=self.filters)
        rank_zero_info(f"synthetic: {path}\n{coco.report.format()}")
        theirs = {c.id: c.name for c in coco.categories.values() if not c.is_stuff}
        ours = {c.id: c.name for c in self.categories}
        if theirs != ours:
            raise ValueError(f"{path}: thing categories {theirs} differ from the real training data's {ours}")
        return list(coco.images)

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        hp = self.hparams
        if self.trainer is not None:
            self.train_dataset.set_epoch(self.trainer.current_epoch)
        if hp.mix == "sample" and hp.synthetic_annotations is not None:
            real = self.train_dataset.synthetic_from
            sampler = MixSampler(
                real,
                len(self.train_dataset) - real,
                hp.synthetic_prob,
                hp.seed,
                lambda: self.trainer.current_epoch if self.trainer is not None else None,
            )
            return self._loader(self.train_dataset, shuffle=False, sampler=sampler)
        generator = torch.Generator().manual_seed(hp.seed)
        return self._loader(self.train_dataset, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_dataset is None else self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def _loader(self, dataset: DetectionDataset, shuffle: bool, **kwargs: Any) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            shuffle=shuffle,
            num_workers=hp.num_workers,
            collate_fn=collate_detection,
            persistent_workers=hp.num_workers > 0,
            **kwargs,
        )


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class DetectorModule(L.LightningModule):
    """Trains a ``TorchvisionDetector``'s model; ``self.model`` is the torchvision detector itself.

    The model is built in ``__init__`` when ``category_ids`` is given, else in ``setup`` from the
    datamodule's ``category_ids``, which are then saved in the hyperparameters (so
    ``load_from_checkpoint`` builds the same model). Labels are contiguous (1..K, 0 background) in
    training and validation; ``to_detector`` maps them back to dataset ids.

    Args:
        architecture: the torchvision builder; ``fasterrcnn_small`` trains from scratch on a CPU in minutes
            (small images only), the ResNet-50 ones want pretrained ``weights``.
        category_ids: dataset category id of labels 1, 2, …; None: the datamodule's, at setup.
        category_names: name of each class, for ``val/ap/<name>``; None: the datamodule's, or ids.
        min_size: torchvision resizes the shorter image side to this (for 64 px shapes, 2–3× upsampling
            lets the smallest anchors (32 px) cover small objects).
        max_size: and the longer side to at most this.
        weights: initial weights: a torchvision state dict or a Lightning checkpoint (``model.`` keys).
        optimizer: optimizer factory over the parameter groups (which carry ``lr`` and ``weight_decay``).
            Default AdamW. On the shapes from random initialisation AdamW (lr 2e-3) beat
            torchvision's reference SGD (lr 0.02, momentum 0.9): mAP 0.584 against 0.204 at 600 steps.
        lr: peak learning rate.
        weight_decay: weight decay of weights (not of norms and biases).
        warmup_steps: linear learning-rate warm-up from 0.1% of the rate.
        lr_schedule: after warm-up, ``cosine`` to 0 at ``trainer.max_steps``, or ``constant``.
        roi_samples_per_image: proposals sampled per image for the box head in training (torchvision:
            512; fewer is much cheaper and enough for few objects an image). Training only.
        rpn_proposals_train: proposals kept after NMS in training (torchvision: 2000). Training only.
        score_threshold: drop detections below this score (validation and ``to_detector``).
        background_ignore: Gen2Det's background ignore (Faster R-CNN only): on synthetic images
            (``is_synthetic`` targets) the RPN and the box head train no background (negative) terms.
            Synthetic images without objects then carry no term and are left out of their batch.
    """

    def __init__(
        self,
        architecture: Architecture = "fasterrcnn_mobilenet_v3_large_fpn",
        category_ids: list[int] | None = None,
        category_names: list[str] | None = None,
        min_size: int = 800,
        max_size: int = 1333,
        weights: str | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_steps: int = 100,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        roi_samples_per_image: int = 128,
        rpn_proposals_train: int = 300,
        score_threshold: float = 0.05,
        background_ignore: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if isinstance(optimizer, dict):  # load_from_checkpoint of a CLI run: the class_path config
            optimizer = functools.partial(_import(optimizer["class_path"]), **optimizer.get("init_args", {}))
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"--model.lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        if warmup_steps < 0 or roi_samples_per_image < 1 or rpn_proposals_train < 1:
            raise ValueError(
                "--model.warmup_steps must be >= 0 and --model.roi_samples_per_image, "
                f"--model.rpn_proposals_train >= 1; got {warmup_steps}, {roi_samples_per_image}, "
                f"{rpn_proposals_train}"
            )
        if (
            category_names is not None
            and category_ids is not None
            and len(category_names) != len(category_ids)
        ):
            raise ValueError(
                f"--model.category_names has {len(category_names)} names for "
                f"{len(category_ids)} --model.category_ids"
            )
        self.optimizer_factory = optimizer
        self.model: torch.nn.Module | None = None
        if category_ids is not None:
            self._build(list(category_ids))
        self.val_map = MeanAveragePrecision(
            box_format="xyxy", iou_type="bbox", class_metrics=True, backend=map_backend()
        )

    def _build(self, category_ids: list[int]) -> None:
        hp = self.hparams
        hp.category_ids = category_ids  # saved, so load_from_checkpoint builds the same model
        detector = TorchvisionDetector(
            hp.architecture,
            category_ids=category_ids,
            weights=hp.weights,
            score_threshold=hp.score_threshold,
            device="cpu",
            min_size=hp.min_size,
            max_size=hp.max_size,
        )
        self.model = detector.model.train(self.training)  # TorchvisionDetector leaves it in eval
        # Training-only sampling sizes: they change no parameter, so the checkpoint still loads
        # into a plain TorchvisionDetector.
        if hasattr(self.model, "roi_heads"):
            self.model.roi_heads.fg_bg_sampler.batch_size_per_image = hp.roi_samples_per_image
        if hasattr(self.model, "rpn"):
            self.model.rpn._post_nms_top_n["training"] = hp.rpn_proposals_train
        if hp.background_ignore:
            ignore_synthetic_background(self.model)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self.trainer is not None else None
        if self.hparams.category_names is None and getattr(datamodule, "categories", None):
            self.hparams.category_names = [c.name for c in datamodule.categories]
        if self.model is not None:
            theirs = list(getattr(datamodule, "category_ids", None) or [])
            if theirs and theirs != list(self.hparams.category_ids):
                raise ValueError(
                    f"--model.category_ids {self.hparams.category_ids} differ from the data's {theirs}"
                )
            return
        ids = getattr(datamodule, "category_ids", None)
        if not ids:
            raise ValueError("--model.category_ids is unset and the datamodule has no category_ids")
        self._build(list(ids))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The initial weights are in the state dict now: loading the checkpoint must not read (or
        # need) that file again.
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"]["weights"] = None

    # -- the recipe -----------------------------------------------------------------------------

    def training_step(self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        keys = ("boxes", "labels", "is_synthetic") if self.hparams.background_ignore else ("boxes", "labels")
        targets = [{k: t[k] for k in keys if k in t} for t in targets]
        if self.hparams.background_ignore:
            kept = [i for i, t in enumerate(targets) if len(t["boxes"]) or not t.get("is_synthetic", False)]
            self.log("train/ignored_images", float(len(images) - len(kept)), batch_size=len(images))
            images, targets = [images[i] for i in kept], [targets[i] for i in kept]
            if not images:
                # A zero step that still touches every parameter, so DDP ranks stay in step.
                return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        losses = self.model(images, targets)
        loss = sum(losses.values())
        bs = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=bs)
        return loss

    def validation_step(self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int) -> None:
        images, targets = batch
        predictions = self.model(images)
        self.val_map.update(
            [{k: p[k] for k in ("boxes", "scores", "labels")} for p in predictions],
            [{k: t[k] for k in ("boxes", "labels")} for t in targets],
        )

    def on_validation_epoch_end(self) -> None:
        result = self.val_map.compute()
        self.val_map.reset()
        for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"):
            self.log(f"val/{key}", result[key].float())
        names = self.hparams.category_names or [str(c) for c in self.hparams.category_ids]
        classes = result["classes"].reshape(-1).tolist()
        per_class = result["map_per_class"].reshape(-1).tolist()
        lines = []
        for label, ap in zip(classes, per_class, strict=True):
            name = names[label - 1] if 1 <= label <= len(names) else str(label)
            self.log(f"val/ap/{name}", float(ap))
            lines.append(f"{name} {ap:.3f}")
        rank_zero_info(
            f"step {self.global_step}: mAP {float(result['map']):.3f}, AP50 {float(result['map_50']):.3f}, "
            f"AP75 {float(result['map_75']):.3f}; per class: {', '.join(lines)}"
        )

    # -- optimisation ---------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(
            [
                {"params": [p for p in params if p.ndim > 1], "lr": hp.lr, "weight_decay": hp.weight_decay},
                {"params": [p for p in params if p.ndim <= 1], "lr": hp.lr, "weight_decay": 0.0},
            ]
        )
        total = self.trainer.max_steps if self.trainer is not None else -1

        def factor(step: int) -> float:
            if step < hp.warmup_steps:
                return 1e-3 + (1 - 1e-3) * step / hp.warmup_steps
            if hp.lr_schedule == "constant" or total is None or total <= hp.warmup_steps:
                return 1.0
            progress = min(1.0, (step - hp.warmup_steps) / (total - hp.warmup_steps))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- use ------------------------------------------------------------------------------------

    def to_detector(self, device: str | None = None, **kwargs: Any) -> TorchvisionDetector:
        """A ``TorchvisionDetector`` holding a copy of this model, labels mapped to dataset ids.

        ``kwargs`` go to ``TorchvisionDetector`` (e.g. ``score_threshold``, ``batch_size``).
        """
        if self.model is None:
            raise RuntimeError("the model is not built yet: give category_ids or run setup first")
        hp = self.hparams
        settings = {"score_threshold": hp.score_threshold, "min_size": hp.min_size, "max_size": hp.max_size}
        detector = TorchvisionDetector(
            hp.architecture, category_ids=list(hp.category_ids), device=device, **(settings | kwargs)
        )
        detector.model.load_state_dict(self.model.state_dict())
        detector.model.to(detector.device).eval()
        return detector
