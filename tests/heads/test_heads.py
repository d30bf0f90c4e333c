"""Perception heads: shapes, targets, gradients, the build contract, and that they can learn."""

from __future__ import annotations

import pytest
import torch

from detdiffusion.heads import (
    HeadInputs,
    InstanceHead,
    MultiScaleFusion,
    PerceptionHead,
    SemanticHead,
    class_union_masks,
)
from detdiffusion.losses import perception_loss

CHANNELS = [64, 64, 32]
SIZES = [8, 16, 32]
TEXT_DIM, NUM_CLASSES = 24, 5


def _features(b: int = 2, requires_grad: bool = False) -> list[torch.Tensor]:
    return [
        torch.randn(b, c, s, s, requires_grad=requires_grad) for c, s in zip(CHANNELS, SIZES, strict=True)
    ]


def _inputs(b: int = 2, mask_size: int = 64) -> HeadInputs:
    """Two samples: three objects (two of class 1), and one object whose prompt was dropped."""
    object_index = torch.full((b, 12), -1)
    object_index[0, 1:4], object_index[0, 4:6], object_index[0, 6:9] = 0, 1, 2
    labels = torch.tensor([[1, 1, 3], [2, -1, -1]])
    object_mask = labels >= 0
    masks = torch.zeros(b, 3, mask_size, mask_size, dtype=torch.bool)
    masks[0, 0, :16, :16] = True
    masks[0, 1, 32:, 32:] = True
    masks[0, 2, 16:48, :] = True
    masks[1, 0, :, :32] = True
    return HeadInputs(torch.randn(b, 12, TEXT_DIM), object_index, labels, object_mask, masks)


def _built(head: PerceptionHead) -> PerceptionHead:
    head.build(CHANNELS, TEXT_DIM, NUM_CLASSES)
    return head


@pytest.mark.parametrize(("head_class", "k"), [(SemanticHead, NUM_CLASSES), (InstanceHead, 3)])
def test_output_shapes(head_class: type[PerceptionHead], k: int) -> None:
    out = _built(head_class(dim=16))(_features(), _inputs())
    assert out.logits.shape == (2, k, 32, 32)
    assert out.targets.shape[:2] == (2, k) and out.targets.is_floating_point()
    assert out.valid.shape == (2, k) and out.valid.dtype == torch.bool


def test_fusion_is_at_the_finest_scale_whatever_the_order() -> None:
    fusion = MultiScaleFusion([8, 4, 2], dim=8)
    fused = fusion([torch.randn(1, 8, 16, 16), torch.randn(1, 4, 4, 4), torch.randn(1, 2, 8, 8)])
    assert fused.shape == (1, 8, 16, 16)


@pytest.mark.parametrize("head_class", [SemanticHead, InstanceHead])
def test_gradients_reach_head_features_and_text(head_class: type[PerceptionHead]) -> None:
    head, features, inputs = head_class(dim=16), _features(requires_grad=True), _inputs()
    inputs.text_embeddings.requires_grad_(True)
    out = _built(head)(features, inputs)
    perception_loss(out.logits, out.targets, out.valid, torch.tensor([0, 0]), torch.ones(10)).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in features)
    if isinstance(head, InstanceHead):
        assert inputs.text_embeddings.grad.abs().sum() > 0


def test_semantic_targets_are_class_unions_and_all_classes_count() -> None:
    inputs = _inputs(mask_size=32)
    out = _built(SemanticHead(dim=8))(_features(), inputs)
    expected = torch.zeros(2, NUM_CLASSES, 32, 32)
    expected[0, 1] = (inputs.masks[0, 0] | inputs.masks[0, 1]).float()
    expected[0, 3] = inputs.masks[0, 2].float()
    expected[1, 2] = inputs.masks[1, 0].float()
    torch.testing.assert_close(out.targets, expected)
    assert out.valid.all()


def test_semantic_union_of_resized_masks_and_present_only_option() -> None:
    inputs = _inputs(mask_size=64)
    targets = class_union_masks(inputs.masks, inputs.labels, inputs.object_mask, NUM_CLASSES, (32, 32))
    assert targets[0, 1, :8, :8].eq(1).all() and targets[0, 1, 16:, 16:].eq(1).all()
    assert targets[0, 1, 8:16, :8].eq(0).all() and targets[:, [0, 4]].eq(0).all()
    out = _built(SemanticHead(dim=8, supervise_absent=False))(_features(), inputs)
    present = torch.zeros(2, NUM_CLASSES, dtype=torch.bool)
    present[0, [1, 3]], present[1, 2] = True, True
    assert torch.equal(out.valid, present)


