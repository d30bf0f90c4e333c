"""TorchvisionDetector: built offline at random, labels in dataset ids, weights from files; detect_dataset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detdiffusion.data.coco import FilterConfig, read_coco
from detdiffusion.data.shapes import SHAPES_FILTERS, shapes_paths
from detdiffusion.detectors import LabelMap, TorchvisionDetector, detect_dataset

#: The quickest architecture on a CPU, for everything but the per-architecture test.
SMALL = "fasterrcnn_small"


def _detector(architecture: str = SMALL, **kwargs) -> TorchvisionDetector:
    kwargs.setdefault("category_ids", [7, 11, 42])
    return TorchvisionDetector(
        architecture, min_size=64, max_size=64, score_threshold=0.0, device="cpu", **kwargs
    )


def _images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, 64, 64, generator=generator), torch.rand(3, 48, 64, generator=generator)]


def _check(detections: dict[str, torch.Tensor], allowed: set[int]) -> None:
    assert set(detections) == {"boxes", "scores", "labels"}
    boxes, scores, labels = detections["boxes"], detections["scores"], detections["labels"]
    assert boxes.dtype == scores.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert {t.device.type for t in (boxes, scores, labels)} == {"cpu"}
    assert boxes.shape == (len(scores), 4) and labels.shape == scores.shape
    assert set(labels.tolist()) <= allowed


ARCHITECTURES = [
    "fasterrcnn_small",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "retinanet_resnet50_fpn",
    "fcos_resnet50_fpn",
]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_builds_offline(architecture: str) -> None:
    detector = _detector(architecture)

    assert isinstance(detector.model, torch.nn.Module) and not detector.model.training
    assert detector.num_classes == 4
    assert detector.detectable == {7, 11, 42}


# One per post-processing family (their score threshold arguments differ); the small Faster
# R-CNN runs in the tests below. The v2 Faster R-CNN is slow on a CPU and shares the family.
@pytest.mark.parametrize(
    "architecture", ["fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn"]
)
def test_detects_in_dataset_ids(architecture: str) -> None:
    detector = _detector(architecture, batch_size=1)

    out = detector.detect(_images(), [1, 2])

    assert len(out) == 2
    for detections in out:
        _check(detections, {7, 11, 42})
    assert len(out[0]["labels"]) > 0  # score_threshold 0 keeps the random model's guesses


def test_label_map_drops_unmapped_labels() -> None:
    detector = _detector()
    full = detector.detect(_images(), [1, 2])

    detector.label_map = LabelMap({1: 7})
    partial = detector.detect(_images(), [1, 2])

    assert detector.detectable == {7}
    for f, p in zip(full, partial, strict=True):
        keep = f["labels"] == 7
        _check(p, {7})
        torch.testing.assert_close(p["boxes"], f["boxes"][keep])
        torch.testing.assert_close(p["scores"], f["scores"][keep])


def test_explicit_label_map_needs_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes is required"):
        _detector(category_ids=None, label_map={1: 5})
    detector = _detector(category_ids=None, label_map={1: 5, 3: 9}, num_classes=91)
    assert detector.num_classes == 91 and detector.detectable == {5, 9}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_map": {1: 7}}, "exactly one of category_ids and label_map"),
        ({"category_ids": None}, "exactly one of category_ids and label_map"),
        ({"category_ids": None, "label_map": {0: 7}, "num_classes": 4}, r"labels \[0\] are outside 1..3"),
        ({"category_ids": [1, 2, 3], "num_classes": 3}, r"labels \[3\] are outside 1..2"),
        ({"category_ids": [1, 1]}, "duplicates"),
        ({"architecture": "yolo"}, "architecture must be one of"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _detector(**kwargs)


def test_rejects_images_of_the_wrong_shape() -> None:
    detector = _detector()
    with pytest.raises(ValueError, match=r"image id 5: expected a \(3, H, W\) float image"):
        detector.detect([torch.rand(1, 64, 64)], [5])
    with pytest.raises(ValueError, match="2 images but 1 image ids"):
        detector.detect(_images(), [5])


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], msg=key)


def test_weights_round_trip_state_dict(tmp_path: Path) -> None:
    source = _detector()
    path = tmp_path / "detector.pth"
    torch.save(source.model.state_dict(), path)

    loaded = _detector(weights=str(path))

    _assert_same_weights(source.model, loaded.model)
    for a, b in zip(source.detect(_images(), [1, 2]), loaded.detect(_images(), [1, 2]), strict=True):
        torch.testing.assert_close(a, b)


def test_weights_round_trip_lightning_checkpoint(tmp_path: Path) -> None:
    source = _detector()
    state = {f"model.{k}": v for k, v in source.model.state_dict().items()}
    state["val_map.total"] = torch.zeros(())  # a metric's state: not the detector's
    path = tmp_path / "epoch=3.ckpt"
    torch.save({"epoch": 3, "state_dict": state, "hyper_parameters": {"lr": 0.01}}, path)

    loaded = _detector(weights=path)

    _assert_same_weights(source.model, loaded.model)


@pytest.mark.parametrize(
    ("architecture", "key", "shape", "found"),
    [
        (SMALL, "roi_heads.box_predictor.cls_score.weight", (6, 1024), 6),
        ("retinanet_resnet50_fpn", "head.classification_head.cls_logits.weight", (9 * 81, 256, 3, 3), 81),
        ("fcos_resnet50_fpn", "head.classification_head.cls_logits.weight", (91, 256, 3, 3), 91),
    ],
)
def test_weights_for_another_class_count(
    tmp_path: Path, architecture: str, key: str, shape: tuple[int, ...], found: int
) -> None:
    path = tmp_path / "other.pth"
    torch.save({key: torch.zeros(shape)}, path)

    with pytest.raises(
        ValueError, match=f"{re.escape(str(path))}: weights are for {found} classes.*num_classes=4"
    ):
        _detector(architecture, weights=path)


def test_weights_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match=r"has no 'roi_heads\.box_predictor\.cls_score\.weight'"):
        _detector(weights=path)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        _detector(weights=tmp_path / "missing.pth")


def test_detect_dataset_on_shapes(shapes_dir: Path) -> None:
    paths = shapes_paths(shapes_dir)["val"]
    coco = read_coco(paths.annotations, paths.images, filters=SHAPES_FILTERS)
    things = sorted(c.id for c in coco.categories.values() if not c.is_stuff)
    detector = _detector(category_ids=things, batch_size=4)

    results = detect_dataset(detector, coco, progress=False)

    assert list(results) == [r.id for r in coco.images]
    for detections in results.values():
        _check(detections, set(things))


def test_detect_dataset_checks_image_size(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(images / "a.png")
    ann = tmp_path / "instances.json"
    coco_json = {
        "images": [{"id": 17, "file_name": "a.png", "width": 40, "height": 32}],
        "annotations": [],
        "categories": [{"id": 1, "name": "circle"}],
    }
    ann.write_text(json.dumps(coco_json))
    coco = read_coco(ann, images, filters=FilterConfig(min_object_area=0.0, min_objects=0, max_objects=None))

    with pytest.raises(
        ValueError, match=r"a\.png \(image id 17\): the file is 32x32 but the annotations give 40x32"
    ):
        detect_dataset(_detector(category_ids=[1]), coco, progress=False)
