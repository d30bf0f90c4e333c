"""``SemanticHead``: one mask per class, supervised with the union of that class's objects."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detdiffusion.heads.base import HeadInputs, HeadOutput, MultiScaleFusion, PerceptionHead
from detdiffusion.losses.perception import resize_masks

__all__ = ["SemanticHead", "class_union_masks"]


def class_union_masks(
    masks: Tensor, labels: Tensor, object_mask: Tensor, num_classes: int, size: Sequence[int]
) -> Tensor:
    """Per class, the union of its objects' masks, area-resized to ``size``.

    Masks are resized before the union: at image resolution a ``(B, num_classes, h, w)`` map
    would be hundreds of MB for COCO-Stuff. The union is the clamped sum of the soft masks,
    which equals the resized union for non-overlapping objects (COCO instance masks).

    Args:
        masks: ``(B, N, h, w)`` object masks.
        labels: ``(B, N)`` class indices, -1 for padding.
        object_mask: ``(B, N)`` bool, which objects are real.
        num_classes: ``C``.
        size: output ``(H, W)``.

    Returns:
        ``(B, C, H, W)`` float targets in [0, 1].
    """
    soft = resize_masks(masks, size)  # (B, N, H, W)
    real = object_mask & (labels >= 0) & (labels < num_classes)
    one_hot = nn.functional.one_hot(labels.clamp(0, num_classes - 1), num_classes).to(soft.dtype)
    one_hot = one_hot * real.unsqueeze(-1)  # (B, N, C); padding rows are zero
    return torch.einsum("bnc,bnhw->bchw", one_hot, soft).clamp_(max=1.0)


class SemanticHead(PerceptionHead):
    """A per-class (semantic segmentation) head on the fused UNet decoder features.

    Every class is supervised in every sample (``valid`` all true): a class absent from the
    layout is an empty mask, which teaches "no cat here" as well as "a cat there". Datasets
    filtered like LostGAN's COCO-Stuff leave small or crowd objects unannotated, so that
    negative is sometimes wrong; ``supervise_absent=False`` counts only the classes present.

    Args:
        dim: channels of the fused feature map.
        supervise_absent: also supervise classes absent from the layout (as empty masks).
    """

    def __init__(self, dim: int = 64, supervise_absent: bool = True) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"expected dim >= 1, got {dim}")
        self.dim = dim
        self.supervise_absent = supervise_absent
        self.num_classes = 0

    def _build(self, feature_channels: tuple[int, ...], text_dim: int, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fusion = MultiScaleFusion(feature_channels, self.dim)
        self.classifier = nn.Conv2d(self.dim, num_classes, 1)

    def predict(self, features: Sequence[Tensor], inputs: HeadInputs) -> HeadOutput:
        logits = self.classifier(self.fusion(features))  # (B, C, H, W)
        targets = class_union_masks(
            inputs.masks, inputs.labels, inputs.object_mask, self.num_classes, logits.shape[-2:]
        )
        if self.supervise_absent:
            valid = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
        else:
            valid = targets.flatten(2).amax(-1) > 0
        return HeadOutput(logits, targets, valid)
