"""Training examples: an image with its layout, prompt tokens, boxes and masks, and their collation."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate, get_worker_info

from detdiffusion.data.coco import Category, CocoLayouts, ImageRecord
from detdiffusion.data.transforms import ResizeMode, load_rgb, plan_geometry, to_model_range
from detdiffusion.layout.encoding import LayoutTokenizer
from detdiffusion.layout.types import ATTRIBUTE_CODES, Layout, LayoutObject

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransformConfig:
    """Image geometry of training and evaluation examples."""

    size: int = 64
    """Side of the square output images in pixels."""
    resize: ResizeMode = "crop"
    """``crop``: shorter side to ``size``, then crop (aspect kept); ``squash``: stretch (GeoDiffusion)."""
    random_crop: bool = False
    """Training only: a random crop window instead of the centre."""
    hflip: bool = True
    """Training only: mirror half of the images horizontally."""
    min_box_size: float = 1.0
    """An object whose box is smaller than this many pixels a side after cropping is left out (counted)."""
    mask_size: int | None = None
    """Side of the object masks in batches; None: ``size``. The perception head predicts masks at
    feature resolution, so the latent's side (``size // 8``) loses nothing there and is 64× cheaper."""

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"transform.size must be >= 8 pixels, got {self.size}")
        if not self.min_box_size > 0:
            raise ValueError(f"transform.min_box_size must be > 0 pixels, got {self.min_box_size}")
        if self.mask_size is not None and not 1 <= self.mask_size <= self.size:
            raise ValueError(
                f"transform.mask_size must be in [1, size={self.size}] or null, got {self.mask_size}"
            )


