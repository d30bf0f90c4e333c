"""Perception heads: predict the layout's masks from UNet decoder features (DetDiffusion's P.A. loss)."""

from detdiffusion.heads.base import HeadInputs, HeadOutput, MultiScaleFusion, PerceptionHead
from detdiffusion.heads.instance import InstanceHead
from detdiffusion.heads.semantic import SemanticHead, class_union_masks

__all__ = [
    "HeadInputs",
    "HeadOutput",
    "InstanceHead",
    "MultiScaleFusion",
    "PerceptionHead",
    "SemanticHead",
    "class_union_masks",
]
