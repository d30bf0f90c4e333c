"""Filters of synthetic data before a detector trains on it (Gen2Det).

Instance level: a synthetic annotation is kept when a detector trained on real data finds it: a
detection of its class with score >= 0.1 and IoU >= 0.3. Objects of classes the detector does not
know, and what ``read_coco`` skips (crowd, invalid boxes), are kept untouched.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from detdiffusion.data.coco import KEEP_ALL, read_coco
from detdiffusion.detectors.attributes import detected
from detdiffusion.detectors.base import Detector
from detdiffusion.detectors.running import detector_description, iter_detections
from detdiffusion.files import write_json_atomic

__all__ = ["InstanceFilterReport", "filter_instances"]

log = logging.getLogger(__name__)


@dataclass
class InstanceFilterReport:
    """What ``filter_instances`` did."""

    min_score: float
    min_iou: float
    images: int = 0
    judged: int = 0
    """Annotations of classes the detector knows."""
    dropped: int = 0
    dropped_per_class: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def filter_instances(
    annotations: str | Path,
    out: str | Path,
    detector: Detector,
    images: str | Path | None = None,
    min_score: float = 0.1,
    min_iou: float = 0.3,
    batch_size: int | None = None,
    progress: bool = True,
) -> InstanceFilterReport:
    """Write ``annotations`` without the synthetic objects ``detector`` does not find.

    Args:
        annotations: a synthetic COCO JSON (``detdiffusion predict``'s ``annotations.json``).
        out: the filtered JSON (written atomically; the input is untouched).
        detector: a detector trained on real data.
        images: the image folder (None: the JSON's folder).
        min_score: detections scoring below this do not count.
        min_iou: a detection of the object's class must overlap it at least this much.
        batch_size: images a ``detect`` call (None: the detector's).
        progress: show a progress bar.
    """
    annotations, out = Path(annotations).expanduser(), Path(out).expanduser()
    if annotations.resolve() == out.resolve():
        raise ValueError(f"--out {out} is the input file: write the filtered dataset elsewhere")
    coco = read_coco(annotations, images or annotations.parent, filters=KEEP_ALL)
    known = frozenset(int(c) for c in detector.detectable)
    report = InstanceFilterReport(min_score, min_iou)
    dropped: set[int] = set()
    per_class: Counter[str] = Counter()
    for record, dets in iter_detections(detector, coco.images, batch_size, progress, desc="filtering"):
        report.images += 1
        judged = [a for a in record.annotations if a.category_id in known and not a.iscrowd]
        if not judged:
            continue
        boxes = torch.tensor([a.box for a in judged], dtype=torch.float64)
        labels = torch.tensor([a.category_id for a in judged])
        found = detected(boxes, labels, dets, min_score, min_iou, strict=False)
        report.judged += len(judged)
        for ann, ok in zip(judged, found.tolist(), strict=True):
            if not ok:
                dropped.add(ann.id)
                per_class[coco.categories[ann.category_id].name] += 1
    report.dropped = len(dropped)
    report.dropped_per_class = dict(sorted(per_class.items()))
    data = json.loads(annotations.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["id"] not in dropped]
    data.setdefault("info", {})["instance_filter"] = {
        "detector": detector_description(detector),
        "source": annotations.name,
        **report.as_dict(),
    }
    write_json_atomic(data, out)
    log.info(
        "kept %d of %d judged synthetic objects; wrote %s", report.judged - report.dropped, report.judged, out
    )
    return report
