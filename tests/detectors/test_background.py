"""Background ignore: no negative terms on synthetic images, everything else as before."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from detdiffusion.detectors.background import ignore_synthetic_background
from detdiffusion.detectors.small import fasterrcnn_small
from detdiffusion.detectors.training import DetectorModule


def _model():
    torch.manual_seed(0)
    return fasterrcnn_small(3, min_size=64, max_size=64).train()


def _targets(synthetic: tuple[bool, bool]) -> list[dict[str, torch.Tensor]]:
    boxes = [
        torch.tensor([[4.0, 6.0, 30.0, 28.0]]),
        torch.tensor([[10.0, 10.0, 40.0, 50.0], [36, 2, 60, 20]]),
    ]
    labels = [torch.tensor([1]), torch.tensor([2, 1])]
    return [
        {"boxes": b, "labels": lab, "is_synthetic": torch.tensor(s)}
        for b, lab, s in zip(boxes, labels, synthetic, strict=True)
    ]


def _rpn_inputs(model):
    images = torch.rand(2, 3, 64, 64)
    image_list = ImageList(images, [(64, 64)] * 2)
    features = model.backbone(images)
    return image_list, features, model.rpn.anchor_generator(image_list, list(features.values()))


def test_rpn_negatives_are_ignored_on_synthetic_images_only() -> None:
    model = _model()
    _, _, anchors = _rpn_inputs(model)
    targets = _targets((False, True))
    plain, _ = model.rpn.assign_targets_to_anchors(anchors, targets)
    plain = [t.clone() for t in plain]
    ignore_synthetic_background(model)
    ignored, _ = model.rpn.assign_targets_to_anchors(anchors, targets)
    assert (plain[1] == 0).any() and not (ignored[1] == 0).any()  # no background left on the synthetic one
    torch.testing.assert_close(ignored[1][plain[1] == 1], plain[1][plain[1] == 1])  # positives unchanged
    torch.testing.assert_close(ignored[0], plain[0])  # the real image is untouched


def test_box_head_samples_no_background_on_synthetic_images() -> None:
    model = _model()
    image_list, features, _ = _rpn_inputs(model)
    proposals, _ = model.rpn(image_list, features, _targets((False, False)))
    targets = _targets((False, True))
    torch.manual_seed(1)
    plain = model.roi_heads.select_training_samples([p.clone() for p in proposals], targets)
    ignore_synthetic_background(model)
    torch.manual_seed(1)
    ignored = model.roi_heads.select_training_samples([p.clone() for p in proposals], targets)
    _, _, plain_labels, plain_regression = plain
    boxes, matched, labels, regression = ignored
    assert (plain_labels[1] == 0).any() and (labels[1] > 0).all()
    positives = plain_labels[1] > 0
    torch.testing.assert_close(labels[1], plain_labels[1][positives])  # the same positives
    torch.testing.assert_close(regression[1], plain_regression[1][positives])
    assert len(boxes[1]) == len(matched[1]) == len(labels[1])
    torch.testing.assert_close(labels[0], plain_labels[0])  # the real image keeps its negatives
    torch.testing.assert_close(regression[0], plain_regression[0])


def test_training_step_leaves_out_empty_synthetic_images() -> None:
    module = DetectorModule(
        "fasterrcnn_small", category_ids=[1, 2], min_size=64, max_size=64, background_ignore=True
    )
    module.train()
    assert module.model.ignores_synthetic_background
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    real, synthetic = _targets((False, True))
    images = [torch.rand(3, 64, 64) for _ in range(3)]
    loss = module.training_step((images, [real, synthetic, empty | {"is_synthetic": torch.tensor(True)}]), 0)
    assert torch.isfinite(loss) and loss > 0
    # A batch of empty synthetic images only: a zero loss (not NaN) with zero gradients.
    loss = module.training_step((images[:1], [empty | {"is_synthetic": torch.tensor(True)}]), 0)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in module.parameters())


def test_one_stage_detectors_are_refused() -> None:
    from torchvision.models.detection import retinanet_resnet50_fpn

    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    with pytest.raises(ValueError, match=r"two-stage detector .* got RetinaNet"):
        ignore_synthetic_background(model)
