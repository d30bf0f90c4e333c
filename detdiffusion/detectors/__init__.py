"""Object detectors: the interface the attributes, YOLO score and trainability runs use."""

from detdiffusion.detectors.base import Detections, Detector, LabelMap
from detdiffusion.detectors.results import CocoResultsDetector
from detdiffusion.detectors.torchvision import TorchvisionDetector, detect_dataset

__all__ = [
    "CocoResultsDetector",
    "Detections",
    "Detector",
    "LabelMap",
    "TorchvisionDetector",
    "detect_dataset",
]
