"""DetDiffusion: layout-conditioned latent diffusion that makes object-detection training data."""

from importlib import import_module
from typing import Any

from detdiffusion.layout.types import Attribute, Layout, LayoutObject

__all__ = [
    "Attribute",
    "DetDiffusionModule",
    "Layout",
    "LayoutDataModule",
    "LayoutObject",
    "SampleGridCallback",
]
__version__ = "0.1.0"

# Imported on first use: they pull in Lightning, diffusers and transformers, which the data
# commands of the CLI do not need.
_LAZY = {
    "DetDiffusionModule": "detdiffusion.model.module",
    "LayoutDataModule": "detdiffusion.data.datamodule",
    "SampleGridCallback": "detdiffusion.callbacks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'detdiffusion' has no attribute {name!r}")