def test_instance_query_is_the_projected_mean_of_the_objects_tokens() -> None:
    head, inputs = _built(InstanceHead(dim=16)), _inputs()
    queries, has_tokens = head.object_queries(inputs.text_embeddings, inputs.object_index, 3)
    for k, tokens in enumerate([slice(1, 4), slice(4, 6), slice(6, 9)]):
        expected = head.query_proj(inputs.text_embeddings[0, tokens].mean(0))
        torch.testing.assert_close(queries[0, k], expected)
    assert has_tokens.tolist() == [[True, True, True], [False, False, False]]


def test_instance_logits_are_scaled_dot_products() -> None:
    head, features, inputs = _built(InstanceHead(dim=16)), _features(), _inputs()
    out = head(features, inputs)
    embedding = head.mask_embed(head.fusion(features))
    queries, _ = head.object_queries(inputs.text_embeddings, inputs.object_index, 3)
    torch.testing.assert_close(out.logits[0, 2, 5, 7], queries[0, 2] @ embedding[0, :, 5, 7] / 4.0)


def test_instance_objects_without_tokens_are_not_supervised() -> None:
    out = _built(InstanceHead(dim=8))(_features(), _inputs())
    # Sample 1's prompt was dropped: its one real object has no token.
    assert out.valid.tolist() == [[True, True, True], [False, False, False]]
    torch.testing.assert_close(out.targets, _inputs().masks.float())


def test_forward_before_build_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"InstanceHead.build\(.*\) must be called before forward"):
        InstanceHead()(_features(), _inputs())


def test_build_is_idempotent_and_rejects_other_sizes() -> None:
    head = _built(SemanticHead(dim=8))
    params = [p.data_ptr() for p in head.parameters()]
    head.build(tuple(CHANNELS), TEXT_DIM, NUM_CLASSES)
    assert [p.data_ptr() for p in head.parameters()] == params
    with pytest.raises(ValueError, match=r"SemanticHead is built for .* got \(\(64, 64, 32\), 24, 7\)"):
        head.build(CHANNELS, TEXT_DIM, 7)


def test_features_and_inputs_are_checked() -> None:
    head = _built(InstanceHead(dim=8))
    with pytest.raises(
        ValueError, match=r"expected 4-d features with channels \(64, 64, 32\), got \(64, 64\)"
    ):
        head(_features()[:2], _inputs())
    with pytest.raises(ValueError, match="expected features of batch size 2"):
        head(_features(b=3), _inputs())
    with pytest.raises(ValueError, match=r"expected object_mask of shape \(2, 3\)"):
        HeadInputs(
            torch.zeros(2, 4, 8),
            torch.zeros(2, 4),
            torch.zeros(2, 3),
            torch.zeros(2, 2),
            torch.zeros(2, 3, 4, 4),
        )


@pytest.mark.parametrize("head_class", [SemanticHead, InstanceHead])
def test_a_head_learns_a_toy_problem(head_class: type[PerceptionHead]) -> None:
    """Features carry each target mask in a channel of their own; 80 Adam steps halve the loss."""
    head, inputs = head_class(dim=16), _inputs(mask_size=32)
    if isinstance(head, SemanticHead):
        signal = class_union_masks(inputs.masks, inputs.labels, inputs.object_mask, NUM_CLASSES, (32, 32))
    else:
        signal = inputs.masks.float()  # the queries must learn which channel is their object's
    features = [torch.randn(2, c, s, s) * 0.1 for c, s in zip(CHANNELS, SIZES, strict=True)]
    features[2][:, : signal.shape[1]] += 3 * signal
    _built(head)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    t, alphas = torch.tensor([0, 0]), torch.ones(10)
    losses = []
    for _ in range(80):
        out = head(features, inputs)
        loss = perception_loss(out.logits, out.targets, out.valid, t, alphas)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("head_class", [SemanticHead, InstanceHead])
def test_a_batch_without_objects_still_gives_every_parameter_a_gradient(
    head_class: type[PerceptionHead],
) -> None:
    """DDP needs a gradient for each parameter on every rank, also when a batch has no objects."""
    head = _built(head_class(dim=8))
    empty = HeadInputs(
        torch.randn(2, 12, TEXT_DIM),
        torch.full((2, 12), -1),
        torch.zeros(2, 0, dtype=torch.long),
        torch.zeros(2, 0, dtype=torch.bool),
        torch.zeros(2, 0, 64, 64, dtype=torch.bool),
    )
    out = head(_features(), empty)
    loss = perception_loss(out.logits, out.targets, out.valid, torch.tensor([0, 0]), torch.ones(10))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in head.parameters())
    if isinstance(head, InstanceHead):
        assert out.logits.shape == (2, 0, 32, 32) and loss.item() == 0.0
