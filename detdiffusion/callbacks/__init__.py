"""Lightning callbacks: sample grids during training."""

from detdiffusion.callbacks.samples import SampleGridCallback

__all__ = ["SampleGridCallback"]
