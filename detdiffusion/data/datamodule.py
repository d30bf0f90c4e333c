"""``LayoutDataModule``: COCO-format layouts (or the built-in shapes) as batches for the diffusion model."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from detdiffusion.data.coco import Category, CocoLayouts, FilterConfig, read_coco
from detdiffusion.data.dataset import EpochSampler, LayoutDataset, TransformConfig, collate_layouts
from detdiffusion.data.shapes import (
    SHAPES_FILTERS,
    ShapesConfig,
    default_shapes_dir,
    generate_shapes,
    shapes_paths,
)
from detdiffusion.layout.encoding import LayoutTokenizer, LongPromptPolicy, OwnsLayoutTokenizer
from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.prompt import PromptBuilder, PromptTemplate
from detdiffusion.layout.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

# Datamodules built in Python keep these settings objects in their hyperparameters, which go into
# checkpoints; torch.load(weights_only=True) (Lightning's default) refuses unknown classes.
torch.serialization.add_safe_globals(
    [ShapesConfig, FilterConfig, TransformConfig, LocationGrid, PromptTemplate]
)


def check_split_paths(
    train_annotations: str | None,
    train_images: str | None,
    val_annotations: str | None,
    val_images: str | None,
) -> None:
    """Annotations and images of a split go together; validation data needs training data."""
    for split, ann, img in (
        ("train", train_annotations, train_images),
        ("val", val_annotations, val_images),
    ):
        if (ann is None) != (img is None):
            raise ValueError(
                f"--data.{split}_annotations and --data.{split}_images go together; got one of them"
            )
    if train_annotations is None and val_annotations is not None:
        raise ValueError("--data.val_annotations needs --data.train_annotations (or neither, for the shapes)")


class LayoutDataModule(L.LightningDataModule):
    """Images with layout prompts (location and attribute tokens), boxes, labels and masks.

    With no annotation paths, the built-in shapes dataset is generated once into the cache
    folder (``$DETDIFFUSION_CACHE``, default ``~/.cache/detdiffusion``) and used.

    Batches hold ``pixel_values`` ``(B, 3, S, S)`` in [-1, 1]; ``input_ids`` ``(B, W·77)`` (W
    windows of 77 tokens, see ``num_windows``); ``object_index`` ``(B, W·77)`` (object slot of
    each token, -1 for none); ``boxes`` ``(B, N, 4)`` normalised xyxy; ``labels`` ``(B, N)``
    contiguous class indices into ``categories`` (-1 pads); ``attributes`` ``(B, N)`` codes of
    ``Attribute`` (-1 pads); ``masks`` ``(B, N, S, S)`` bool (box rectangles where the dataset
    has no mask, flagged by ``mask_is_box``); ``object_mask`` ``(B, N)``; ``is_stuff``;
    ``prompt_dropped`` ``(B,)``; ``prompts``; ``image_ids``. Objects are in prompt order.

    Args:
        train_annotations: COCO instances JSON of the training split.
        train_images: image folder of the training split.
        val_annotations: COCO instances JSON of the validation split.
        val_images: image folder of the validation split.
        train_stuff_annotations: COCO-Stuff JSON merged into the training split.
        val_stuff_annotations: COCO-Stuff JSON merged into the validation split.
        shapes: the built-in dataset used when no annotation paths are given.
        tokenizer: local Stable Diffusion folder or tokenizer folder; None builds SD 1.x's CLIP
            tokenizer offline from open_clip's BPE vocabulary. In a Trainer whose model owns a
            layout tokenizer (``DetDiffusionModule``), the model's tokenizer, grid and template
            are used instead.
        grid: location token grid (see ``tokenizer``).
        template: prompt template (see ``tokenizer``).
        class_names: raw class name → prompt name overrides.
        long_prompts: policy for prompts longer than one 77-token window.
        filters: object and image filters; None: LostGAN's COCO-Stuff setting for COCO files,
            keep everything for the built-in shapes.
        transform: output size, resize mode and augmentation.
        empty_prompt_prob: share of training prompts replaced by ``""`` (classifier-free guidance).
        batch_size: examples per batch.
        num_workers: data loading processes.
        seed: seed of shuffling, augmentation, object order and prompt dropout.
    """

    def __init__(
        self,
        train_annotations: str | None = None,
        train_images: str | None = None,
        val_annotations: str | None = None,
        val_images: str | None = None,
        train_stuff_annotations: str | None = None,
        val_stuff_annotations: str | None = None,
        shapes: ShapesConfig = ShapesConfig(),
        tokenizer: str | None = None,
        grid: LocationGrid = LocationGrid(16, 16),
        template: PromptTemplate = PromptTemplate(),
        class_names: dict[str, str] | None = None,
        long_prompts: LongPromptPolicy = "long",
        filters: FilterConfig | None = None,
        transform: TransformConfig = TransformConfig(),
        empty_prompt_prob: float = 0.1,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_split_paths(train_annotations, train_images, val_annotations, val_images)
        if batch_size < 1:
            raise ValueError(f"--data.batch_size must be >= 1, got {batch_size}")
        # Kept as objects: under LightningCLI, hparams hold the config (plain dicts), not dataclasses.
        self.shapes, self.transform = shapes, transform
        self.uses_shapes = train_annotations is None
        self.filters = filters or (SHAPES_FILTERS if self.uses_shapes else FilterConfig())
        self.layout_tokenizer = LayoutTokenizer(
            load_tokenizer(tokenizer), PromptBuilder(grid, template, class_names), policy=long_prompts
        )
        self.train_dataset: LayoutDataset | None = None
        self.val_dataset: LayoutDataset | None = None
        self.categories: list[Category] = []

    def _split_paths(self, split: str) -> tuple[str | Path, str | Path, str | Path | None] | None:
        hp = self.hparams
        if self.uses_shapes:
            paths = shapes_paths(default_shapes_dir(self.shapes))[split]
            return paths.annotations, paths.images, None
        if hp[f"{split}_annotations"] is None:
            return None
        return hp[f"{split}_annotations"], hp[f"{split}_images"], hp[f"{split}_stuff_annotations"]

    def prepare_data(self) -> None:
        if self.uses_shapes:
            generate_shapes(default_shapes_dir(self.shapes), self.shapes)

    def read_split(self, split: str) -> CocoLayouts | None:
        """The split read and filtered (None when it has no paths); logs the filter report."""
        paths = self._split_paths(split)
        if paths is None:
            return None
        annotations, images, stuff = paths
        coco = read_coco(annotations, images, stuff, self.filters)
        rank_zero_info(f"{split}: {annotations}\n{coco.report.format()}")
        return coco

    def _adopt_model_vocabulary(self) -> None:
        """Use the model's layout tokenizer: its text encoder was extended for that grid and template."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        if not isinstance(module, OwnsLayoutTokenizer) or module.layout_tokenizer is self.layout_tokenizer:
            return
        theirs, ours = module.layout_tokenizer.builder, self.layout_tokenizer.builder
        if (theirs.grid, theirs.template) != (ours.grid, ours.template):
            log.warning(
                "the data's grid/template (%s) differ from the model's (%s): using the model's",
                ours.grid,
                theirs.grid,
            )
        if ours.class_names and ours.class_names != theirs.class_names:
            log.warning(
                "--data.class_names %s differ from --model.class_names %s: using the model's",
                ours.class_names,
                theirs.class_names,
            )
        self.layout_tokenizer = module.layout_tokenizer
        # Record the model's vocabulary settings as the data's: they are what the data now uses, and
        # a logger refuses hparams that differ between model and data ("keys ['grid'] ... different").
        theirs_hp = module.hparams_initial
        keys = ("tokenizer", "grid", "template", "class_names", "long_prompts")
        self.save_hyperparameters({**self.hparams, **{k: theirs_hp[k] for k in keys if k in theirs_hp}})

    def setup(self, stage: str | None = None) -> None:
        self._adopt_model_vocabulary()
        if self.uses_shapes:
            self.prepare_data()  # a no-op when the cache is there; covers use outside a Trainer
        hp = self.hparams
        if stage in ("fit", None) and self.train_dataset is None:
            coco = self.read_split("train")
            self.train_dataset = LayoutDataset(
                coco,
                self.layout_tokenizer,
                self.transform,
                train=True,
                empty_prompt_prob=hp.empty_prompt_prob,
                seed=hp.seed,
            )
            self.categories = [coco.categories[c] for c in sorted(coco.categories)]
        if stage in ("fit", "validate", "test", None) and self.val_dataset is None:
            coco = self.read_split("val")
            if coco is not None:
                self.val_dataset = LayoutDataset(
                    coco, self.layout_tokenizer, self.transform, train=False, seed=hp.seed
                )
                self.categories = self.categories or [coco.categories[c] for c in sorted(coco.categories)]

    def _epoch(self) -> int | None:
        return self.trainer.current_epoch if self.trainer is not None else None

    def _loader(self, dataset: LayoutDataset, shuffle: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            sampler=EpochSampler(len(dataset), shuffle=shuffle, seed=hp.seed, epoch_source=self._epoch),
            num_workers=hp.num_workers,
            collate_fn=functools.partial(collate_layouts, empty_window=self.layout_tokenizer.empty_window),
            persistent_workers=hp.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_dataset is None else self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()
