"""Evaluation: fidelity of generated images (YOLO score) against the layouts that made them."""

from detdiffusion.evaluation.yolo_score import YOLOScore

__all__ = ["YOLOScore"]
