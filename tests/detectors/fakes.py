"""Detectors for tests: ground truth read from a COCO JSON, and one that finds nothing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from detdiffusion.detectors.base import Detections, Detector


def _empty() -> Detections:
    return {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }


class GroundTruthDetector(Detector):
    """Returns each image's ground-truth thing boxes (``isthing`` not 0) with score ``score``.

    Args:
        annotations: COCO JSON whose boxes are "detected".
        score: the score of every detection.
    """

    def __init__(self, annotations: str, score: float = 1.0) -> None:
        data = json.loads(Path(annotations).read_text())
        self._things = frozenset(int(c["id"]) for c in data["categories"] if c.get("isthing", 1))
        self._boxes: dict[int, list[tuple[list[float], int]]] = {}
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            if ann["category_id"] in self._things:
                self._boxes.setdefault(ann["image_id"], []).append(([x, y, x + w, y + h], ann["category_id"]))
        self.score = score

    def __repr__(self) -> str:
        return f"GroundTruthDetector(score={self.score})"

    @property
    def detectable(self) -> frozenset[int]:
        return self._things

    def detect(self, images: Sequence[torch.Tensor], image_ids: Sequence[int]) -> list[Detections]:
        out = []
        for image_id in image_ids:
            found = self._boxes.get(int(image_id), [])
            if not found:
                out.append(_empty())
                continue
            out.append(
                {
                    "boxes": torch.tensor([b for b, _ in found], dtype=torch.float32),
                    "scores": torch.full((len(found),), self.score),
                    "labels": torch.tensor([c for _, c in found], dtype=torch.int64),
                }
            )
        return out


class EmptyDetector(Detector):
    """Knows the classes ``detectable`` and never finds anything."""

    def __init__(self, detectable: Sequence[int]) -> None:
        self._detectable = frozenset(int(c) for c in detectable)

    def __repr__(self) -> str:
        return f"EmptyDetector({sorted(self._detectable)})"

    @property
    def detectable(self) -> frozenset[int]:
        return self._detectable

    def detect(self, images: Sequence[torch.Tensor], image_ids: Sequence[int]) -> list[Detections]:
        return [_empty() for _ in image_ids]
