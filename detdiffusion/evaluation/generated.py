"""Scoring a generated dataset on disk against the layouts that made it.

One detector pass gives the YOLO score and, per layout object, where the image put it: the best
IoU of a same-class detection (its mean is ``miou``, the share at ≥ 0.5 is ``hit50``) and the
detector's confidence (the best score of a same-class detection at IoU ≥ 0.5, 0 when none; its
mean over ``easy`` and ``hard`` generations of the same layouts is DetDiffusion's attribute
check). With a ``FID`` holding real statistics, the images are also scored for FID.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import box_iou

from detdiffusion.data.coco import KEEP_ALL, read_coco
from detdiffusion.data.dataset import record_layout
from detdiffusion.detectors.base import Detector
from detdiffusion.detectors.running import iter_detections, load_image
from detdiffusion.evaluation.fid import FID
from detdiffusion.evaluation.yolo_score import YOLOScore

__all__ = ["GeneratedScore", "score_generated"]

log = logging.getLogger(__name__)


@dataclass
class GeneratedScore:
    """What ``score_generated`` measured."""

    annotations: str
    images: int
    objects: int
    """Layout objects scored (classes the detector knows, within ``class_ids``)."""
    yolo_map: float
    yolo_map50: float
    yolo_map75: float
    miou: float
    hit50: float
    confidence: float
    fid: float | None = None
    per_object: list[dict[str, Any]] = field(default_factory=list, repr=False)
    """``{image_id, source_image_id, source_annotation_id, category_id, attribute, iou, confidence}``."""

    def as_dict(self, per_object: bool = False) -> dict[str, Any]:
        out = dict(self.__dict__)
        if not per_object:
            out.pop("per_object")
        return out


def score_generated(
    annotations: str | Path,
    detector: Detector,
    images: str | Path | None = None,
    class_ids: Collection[int] | None = None,
    fid: FID | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> GeneratedScore:
    """Run ``detector`` over a generated COCO dataset and score it against its own boxes.

    Args:
        annotations: the dataset's COCO JSON (``detdiffusion predict``'s ``annotations.json``).
        detector: a detector of the dataset's categories (e.g. trained on the real data).
        images: the image folder (None: the JSON's folder).
        class_ids: score only these category ids (None: every class the detector knows).
        fid: a ``FID`` whose real statistics are in place; the generated images are added as the
            fake side and the score computed, then the fake side reset (``FID`` keeps the real side
            for the next dataset).
        batch_size: images a ``detect`` call (None: the detector's).
        progress: show a progress bar.
    """
    annotations = Path(annotations).expanduser()
    coco = read_coco(annotations, images or annotations.parent, filters=KEEP_ALL)
    if not len(coco):
        raise ValueError(f"{annotations}: has no images to score")
    image_source, annotation_source = _source_ids(annotations)
    names = {cid: c.name for cid, c in coco.categories.items()}
    yolo = YOLOScore(detector, class_ids)
    per_object: list[dict[str, Any]] = []
    desc = f"scoring {annotations.parent.name}"
    for record, dets in iter_detections(detector, coco.images, batch_size, progress, desc=desc):
        layout = record_layout(record, coco.categories, names)
        yolo.update_detections([dets], [layout], [(record.height, record.width)])
        if fid is not None:
            fid.update(load_image(record)[None], real=False)
        objects = [a for a in record.annotations if a.category_id in yolo.scored]
        if not objects:
            continue
        gt = torch.tensor([a.box for a in objects], dtype=torch.float64)
        same = torch.tensor([a.category_id for a in objects])[:, None] == dets["labels"].cpu()[None, :]
        iou = box_iou(gt, dets["boxes"].cpu().to(torch.float64)) * same  # (objects, detections)
        best_iou = iou.max(dim=1).values if iou.shape[1] else torch.zeros(len(objects), dtype=torch.float64)
        scores = dets["scores"].cpu().to(torch.float64)[None, :].expand_as(iou)
        confident = torch.where(iou >= 0.5, scores, torch.zeros_like(scores))
        confidence = confident.max(dim=1).values if iou.shape[1] else best_iou * 0
        for a, i, c in zip(objects, best_iou.tolist(), confidence.tolist(), strict=True):
            per_object.append(
                {
                    "image_id": record.id,
                    "source_image_id": image_source.get(record.id),
                    "source_annotation_id": annotation_source.get(a.id),
                    "category_id": a.category_id,
                    "attribute": a.attribute.value,
                    "iou": i,
                    "confidence": c,
                }
            )
    result = yolo.compute()
    n = max(len(per_object), 1)
    score = GeneratedScore(
        annotations=str(annotations),
        images=len(coco),
        objects=len(per_object),
        yolo_map=float(result["map"]),
        yolo_map50=float(result["map_50"]),
        yolo_map75=float(result["map_75"]),
        miou=sum(o["iou"] for o in per_object) / n,
        hit50=sum(o["iou"] >= 0.5 for o in per_object) / n,
        confidence=sum(o["confidence"] for o in per_object) / n,
        per_object=per_object,
    )
    if fid is not None:
        score.fid = float(fid.compute())
        fid.reset()
    log.info(
        "%s: YOLO mAP %.3f (AP50 %.3f), mIoU %.3f, hit@0.5 %.3f, confidence %.3f%s",
        annotations,
        score.yolo_map,
        score.yolo_map50,
        score.miou,
        score.hit50,
        score.confidence,
        "" if score.fid is None else f", FID {score.fid:.2f}",
    )
    return score


def _source_ids(path: Path) -> tuple[dict[int, int], dict[int, int]]:
    """``{image id: source_image_id}`` and ``{annotation id: source_annotation_id}``: a generated
    dataset's links to the layouts it was made from (empty for other datasets)."""
    data = json.loads(path.read_text())
    images = {im["id"]: im["source_image_id"] for im in data.get("images", []) if "source_image_id" in im}
    annotations = {
        a["id"]: a["source_annotation_id"] for a in data.get("annotations", []) if "source_annotation_id" in a
    }
    return images, annotations
