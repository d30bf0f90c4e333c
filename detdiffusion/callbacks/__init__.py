"""Lightning callbacks: sample grids and fidelity scores during training, metrics to a file, and
trainability runs after generation."""

from detdiffusion.callbacks.fidelity import FidelityCallback
from detdiffusion.callbacks.metrics import MetricsFile
from detdiffusion.callbacks.samples import SampleGridCallback
from detdiffusion.callbacks.trainability import TrainabilityCallback

__all__ = ["FidelityCallback", "MetricsFile", "SampleGridCallback", "TrainabilityCallback"]
