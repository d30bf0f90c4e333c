"""Generation: the layout-to-image pipeline and synthetic COCO datasets made with it."""

from typing import Any

from detdiffusion.generation.pipeline import (
    STRATEGIES,
    LayoutDiffusionPipeline,
    LayoutPipelineOutput,
    apply_strategy,
    image_seed,
    to_pil,
)

__all__ = [
    "STRATEGIES",
    "LayoutDiffusionPipeline",
    "LayoutPipelineOutput",
    "LayoutSetDataModule",
    "SamplingSettings",
    "SyntheticDatasetWriter",
    "apply_strategy",
    "image_seed",
    "to_pil",
]

#: Imported on first use: the predict parts need Lightning.
_PREDICT = ("LayoutSetDataModule", "SamplingSettings", "SyntheticDatasetWriter")


def __getattr__(name: str) -> Any:
    if name in _PREDICT:
        from detdiffusion.generation import data

        return getattr(data, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
