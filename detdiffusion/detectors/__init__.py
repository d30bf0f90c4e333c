"""Object detectors: the interface the attributes, YOLO score and trainability runs use."""

from detdiffusion.detectors.base import Detections, Detector, LabelMap

__all__ = ["Detections", "Detector", "LabelMap"]
