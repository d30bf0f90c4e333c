"""Gen2Det's background ignore: synthetic images teach their objects, not their background.

A generated image can show objects its layout did not ask for; on a synthetic image every such
object would be trained as background. With background ignore, a two-stage detector's
negatives on synthetic images are dropped: anchors the RPN would train as background and
proposals the box head would classify as background carry no loss. Positives (objects and their
boxes) train as usual, and real images are untouched. Images say they are synthetic with
``target["is_synthetic"]`` (``DetectionDataset`` sets it).
"""

from __future__ import annotations

import functools

import torch
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

__all__ = ["ignore_synthetic_background"]


def ignore_synthetic_background(model: GeneralizedRCNN) -> GeneralizedRCNN:
    """Make ``model`` (a Faster / Mask R-CNN) drop background terms on synthetic images, in place.

    The synthetic images of a batch must each hold at least one object: with no background and no
    object, an image has no term left (``DetectorModule`` leaves such images out of the batch).
    """
    if not isinstance(model, GeneralizedRCNN):
        raise ValueError(
            f"background ignore needs a two-stage detector (RPN + RoI heads, e.g. Faster R-CNN); "
            f"got {type(model).__name__}"
        )
    if getattr(model, "ignores_synthetic_background", False):
        return model
    rpn, roi_heads = model.rpn, model.roi_heads
    assign = rpn.assign_targets_to_anchors
    select = roi_heads.select_training_samples

    @functools.wraps(assign)
    def assign_targets_to_anchors(anchors, targets):
        labels, matched_gt_boxes = assign(anchors, targets)
        for image_labels, target in zip(labels, targets, strict=True):
            if _synthetic(target):
                # 0 is background, -1 "ignore": the RPN's sampler draws negatives among the 0s only.
                image_labels[image_labels == 0] = -1.0
        return labels, matched_gt_boxes

    @functools.wraps(select)
    def select_training_samples(proposals, targets):
        proposals, matched_idxs, labels, regression_targets = select(proposals, targets)
        regression_targets = list(regression_targets)
        for i, target in enumerate(targets):
            if _synthetic(target):
                # Positives are sampled independently of negatives (their number is capped, never
                # traded for negatives), so dropping the sampled negatives afterwards is the same as
                # never offering them.
                keep = labels[i] > 0
                proposals[i], matched_idxs[i] = proposals[i][keep], matched_idxs[i][keep]
                labels[i], regression_targets[i] = labels[i][keep], regression_targets[i][keep]
        return proposals, matched_idxs, labels, regression_targets

    rpn.assign_targets_to_anchors = assign_targets_to_anchors
    roi_heads.select_training_samples = select_training_samples
    model.ignores_synthetic_background = True
    return model


def _synthetic(target: dict[str, torch.Tensor]) -> bool:
    flag = target.get("is_synthetic")
    return flag is not None and bool(flag)
