"""YOLOScore: layouts as ground truth, a detector's detections on the images, COCO mAP."""

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detdiffusion.detectors.base import Detections, Detector
from detdiffusion.evaluation import YOLOScore
from detdiffusion.layout.types import Layout, LayoutObject


class FixedDetector(Detector):
    """Returns preset detections by image id."""

    def __init__(self, detections: dict[int, Detections], detectable: Sequence[int]) -> None:
        self.detections = detections
        self._detectable = frozenset(detectable)

    @property
    def detectable(self) -> frozenset[int]:
        return self._detectable

    def detect(self, images: Sequence[torch.Tensor], image_ids: Sequence[int]) -> list[Detections]:
        empty = {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
        }
        return [self.detections.get(int(i), empty) for i in image_ids]


def _random_case(n_images: int = 6, size: int = 64, seed: int = 0):
    """Layouts of classes 1–3 (plus stuff 9) and noisy detections of them, with a few false ones."""
    rng = np.random.default_rng(seed)
    layouts, detections = [], {}
    for image_id in range(1, n_images + 1):
        objects, boxes, scores, labels = [], [], [], []
        for _ in range(int(rng.integers(1, 5))):
            x0, y0 = rng.uniform(0, 0.6, 2)
            w, h = rng.uniform(0.15, 0.4, 2)
            cid = int(rng.integers(1, 4))
            objects.append(LayoutObject(f"c{cid}", (x0, y0, x0 + w, y0 + h), category_id=cid))
            if rng.random() < 0.8:  # found, with jitter
                jitter = rng.normal(0, 0.03, 4)
                boxes.append((np.array([x0, y0, x0 + w, y0 + h]) + jitter).clip(0, 1) * size)
                scores.append(rng.uniform(0.3, 1.0))
                labels.append(cid if rng.random() < 0.9 else int(rng.integers(1, 4)))
        objects.append(LayoutObject("sky", (0.0, 0.0, 1.0, 0.3), category_id=9, is_stuff=True))
        boxes.append(
            rng.uniform(0, size / 2, 2).tolist() + rng.uniform(size / 2, size, 2).tolist()
        )  # a false one
        scores.append(rng.uniform(0.0, 0.5))
        labels.append(int(rng.integers(1, 4)))
        layouts.append(Layout(tuple(objects), size, size, image_id=image_id))
        detections[image_id] = {
            "boxes": torch.tensor(np.array(boxes), dtype=torch.float32),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
    return layouts, detections


def test_matches_pycocotools_cocoeval(tmp_path: Path) -> None:
    size = 64
    layouts, detections = _random_case(size=size)
    metric = YOLOScore(FixedDetector(detections, [1, 2, 3]), backend="pycocotools")
    metric.update(torch.zeros(len(layouts), 3, size, size), layouts)
    ours = metric.compute()

    # The same data through pycocotools directly: layouts as ground truth in pixels.
    gt = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}
    for lay in layouts:
        gt["images"].append({"id": lay.image_id, "width": size, "height": size})
        for o in lay.objects:
            if o.is_stuff:
                continue
            x0, y0, x1, y1 = o.pixel_box(size, size)
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": lay.image_id,
                    "category_id": o.category_id,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    results = [
        {
            "image_id": i,
            "category_id": int(c),
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "score": float(s),
        }
        for i, d in detections.items()
        for b, s, c in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist(), strict=True)
    ]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    coco = COCO(str(tmp_path / "gt.json"))
    evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    for key, index in (("map", 0), ("map_50", 1), ("map_75", 2)):
        assert float(ours[key]) == pytest.approx(evaluation.stats[index], abs=1e-6), key
    assert 0.0 < float(ours["map"]) < 1.0
    assert int(ours["excluded_objects"]) == len(layouts)  # one stuff object each
    assert int(ours["scored_objects"]) == len(gt["annotations"])


def test_perfect_and_empty_detectors() -> None:
    layouts, _ = _random_case(n_images=3)
    perfect = {
        lay.image_id: {
            "boxes": torch.tensor([o.pixel_box(64, 64) for o in lay.objects if not o.is_stuff]),
            "scores": torch.ones(sum(not o.is_stuff for o in lay.objects)),
            "labels": torch.tensor([o.category_id for o in lay.objects if not o.is_stuff]),
        }
        for lay in layouts
    }
    images = torch.zeros(3, 3, 64, 64)
    metric = YOLOScore(FixedDetector(perfect, [1, 2, 3]))
    metric.update(images, layouts)
    assert float(metric.compute()["map"]) == pytest.approx(1.0)
    metric.reset()
    assert int(metric.scored_objects) == 0
    nothing = YOLOScore(FixedDetector({}, [1, 2, 3]))
    nothing.update(images, layouts)
    assert float(nothing.compute()["map"]) == 0.0


def test_boxes_follow_the_generated_image_size() -> None:
    # A 512 px layout generated at 64 px: its normalised boxes are scored in the image's pixels.
    obj = LayoutObject("c1", (0.25, 0.25, 0.75, 0.75), category_id=1)
    layout = Layout((obj,), 512, 512, image_id=1)
    found = {
        1: {
            "boxes": torch.tensor([[16.0, 16.0, 48.0, 48.0]]),
            "scores": torch.ones(1),
            "labels": torch.tensor([1]),
        }
    }
    metric = YOLOScore(FixedDetector(found, [1]))
    metric.update(torch.zeros(1, 3, 64, 64), [layout])
    assert float(metric.compute()["map"]) == pytest.approx(1.0)


def test_class_subset_and_unknown_classes_are_excluded_and_counted() -> None:
    layouts, detections = _random_case(n_images=4)
    metric = YOLOScore(FixedDetector(detections, [1, 2]), class_ids=[1, 2, 3, 80])
    metric.update(torch.zeros(4, 3, 64, 64), layouts)
    out = metric.compute()
    assert set(out["classes"].tolist()) <= {1, 2}
    total = sum(len(lay) for lay in layouts)
    assert int(out["scored_objects"]) + int(out["excluded_objects"]) == total
    with pytest.raises(ValueError, match="no class to score"):
        YOLOScore(FixedDetector({}, [1, 2]), class_ids=[5])
