"""Evaluation: fidelity of generated images (FID; YOLO score against the layouts that made them), filters
of synthetic data (Gen2Det's instance and aesthetic filters) and trainability (detector mAP with it)."""

from detdiffusion.evaluation.aesthetic import AestheticScorer, ImageFilterReport, filter_images
from detdiffusion.evaluation.fid import FID
from detdiffusion.evaluation.filters import InstanceFilterReport, filter_instances
from detdiffusion.evaluation.generated import GeneratedScore, score_generated
from detdiffusion.evaluation.trainability import TrainabilityReport, run_trainability
from detdiffusion.evaluation.yolo_score import YOLOScore

__all__ = [
    "FID",
    "AestheticScorer",
    "GeneratedScore",
    "ImageFilterReport",
    "InstanceFilterReport",
    "TrainabilityReport",
    "YOLOScore",
    "filter_images",
    "filter_instances",
    "run_trainability",
    "score_generated",
]
