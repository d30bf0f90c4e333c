"""YOLO score: how well a detector finds, in generated images, the objects their layouts asked for.

A pretrained detector runs on the generated images; its detections are scored with COCO mAP /
AP50 / AP75 (torchmetrics ``MeanAveragePrecision``) against the layout boxes that conditioned
them (DetDiffusion, GeoDiffusion, LAMA: 80 COCO thing classes with a YOLOv4 detector, hence
the name). Objects of classes outside the scored set (stuff, classes the detector does not know,
or outside ``class_ids``) are left out of both sides and counted.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.detection import MeanAveragePrecision

from detdiffusion.detectors.base import Detections, Detector
from detdiffusion.layout.types import Layout

__all__ = ["YOLOScore", "map_backend"]


def map_backend() -> str:
    """torchmetrics' COCO evaluation backend: ``faster_coco_eval`` when installed, else ``pycocotools``."""
    import importlib.util

    return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"


class YOLOScore(Metric):
    """COCO mAP of ``detector`` on generated images against their layouts.

    Args:
        detector: any ``Detector`` (its labels are the layouts' category ids).
        class_ids: score only these category ids (e.g. COCO's 80 thing classes); None: every
            class the detector can detect.
        backend: torchmetrics' COCO backend (default: ``faster_coco_eval`` when installed, else
            ``pycocotools``).
        kwargs: ``torchmetrics.Metric`` arguments (``dist_sync_on_step``, …).

    ``update(images, layouts)``: images ``(B, 3, H, W)`` (or a list of ``(3, H, W)``) in [0, 1],
    and the layout each was generated from (normalised boxes, ``category_id`` set).
    ``compute()``: ``{"map", "map_50", "map_75", "map_per_class", "classes", "scored_objects",
    "excluded_objects"}``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        detector: Detector,
        class_ids: Collection[int] | None = None,
        backend: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.detector = detector
        detectable = frozenset(int(c) for c in detector.detectable)
        self.scored = detectable if class_ids is None else detectable & {int(c) for c in class_ids}
        if not self.scored:
            raise ValueError(
                f"no class to score: the detector detects {sorted(detectable)}, class_ids are "
                f"{sorted(class_ids) if class_ids is not None else None}"
            )
        self.mean_ap = MeanAveragePrecision(
            box_format="xyxy", iou_type="bbox", class_metrics=True, backend=backend or map_backend()
        )
        self.add_state("scored_objects", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("excluded_objects", torch.tensor(0), dist_reduce_fx="sum")

    def update(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        layouts: Sequence[Layout],
        image_ids: Sequence[int] | None = None,
    ) -> None:
        images = list(images)
        if len(images) != len(layouts):
            raise ValueError(f"got {len(images)} images for {len(layouts)} layouts")
        if image_ids is None:
            image_ids = [i if lay.image_id is None else lay.image_id for i, lay in enumerate(layouts)]
        detections = self.detector.detect(images, list(image_ids))
        self.update_detections(detections, layouts, [tuple(image.shape[-2:]) for image in images])

    def update_detections(
        self, detections: Sequence[Detections], layouts: Sequence[Layout], sizes: Sequence[tuple[int, int]]
    ) -> None:
        """``update`` with the detector already run: its detections of each image, of ``(H, W)`` pixels."""
        if not len(detections) == len(layouts) == len(sizes):
            raise ValueError(f"got {len(detections)} detections, {len(layouts)} layouts, {len(sizes)} sizes")
        scored = torch.tensor(sorted(self.scored))
        preds, targets = [], []
        for (height, width), layout, dets in zip(sizes, layouts, detections, strict=True):
            keep = [o.category_id in self.scored for o in layout.objects]
            if any(o.category_id is None for o in layout.objects):
                raise ValueError(f"layout {layout.image_id}: objects need category_id for the YOLO score")
            self.scored_objects += sum(keep)
            self.excluded_objects += len(keep) - sum(keep)
            # Layout boxes are normalised: in pixels of the image as generated.
            objects = [o for o, k in zip(layout.objects, keep, strict=True) if k]
            boxes = torch.tensor([o.pixel_box(width, height) for o in objects], dtype=torch.float32).reshape(
                -1, 4
            )
            targets.append(
                {"boxes": boxes, "labels": torch.tensor([o.category_id for o in objects], dtype=torch.int64)}
            )
            mine = torch.isin(dets["labels"].cpu(), scored)
            preds.append({k: dets[k].cpu()[mine] for k in ("boxes", "scores", "labels")})
        self.mean_ap.update(preds, targets)

    def compute(self) -> dict[str, torch.Tensor]:
        result = self.mean_ap.compute()
        return {
            "map": result["map"],
            "map_50": result["map_50"],
            "map_75": result["map_75"],
            "map_per_class": result["map_per_class"],
            "classes": result["classes"],
            "scored_objects": self.scored_objects,
            "excluded_objects": self.excluded_objects,
        }

    def reset(self) -> None:
        super().reset()
        self.mean_ap.reset()