def record_layout(
    record: ImageRecord, categories: Mapping[int, Category], names: Mapping[int, str]
) -> Layout:
    """The layout of a COCO image record, without masks.

    Args:
        record: the image record.
        categories: categories by id.
        names: prompt class name by category id.
    """
    objects = []
    for ann in record.annotations:
        cat = categories[ann.category_id]
        objects.append(
            LayoutObject.from_pixels(
                names[ann.category_id],
                ann.box,
                record.width,
                record.height,
                attribute=ann.attribute,
                category_id=ann.category_id,
                is_stuff=cat.is_stuff,
                annotation_id=ann.id,
            )
        )
    return Layout(tuple(objects), record.width, record.height, record.id)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)``, so an example's randomness is a function of (seed, epoch, index).

    That keeps augmentation and prompt order the same whatever the number of workers. The
    epoch is, in this order: the one given to ``set_epoch`` (Lightning calls it on a single
    device), the one ``epoch_source`` returns (the trainer's: under DDP Lightning wraps this
    sampler and sets the wrapper's epoch only, and a resumed run must not restart at 0), or
    else the next on each pass.

    Args:
        size: dataset length.
        shuffle: visit indices in a random order each epoch.
        seed: base seed.
        epoch_source: returns the current epoch, or None when it does not know.
    """

    def __init__(
        self, size: int, shuffle: bool, seed: int, epoch_source: Callable[[], int | None] | None = None
    ) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.epoch_source = epoch_source
        self.epoch = 0
        self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._epoch_set = True

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        source = self.epoch_source() if self.epoch_source is not None and not self._epoch_set else None
        epoch = self.epoch if source is None else source
        if not self._epoch_set:
            self.epoch = epoch + 1
        self._epoch_set = False
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(self.size)
            if self.shuffle
            else range(self.size)
        )
        return iter([(int(i), epoch) for i in order])


class LayoutDataset(Dataset):
    """Images of a COCO-format dataset with their layouts, prompts and masks.

    Args:
        coco: the dataset read by ``read_coco``.
        tokenizer: turns layouts into token ids.
        transform: output geometry.
        train: random object order, flips, random crops and prompt dropout (else deterministic).
        empty_prompt_prob: training only: share of examples whose prompt is replaced by ``""``
            (for classifier-free guidance).
        seed: base seed of per-example randomness.
    """

    def __init__(
        self,
        coco: CocoLayouts,
        tokenizer: LayoutTokenizer,
        transform: TransformConfig,
        train: bool,
        empty_prompt_prob: float = 0.1,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= empty_prompt_prob <= 1.0:
            raise ValueError(f"empty_prompt_prob must be in [0, 1], got {empty_prompt_prob}")
        self.coco = coco
        self.tokenizer = tokenizer
        self.transform = transform
        self.train = train
        self.empty_prompt_prob = empty_prompt_prob if train else 0.0
        self.seed = seed
        #: Prompt class name of each category id.
        self.names = {cid: tokenizer.builder.class_name(cat.name) for cid, cat in coco.categories.items()}
        self.is_stuff = {cid: cat.is_stuff for cid, cat in coco.categories.items()}
        #: Contiguous label of each category id (``labels`` in batches), in id order.
        self.label_of = {cid: i for i, cid in enumerate(sorted(coco.categories))}
        self.empty_ids = tokenizer.encode_text("")

    def __len__(self) -> int:
        return len(self.coco.images)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([self.seed, epoch, index])
        record = self.coco.images[index]
        image = load_rgb(record.path, record.id)
        if image.shape[:2] != (record.height, record.width):
            raise ValueError(
                f"{record.path} (image id {record.id}): the image is {image.shape[1]}x{image.shape[0]}, "
                f"the annotations say {record.width}x{record.height}"
            )
        t = self.transform
        geometry = plan_geometry(
            record.width,
            record.height,
            t.size,
            t.resize,
            random_crop=self.train and t.random_crop,
            flip=self.train and t.hflip and bool(rng.random() < 0.5),
            rng=rng,
        )
        pixels = to_model_range(geometry.image(torch.from_numpy(image).permute(2, 0, 1)))

        # Geometry first: objects cropped out of the image must not be in the prompt.
        anns = record.annotations
        boxes = geometry.boxes(np.asarray([a.box for a in anns]).reshape(-1, 4))
        visible = ((boxes[:, 2] - boxes[:, 0]) >= t.min_box_size) & (
            (boxes[:, 3] - boxes[:, 1]) >= t.min_box_size
        )
        order = np.flatnonzero(visible)
        if self.train:
            order = rng.permutation(order)
        size = np.asarray([t.size] * 4, dtype=np.float64)
        objects = [
            LayoutObject(
                self.names[anns[i].category_id],
                tuple(boxes[i] / size),
                anns[i].attribute,
                anns[i].category_id,
                self.is_stuff[anns[i].category_id],
                annotation_id=anns[i].id,
            )
            for i in order
        ]
        out_layout = Layout(tuple(objects), t.size, t.size, record.id)
        encoded = self.tokenizer.encode(out_layout)
        keep = order[list(encoded.kept)]
        prompt_dropped = bool(rng.random() < self.empty_prompt_prob)
        mask_size = t.mask_size or t.size
        masks = geometry.masks(
            [anns[i].segmentation for i in keep],
            np.asarray([anns[i].box for i in keep]).reshape(-1, 4),
            (mask_size, mask_size),
        )
        return {
            "pixel_values": pixels,
            "input_ids": torch.from_numpy(self.empty_ids if prompt_dropped else encoded.input_ids),
            "object_index": torch.from_numpy(
                np.full_like(self.empty_ids, -1) if prompt_dropped else encoded.object_index
            ),
            "prompt": "" if prompt_dropped else encoded.prompt,
            "prompt_dropped": prompt_dropped,
            "boxes": torch.from_numpy((boxes[keep] / size).astype(np.float32)).reshape(-1, 4),
            "labels": torch.as_tensor([self.label_of[anns[i].category_id] for i in keep], dtype=torch.long),
            "attributes": torch.as_tensor(
                [ATTRIBUTE_CODES[objects[j].attribute] for j in encoded.kept], dtype=torch.long
            ),
            "is_stuff": torch.as_tensor([self.is_stuff[anns[i].category_id] for i in keep], dtype=torch.bool),
            "masks": torch.from_numpy(masks),
            "mask_is_box": torch.as_tensor([anns[i].segmentation is None for i in keep], dtype=torch.bool),
            "image_id": record.id,
            "objects_cropped_out": int((~visible).sum()),
            "objects_dropped": encoded.dropped,
        }


def _shared_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Zeros; inside a DataLoader worker in shared memory, so the batch reaches the main process
    without another copy (what ``default_collate`` does for the tensors it stacks)."""
    if get_worker_info() is None:
        return torch.zeros(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.tensor([], dtype=dtype).set_(storage).view(shape).zero_()


def collate_layouts(examples: Sequence[dict[str, Any]], empty_window: np.ndarray) -> dict[str, Any]:
    """Stack examples into a batch, padding objects and prompt windows.

    Objects pad to the batch's largest count (``object_mask`` marks real ones; ``labels`` and
    ``attributes`` pad with -1). Prompts pad to the batch's largest number of windows with
    empty-prompt windows, as long-prompt encoders do for the unconditional branch;
    ``num_windows`` keeps each example's own count.
    """
    window = len(empty_window)
    n = max(len(e["labels"]) for e in examples)
    w = max(len(e["input_ids"]) // window for e in examples)
    b = len(examples)
    mask_size = examples[0]["masks"].shape[-2:]
    batch: dict[str, Any] = {
        "pixel_values": default_collate([e["pixel_values"] for e in examples]),
        "input_ids": torch.from_numpy(np.tile(empty_window, (b, w))),
        "object_index": torch.full((b, w * window), -1, dtype=torch.long),
        "num_windows": torch.as_tensor([len(e["input_ids"]) // window for e in examples]),
        "boxes": torch.zeros(b, n, 4),
        "labels": torch.full((b, n), -1, dtype=torch.long),
        "attributes": torch.full((b, n), -1, dtype=torch.long),
        "is_stuff": torch.zeros(b, n, dtype=torch.bool),
        "masks": _shared_zeros((b, n, *mask_size), torch.bool),
        "mask_is_box": torch.zeros(b, n, dtype=torch.bool),
        "object_mask": torch.zeros(b, n, dtype=torch.bool),
        "prompt_dropped": torch.as_tensor([e["prompt_dropped"] for e in examples]),
        "prompts": [e["prompt"] for e in examples],
        "image_ids": torch.as_tensor([e["image_id"] for e in examples]),
        "objects_cropped_out": sum(e["objects_cropped_out"] for e in examples),
        "objects_dropped": sum(e["objects_dropped"] for e in examples),
    }
    for i, e in enumerate(examples):
        k, length = len(e["labels"]), len(e["input_ids"])
        batch["input_ids"][i, :length] = e["input_ids"]
        batch["object_index"][i, :length] = e["object_index"]
        for key in ("boxes", "labels", "attributes", "is_stuff", "masks", "mask_is_box"):
            batch[key][i, :k] = e[key]
        batch["object_mask"][i, :k] = True
    return batch
