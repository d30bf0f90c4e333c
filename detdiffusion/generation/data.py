"""``detdiffusion predict``: a layout set in, a labelled synthetic COCO dataset out.

``LayoutSetDataModule`` plans ``samples_per_layout`` images for every layout of a COCO JSON,
skips the ones a previous run of the same command already wrote, and hands the rest to the
model's ``predict_step`` in batches; ``SyntheticDatasetWriter`` saves each batch and, when
every rank is done, merges one ``annotations.json``. Under DDP each rank generates its own
share of what is left (images ``r, r + N, …`` of the plan): no image twice.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, RichProgressBar, TQDMProgressBar
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from detdiffusion.data.coco import FilterConfig, read_coco
from detdiffusion.data.dataset import record_layout
from detdiffusion.data.shapes import ShapesConfig, default_shapes_dir, generate_shapes, shapes_paths
from detdiffusion.files import file_sha256
from detdiffusion.generation.pipeline import STRATEGIES, apply_strategy, image_seed, to_pil
from detdiffusion.generation.store import SyntheticStore, record
from detdiffusion.layout.types import Attribute, Layout

__all__ = ["GENERATION_FILTERS", "LayoutSetDataModule", "SamplingSettings", "SyntheticDatasetWriter"]

log = logging.getLogger(__name__)

#: Every non-crowd object of every image, images without objects included (they generate from
#: the template alone).
GENERATION_FILTERS = FilterConfig(
    min_object_area=0.0, drop_crowd=True, drop_categories=(), min_objects=0, max_objects=None
)


@dataclass  # not frozen: Lightning's batch transfer rebuilds dataclasses
class SamplingSettings:
    """How each image is sampled (recorded in the dataset's ``info``)."""

    num_inference_steps: int = 25
    guidance_scale: float = 5.0
    scheduler: str | None = None
    """A diffusers scheduler class name (None: DDIM)."""
    negative_prompt: str = ""
    height: int | None = None
    """Generated height in pixels (None: the model's size)."""
    width: int | None = None
    use_ema: bool = True


#: What the model gets of one layout: token ids, and its boxes ``(N, 4)`` with category ids ``(N,)``
#: (for spatially conditioned models).
_Prompt = tuple[np.ndarray, np.ndarray, np.ndarray]


class _Plan(Dataset):
    """This rank's items, ``(layout index, sample index, seed)`` with their prompts; ``None`` is no work."""

    def __init__(self, items: list[tuple[int, int, int] | None], prompts: list[_Prompt]) -> None:
        self.items = items
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[tuple[int, int, int], _Prompt] | None:
        item = self.items[i]
        return None if item is None else (item, self.prompts[item[0]])


class _OwnShard(DistributedSampler):
    """Every item of the rank's own share, in order.

    A ``DistributedSampler`` only so that Lightning does not shard the share again: its unrepeated
    sampler also refuses a rank without items, which the last images of a resumed run can leave.
    """

    def __init__(self, n: int) -> None:  # no process group needed: the plan is sharded already
        self.n = n
        self.epoch = 0

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


def _collate(
    examples: list[tuple[tuple[int, int, int], _Prompt] | None],
    empty_window: np.ndarray,
    negative: torch.Tensor,
    settings: SamplingSettings,
) -> dict[str, Any]:
    examples = [e for e in examples if e is not None]
    windows = max((len(p[0]) for _, p in examples), default=len(empty_window)) // len(empty_window)
    ids = np.tile(empty_window, (len(examples), windows))
    n = max((len(p[2]) for _, p in examples), default=0)
    boxes = np.zeros((len(examples), n, 4), dtype=np.float32)
    category_ids = np.full((len(examples), n), -1, dtype=np.int64)
    for i, (_, (row, b, c)) in enumerate(examples):
        ids[i, : len(row)] = row
        boxes[i, : len(c)] = b
        category_ids[i, : len(c)] = c
    return {
        "items": [item for item, _ in examples],
        "seeds": [item[2] for item, _ in examples],
        "input_ids": torch.from_numpy(ids),
        "boxes": torch.from_numpy(boxes),
        "category_ids": torch.from_numpy(category_ids),
        "negative_ids": negative,
        "settings": settings,
    }


class LayoutSetDataModule(L.LightningDataModule):
    """Layouts to generate from, and where the synthetic dataset goes (``detdiffusion predict``).

    Args:
        output_dir: the synthetic dataset's folder (see ``detdiffusion.generation.store``); a rerun
            with the same settings resumes, other settings are refused.
        layouts: a COCO JSON of layouts (real training layouts, or hand-made ones: images need no
            files, boxes must lie inside their image).
        shapes: instead of ``layouts``, the layouts of the built-in shapes dataset (made if missing).
        shapes_split: which split of the shapes.
        samples_per_layout: images per layout (K).
        strategy: attributes of the objects: ``origin`` (the layout's own), ``easy`` or ``hard``.
        attributes: per-object overrides after the strategy, ``{annotation id: attribute}``.
        seed: base seed; image ``k`` of layout ``i`` is drawn with ``image_seed(seed, i, k)``.
        sampling: steps, guidance, scheduler, negative prompt, size (None: ``SamplingSettings()``).
        resize_to_source: save each image at its layout's image size, boxes scaled with it
            (GeoDiffusion); else at the generated size.
        filters: which objects and layouts to keep (default: all non-crowd objects).
        limit: only the first ``limit`` layouts (smoke runs).
        batch_size: images per forward pass.
        num_workers: data-loader workers (the items are token ids; 0 is enough).
    """

    def __init__(
        self,
        output_dir: str,
        layouts: str | None = None,
        shapes: ShapesConfig | None = None,
        shapes_split: Literal["train", "val"] = "val",
        samples_per_layout: int = 1,
        strategy: str = "origin",
        attributes: dict[int, str] | None = None,
        seed: int = 0,
        sampling: SamplingSettings | None = None,
        resize_to_source: bool = False,
        filters: FilterConfig = GENERATION_FILTERS,
        limit: int | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"--data.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if samples_per_layout < 1 or batch_size < 1:
            raise ValueError(
                "--data.samples_per_layout and --data.batch_size must be >= 1, "
                f"got {samples_per_layout}, {batch_size}"
            )
        if limit is not None and limit < 1:
            raise ValueError(f"--data.limit must be >= 1 or null, got {limit}")
        self.overrides = {
            int(k): Attribute.parse(v, f"--data.attributes[{k}]: ") for k, v in (attributes or {}).items()
        }
        if (layouts is None) == (shapes is None):
            raise ValueError("give exactly one of --data.layouts and --data.shapes")
        self.shapes = shapes
        if shapes is not None:
            layouts = shapes_paths(default_shapes_dir(shapes))[shapes_split].annotations
        self.layouts_path = Path(layouts).expanduser()
        self.output_dir = Path(output_dir).expanduser()
        self.samples_per_layout = samples_per_layout
        self.strategy = strategy
        self.seed = seed
        self.sampling = sampling or SamplingSettings()
        self.resize_to_source = resize_to_source
        self.filters = filters
        self.limit = limit
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.layouts: list[Layout] = []
        self.store: SyntheticStore | None = None
        self.planned: list[tuple[int, int]] = []
        self._prompts: list[_Prompt] = []
        #: Images all ranks generate in this run (the plan less what was done before).
        self.to_generate = 0

    # -- set-up ---------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        if self.shapes is not None:
            generate_shapes(default_shapes_dir(self.shapes), self.shapes)

    def setup(self, stage: str | None = None) -> None:
        if stage not in ("predict", None):
            raise ValueError(f"LayoutSetDataModule serves predict only, not {stage!r}")
        trainer, module = self.trainer, self.trainer.lightning_module
        tokenizer = getattr(module, "layout_tokenizer", None)
        if tokenizer is None:
            raise TypeError(
                f"{type(module).__name__} has no layout_tokenizer: predict needs a DetDiffusionModule"
            )
        self.prepare_data()  # a no-op when the shapes are cached; under DDP every rank waits for them
        if not self.layouts_path.is_file():
            raise FileNotFoundError(f"--data.layouts {self.layouts_path} does not exist")
        coco = read_coco(
            self.layouts_path,
            self.layouts_path.parent,
            filters=self.filters,
            check_files=False,
            strict_boxes=True,
        )
        self.categories = coco.categories
        names = {cid: tokenizer.builder.class_name(cat.name) for cid, cat in coco.categories.items()}
        known = getattr(module.hparams, "categories", None)
        records = coco.images[: self.limit]
        self.layouts, prompts = [], []
        for r in records:
            if known is not None:
                for ann in r.annotations:
                    name = coco.categories[ann.category_id].name
                    if name not in known:
                        raise ValueError(
                            f"{self.layouts_path}: layout (image id) {r.id}, annotation id {ann.id}: class "
                            f"{name!r} is not one the model was trained on ({', '.join(known)})"
                        )
            layout = apply_strategy(record_layout(r, coco.categories, names), self.strategy, self.overrides)
            encoded = tokenizer.encode(layout)
            kept = layout.with_objects([layout.objects[j] for j in encoded.kept])
            self.layouts.append(kept)
            prompts.append(
                (
                    encoded.input_ids,
                    kept.boxes().astype(np.float32),
                    np.asarray([o.category_id for o in kept.objects], dtype=np.int64),
                )
            )
        self.planned = [(lay.image_id, k) for lay in self.layouts for k in range(self.samples_per_layout)]
        self._prompts = prompts
        spatial = getattr(module, "spatial_ids", None)
        if spatial is not None:
            used = {o.category_id for lay in self.layouts for o in lay.objects}
            for stuff in (False, True):
                without = [
                    f"{coco.categories[c].name} ({c})"
                    for c in sorted(used - set(spatial))
                    if coco.categories[c].is_stuff == stuff
                ]
                if without:
                    # A thing without a channel is likely a category-id mismatch with the training data.
                    (log.info if stuff else log.warning)(
                        "spatial conditioning: no box-map channel (categories %s) for %s in %s: drawn "
                        "through the prompt only",
                        list(spatial),
                        ", ".join(without),
                        self.layouts_path,
                    )
        if not any(isinstance(cb, SyntheticDatasetWriter) for cb in trainer.callbacks):
            trainer.callbacks.append(SyntheticDatasetWriter())  # without it the images would be lost

    def _manifest(self, trainer: L.Trainer) -> dict[str, Any]:
        module = trainer.lightning_module
        ckpt = getattr(trainer, "ckpt_path", None)
        return {
            "layouts": {"path": str(self.layouts_path.resolve()), "sha256": file_sha256(self.layouts_path)},
            "limit": self.limit,
            "filters": asdict(self.filters),
            "samples_per_layout": self.samples_per_layout,
            "strategy": self.strategy,
            "attributes": {str(k): v.value for k, v in sorted(self.overrides.items())},
            "seed": self.seed,
            "sampling": asdict(self.sampling),
            "resize_to_source": self.resize_to_source,
            "model": {
                "class": f"{type(module).__module__}.{type(module).__qualname__}",
                "checkpoint": str(Path(ckpt).resolve()) if ckpt else None,
                "pretrained": module.hparams.get("pretrained_model_name_or_path"),
            },
        }

    def _open(self) -> _Plan:
        """Open the output folder (checked against this run) and plan what it lacks."""
        trainer = self.trainer
        # Here, not in setup: the checkpoint path is known once Lightning has restored it.
        self.store = SyntheticStore(self.output_dir, self._manifest(trainer))
        if trainer.is_global_zero:
            self.store.open(create=True)
        trainer.strategy.barrier("detdiffusion-generation-open")
        if not trainer.is_global_zero:
            self.store.open(create=False)
        done = self.store.done()
        index = {lay.image_id: i for i, lay in enumerate(self.layouts)}
        items = [
            (index[lid], k, image_seed(self.seed, lid, k)) for lid, k in self.planned if (lid, k) not in done
        ]
        self.to_generate = len(items)
        share: list[tuple[int, int, int] | None] = items[trainer.global_rank :: trainer.world_size]
        log.info(
            "generation: %d layouts × %d samples = %d images planned, %d already in %s, %d to generate",
            len(self.layouts),
            self.samples_per_layout,
            len(self.planned),
            len(self.planned) - len(items),
            self.output_dir,
            len(items),
        )
        # A rank with nothing to do runs one empty batch, so that every rank reaches the end-of-run
        # barrier where rank zero merges the dataset (also when a rerun finds everything done).
        return _Plan(share or [None], self._prompts)

    def predict_dataloader(self) -> DataLoader:
        if not self.planned and not self.layouts:
            raise RuntimeError("setup('predict') has not run")
        tok = self.trainer.lightning_module.layout_tokenizer
        negative = torch.from_numpy(tok.encode_text(self.sampling.negative_prompt))[None]
        plan = self._open()
        return DataLoader(
            plan,
            batch_size=self.batch_size,
            sampler=_OwnShard(len(plan)),
            num_workers=self.num_workers,
            collate_fn=functools.partial(
                _collate, empty_window=tok.empty_window, negative=negative, settings=self.sampling
            ),
        )

    # -- writing --------------------------------------------------------------------------------

    def write(self, prediction: dict[str, Any], rank: int) -> int:
        """Save a ``predict_step`` output; returns the number of images written."""
        out = []
        for image, (li, k, seed) in zip(to_pil(prediction["images"]), prediction["items"], strict=True):
            layout = self.layouts[li]
            if self.resize_to_source and image.size != (layout.width, layout.height):
                image = image.resize((layout.width, layout.height), Image.Resampling.BICUBIC)
            out.append((image, record(layout, k, seed, image.width, image.height)))
        self.store.write(rank, out)
        return len(out)

    def finish(self) -> Path:
        """Merge every rank's records into ``annotations.json`` (rank zero, after all ranks)."""
        return self.store.merge(
            self.planned,
            self.categories,
            {"description": "detdiffusion synthetic dataset", **self.store.manifest},
        )


class SyntheticDatasetWriter(BasePredictionWriter):
    """Saves each predicted batch through the ``LayoutSetDataModule`` and merges the dataset at the end.

    ``LayoutSetDataModule`` adds one when the trainer has none. Predictions are not kept in
    memory (``return_predictions`` is turned off): the images are on disk.
    """

    def __init__(self) -> None:
        super().__init__("batch")
        self._written = 0
        self._start = 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(trainer.datamodule, LayoutSetDataModule):
            raise TypeError("SyntheticDatasetWriter needs a LayoutSetDataModule (--data)")
        trainer.predict_loop.return_predictions = False

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._written, self._start = 0, time.perf_counter()

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        self._written += trainer.datamodule.write(prediction, trainer.global_rank)
        rate = f"{self._written / max(time.perf_counter() - self._start, 1e-9):.2f} images/s"
        bar = trainer.progress_bar_callback
        if isinstance(bar, TQDMProgressBar) and bar.predict_progress_bar is not None:
            bar.predict_progress_bar.set_postfix({"rank 0": rate})
        elif (
            isinstance(bar, RichProgressBar)
            and bar.progress is not None
            and bar.predict_progress_bar_id is not None
        ):
            bar.progress.update(bar.predict_progress_bar_id, description=f"Generating ({rate})")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("detdiffusion-generation-done")
        if trainer.is_global_zero:
            seconds = time.perf_counter() - self._start
            count = trainer.datamodule.to_generate
            path = trainer.datamodule.finish()
            log.info(
                "generated %d images on %d ranks in %.1f s (%.2f images/s); dataset: %s",
                count,
                trainer.world_size,
                seconds,
                count / max(seconds, 1e-9),
                path,
            )
