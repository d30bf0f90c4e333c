"""Lightning callbacks: sample grids and fidelity scores during training."""

from detdiffusion.callbacks.fidelity import FidelityCallback
from detdiffusion.callbacks.samples import SampleGridCallback

__all__ = ["FidelityCallback", "SampleGridCallback"]
