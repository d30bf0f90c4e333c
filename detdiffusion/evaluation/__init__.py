"""Evaluation: fidelity of generated images (FID; YOLO score against the layouts that made them)."""

from detdiffusion.evaluation.fid import FID
from detdiffusion.evaluation.filters import InstanceFilterReport, filter_instances
from detdiffusion.evaluation.yolo_score import YOLOScore

__all__ = ["FID", "InstanceFilterReport", "YOLOScore", "filter_instances"]
