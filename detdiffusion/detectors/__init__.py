"""Object detectors: the interface the attributes, YOLO score and trainability runs use."""

from typing import Any

from detdiffusion.detectors.base import Detections, Detector, LabelMap
from detdiffusion.detectors.results import CocoResultsDetector
from detdiffusion.detectors.running import detect_dataset
from detdiffusion.detectors.torchvision import TorchvisionDetector

__all__ = [
    "CocoResultsDetector",
    "DetectionDataModule",
    "Detections",
    "Detector",
    "DetectorModule",
    "LabelMap",
    "TorchvisionDetector",
    "detect_dataset",
]

#: Imported on first use: they need Lightning and torchmetrics, which detecting alone does not.
_TRAINING = ("DetectionDataModule", "DetectorModule")


def __getattr__(name: str) -> Any:
    if name in _TRAINING:
        from detdiffusion.detectors import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
