"""``InstanceHead``: one mask per layout object, queried by the object's text embedding."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detdiffusion.heads.base import HeadInputs, HeadOutput, MultiScaleFusion, PerceptionHead

__all__ = ["InstanceHead"]


class InstanceHead(PerceptionHead):
    """A per-object mask head whose queries are the objects' prompt embeddings.

    An object's query is the mean of the text-encoder states of its tokens (class name,
    location and attribute tokens: ``object_index == k``), projected to ``dim``; its mask
    logits are the scaled dot product of the query with a per-pixel mask embedding of the
    fused UNet features. The loss so reaches the text encoder as well as the UNet, and two
    objects of one class differ by their location tokens.

    An object with no token is not supervised (``valid`` false): that is every object of a
    sample whose prompt was dropped for classifier-free guidance (nothing in the prompt says
    which object is which), and any object a long-prompt policy cut from the prompt.

    Args:
        dim: channels of the fused features and of the queries.
    """

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"expected dim >= 1, got {dim}")
        self.dim = dim

    def _build(self, feature_channels: tuple[int, ...], text_dim: int, num_classes: int) -> None:
        self.fusion = MultiScaleFusion(feature_channels, self.dim)
        self.mask_embed = nn.Conv2d(self.dim, self.dim, 1)
        self.query_proj = nn.Linear(text_dim, self.dim)

    def object_queries(
        self, text_embeddings: Tensor, object_index: Tensor, num_objects: int
    ) -> tuple[Tensor, Tensor]:
        """Each object's query: the projected mean embedding of its tokens.

        Args:
            text_embeddings: ``(B, L, D)``.
            object_index: ``(B, L)`` object slot of each token, -1 for none.
            num_objects: ``N``.

        Returns:
            Queries ``(B, N, dim)`` (the projected zero vector for objects without tokens) and
            ``(B, N)`` bool, whether the object has a token.
        """
        slots = torch.arange(num_objects, device=object_index.device)
        membership = (object_index.unsqueeze(-1) == slots).to(text_embeddings.dtype)  # (B, L, N)
        counts = membership.sum(1)  # (B, N)
        sums = torch.einsum("bln,bld->bnd", membership, text_embeddings)
        means = sums / counts.clamp_min(1).unsqueeze(-1)  # (B, N, D)
        return self.query_proj(means), counts > 0

    def predict(self, features: Sequence[Tensor], inputs: HeadInputs) -> HeadOutput:
        embedding = self.mask_embed(self.fusion(features))  # (B, dim, H, W)
        queries, has_tokens = self.object_queries(
            inputs.text_embeddings, inputs.object_index, inputs.num_objects
        )
        logits = torch.einsum("bnd,bdhw->bnhw", queries.to(embedding.dtype), embedding)
        logits = logits / math.sqrt(self.dim)
        targets = inputs.masks.to(logits.dtype if logits.is_floating_point() else torch.float32)
        return HeadOutput(logits, targets, inputs.object_mask & has_tokens)
