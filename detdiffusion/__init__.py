"""DetDiffusion: layout-conditioned latent diffusion that makes object-detection training data."""

from detdiffusion.layout.types import Attribute, Layout, LayoutObject

__all__ = ["Attribute", "Layout", "LayoutObject"]
__version__ = "0.1.0"
