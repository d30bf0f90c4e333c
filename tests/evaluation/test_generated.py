"""Scoring a dataset on disk against its own boxes: YOLO score, placement, confidence, FID."""

import json
from pathlib import Path

import pytest

from detdiffusion.data.coco import read_coco
from detdiffusion.data.shapes import shapes_paths
from detdiffusion.detectors.running import load_image
from detdiffusion.evaluation import FID
from detdiffusion.evaluation.generated import score_generated
from tests.detectors.fakes import EmptyDetector, GroundTruthDetector
from tests.evaluation.test_fid import TinyFeatures


def test_ground_truth_scores_perfectly_and_nothing_scores_zero(shapes_dir: Path) -> None:
    val = shapes_paths(shapes_dir)["val"]
    data = json.loads(val.annotations.read_text())
    things = {c["id"] for c in data["categories"] if c["isthing"]}
    n_things = sum(a["category_id"] in things for a in data["annotations"])

    truth = GroundTruthDetector(str(val.annotations), score=0.7)
    perfect = score_generated(val.annotations, truth, val.images)
    assert perfect.images == len(data["images"]) and perfect.objects == n_things  # stuff is not scored
    assert perfect.yolo_map == pytest.approx(1.0) and perfect.miou == pytest.approx(1.0)
    assert perfect.hit50 == 1.0 and perfect.confidence == pytest.approx(0.7)
    assert {o["category_id"] for o in perfect.per_object} <= things

    empty = score_generated(val.annotations, EmptyDetector(sorted(things)), val.images, progress=False)
    assert (empty.yolo_map, empty.miou, empty.hit50, empty.confidence) == (0.0, 0.0, 0.0, 0.0)
    assert "per_object" not in empty.as_dict()


def test_fid_of_the_set_against_itself_is_near_zero(shapes_dir: Path) -> None:
    val = shapes_paths(shapes_dir)["val"]
    fid = FID(feature_extractor=TinyFeatures(), image_size=64)
    for record in read_coco(val.annotations, val.images).images:
        fid.update(load_image(record)[None], real=True)
    score = score_generated(val.annotations, GroundTruthDetector(str(val.annotations)), val.images, fid=fid)
    assert score.fid == pytest.approx(0.0, abs=1e-2)
    again = score_generated(val.annotations, GroundTruthDetector(str(val.annotations)), val.images, fid=fid)
    assert again.fid == pytest.approx(score.fid, abs=1e-6)  # the real side stays, the fake side is reset


def test_a_detector_backbone_is_a_feature_extractor() -> None:
    import torch

    from detdiffusion.detectors import TorchvisionDetector
    from detdiffusion.evaluation.fid import DetectorFeatures

    detector = TorchvisionDetector("fasterrcnn_small", category_ids=[1, 2], min_size=64, max_size=64)
    features = DetectorFeatures(detector.model)
    out = features(torch.rand(3, 3, 64, 64))
    assert out.shape == (3, 4 * 64)  # 3 FPN levels + the pooled extra level, 64 channels each
    fid = FID(feature_extractor=features, extractor_name="shapes detector backbone", image_size=64)
    fid.update(torch.rand(4, 3, 64, 64), real=True)
    fid.update(torch.rand(4, 3, 64, 64), real=False)
    assert torch.isfinite(fid.compute()) and fid.record["extractor"] == "shapes detector backbone"
