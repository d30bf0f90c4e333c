"""The ``Detector`` interface: images in, detections in the dataset's category space out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Detections", "Detector", "LabelMap"]

#: One image's detections, torchmetrics' format: ``boxes`` ``(N, 4)`` float xyxy in pixels,
#: ``scores`` ``(N,)`` float, ``labels`` ``(N,)`` int64 dataset category ids.
Detections = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LabelMap:
    """Detector class index → dataset category id.

    Args:
        to_dataset: ``{detector label: dataset category id}``; detector labels not in it are
            classes the dataset does not have (their detections are dropped).
    """

    to_dataset: Mapping[int, int]

    @classmethod
    def identity(cls, category_ids: Sequence[int]) -> LabelMap:
        """Detector label ``i + 1`` is ``category_ids[i]`` (torchvision: label 0 is background)."""
        return cls({i + 1: int(c) for i, c in enumerate(category_ids)})

    @property
    def detectable(self) -> frozenset[int]:
        """Dataset category ids the detector can report."""
        return frozenset(int(c) for c in self.to_dataset.values())

    def apply(self, detections: Detections) -> Detections:
        """``detections`` with labels mapped to dataset ids; unmapped classes dropped."""
        labels = detections["labels"]
        if not len(labels):
            return {**detections, "labels": labels.to(torch.int64)}
        size = max(int(labels.max()), max(self.to_dataset, default=0)) + 1
        table = torch.full((size,), -1, dtype=torch.int64, device=labels.device)
        for k, v in self.to_dataset.items():
            table[k] = v
        mapped = table[labels.long()]
        keep = mapped >= 0
        boxes, scores = detections["boxes"][keep], detections["scores"][keep]
        return {"boxes": boxes, "scores": scores, "labels": mapped[keep]}


class Detector(ABC):
    """An object detector seen from the dataset: detections come out in its category ids.

    Implementations: ``TorchvisionDetector`` (in-process), ``CocoResultsDetector`` (detections
    made elsewhere, read from a COCO results JSON).
    """

    #: Whether ``detect`` looks at the pixels (a results file does not: callers skip decoding).
    reads_pixels: bool = True
    #: Images per ``detect`` call that callers use by default.
    batch_size: int = 8

    @property
    @abstractmethod
    def detectable(self) -> frozenset[int]:
        """Dataset category ids this detector can report (others are "background" for attributes)."""

    @abstractmethod
    def detect(self, images: Sequence[torch.Tensor], image_ids: Sequence[int]) -> list[Detections]:
        """Detections of each image.

        Args:
            images: ``(3, H, W)`` float RGB in [0, 1], one per image (sizes may differ).
            image_ids: the dataset's id of each image (a results-file detector reads by id).
        """
