"""The perception-head interface and the multi-scale feature fusion the heads share."""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HeadInputs", "HeadOutput", "MultiScaleFusion", "PerceptionHead"]


@dataclass
class HeadInputs:
    """What a perception head may read besides the UNet features (one training batch)."""

    text_embeddings: Tensor
    """``(B, L, D)`` text-encoder hidden states of the prompt (all 77-token windows concatenated)."""
    object_index: Tensor
    """``(B, L)`` long: the layout object slot of each token, -1 for none."""
    labels: Tensor
    """``(B, N)`` long: contiguous class index of each object, -1 for padding."""
    object_mask: Tensor
    """``(B, N)`` bool: which object slots are real."""
    masks: Tensor
    """``(B, N, h, w)`` bool: the objects' masks (box rectangles for box-only data)."""

    def __post_init__(self) -> None:
        if self.text_embeddings.ndim != 3:
            shape = tuple(self.text_embeddings.shape)
            raise ValueError(f"expected text_embeddings of shape (B, L, D), got {shape}")
        b, length = self.text_embeddings.shape[:2]
        if self.object_index.shape != (b, length):
            shape = tuple(self.object_index.shape)
            raise ValueError(f"expected object_index of shape ({b}, {length}), got {shape}")
        if self.labels.ndim != 2 or self.labels.shape[0] != b:
            raise ValueError(f"expected labels of shape ({b}, N), got {tuple(self.labels.shape)}")
        n = self.labels.shape[1]
        if self.object_mask.shape != (b, n):
            raise ValueError(f"expected object_mask of shape ({b}, {n}), got {tuple(self.object_mask.shape)}")
        if self.masks.ndim != 4 or self.masks.shape[:2] != (b, n):
            raise ValueError(f"expected masks of shape ({b}, {n}, h, w), got {tuple(self.masks.shape)}")

    @property
    def num_objects(self) -> int:
        """``N``, the padded number of object slots."""
        return self.labels.shape[1]


@dataclass
class HeadOutput:
    """A head's mask predictions with their targets, ready for ``perception_loss``."""

    logits: Tensor
    """``(B, K, H, W)`` mask logits at feature resolution."""
    targets: Tensor
    """``(B, K, h, w)`` float targets in [0, 1] (``perception_loss`` resizes them to the logits)."""
    valid: Tensor
    """``(B, K)`` bool: which masks count in the loss."""


class MultiScaleFusion(nn.Module):
    """Fuses features of several scales into one map at the finest scale (an FPN-style sum).

    A 1×1 lateral conv per scale to ``dim`` channels (applied before upsampling: cheaper),
    bilinear upsampling to the largest feature size, a sum, then 3×3 conv + GroupNorm + SiLU.

    Args:
        in_channels: channels of each input scale.
        dim: channels of the fused map.
    """

    def __init__(self, in_channels: Sequence[int], dim: int) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("expected at least one feature scale, got none")
        self.laterals = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.out = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, bias=False),
            nn.GroupNorm(math.gcd(32, dim), dim),
            nn.SiLU(),
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Fused ``(B, dim, H, W)`` at the largest ``(H, W)`` of ``features``."""
        size = max((f.shape[-2:] for f in features), key=lambda s: s[0] * s[1])
        fused = None
        for lateral, feature in zip(self.laterals, features, strict=True):
            x = lateral(feature)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            fused = x if fused is None else fused + x
        return self.out(fused)


class PerceptionHead(nn.Module, ABC):
    """A head that predicts the layout's masks from UNet decoder features (DetDiffusion's P.A. loss).

    The constructor takes only hyperparameters (so LightningCLI can build it from a
    ``class_path``); sizes known once the UNet is built arrive through ``build``. ``forward``
    checks the inputs against those sizes, then calls ``predict``, which subclasses implement.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sizes: tuple[tuple[int, ...], int, int] | None = None

    def init_args(self) -> dict[str, object]:
        """The constructor's arguments, read back from attributes of the same names.

        With the class path they rebuild the head (a ``save_pretrained`` folder records both).
        """
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        missing = [n for n in names if not hasattr(self, n)]
        if missing:
            raise TypeError(
                f"{type(self).__name__} must keep its constructor arguments as attributes to be "
                f"exported; missing: {', '.join(missing)}"
            )
        return {n: getattr(self, n) for n in names}

    @property
    def built(self) -> bool:
        """Whether ``build`` has created the layers."""
        return self._sizes is not None

    def build(self, feature_channels: Sequence[int], text_dim: int, num_classes: int) -> None:
        """Creates the layers for these sizes; again with the same sizes it does nothing.

        Args:
            feature_channels: channels of each UNet up-block output, coarse to fine.
            text_dim: hidden size of the text encoder.
            num_classes: number of classes (``labels`` index them).

        Raises:
            ValueError: if already built for other sizes, or on invalid sizes.
        """
        sizes = (tuple(int(c) for c in feature_channels), int(text_dim), int(num_classes))
        if self._sizes is not None:
            if sizes != self._sizes:
                raise ValueError(
                    f"{type(self).__name__} is built for (feature_channels, text_dim, num_classes) = "
                    f"{self._sizes}, got {sizes}"
                )
            return
        if not sizes[0] or min(sizes[0]) < 1 or text_dim < 1 or num_classes < 1:
            raise ValueError(f"expected positive feature_channels, text_dim and num_classes, got {sizes}")
        self._build(*sizes)
        self._sizes = sizes

    @abstractmethod
    def _build(self, feature_channels: tuple[int, ...], text_dim: int, num_classes: int) -> None:
        """Creates the layers (called once, by ``build``)."""

    @abstractmethod
    def predict(self, features: Sequence[Tensor], inputs: HeadInputs) -> HeadOutput:
        """The masks' logits, targets and validity (inputs already checked by ``forward``)."""

    def forward(self, features: Sequence[Tensor], inputs: HeadInputs) -> HeadOutput:
        """Predicts the masks of the layout's objects or classes.

        Args:
            features: UNet up-block outputs, coarse to fine, ``(B, C_i, H_i, W_i)``.
            inputs: the batch's prompt embeddings, object slots, labels and masks.

        Raises:
            RuntimeError: before ``build``.
            ValueError: on features that do not match the built sizes or the batch.
        """
        if self._sizes is None:
            raise RuntimeError(
                f"{type(self).__name__}.build(feature_channels, text_dim, num_classes) must be called "
                "before forward (DetDiffusionModule does it at setup)"
            )
        channels, text_dim, _ = self._sizes
        got = tuple(f.shape[1] if f.ndim == 4 else f"{f.ndim}-d" for f in features)
        if got != channels:
            raise ValueError(f"expected 4-d features with channels {channels}, got {got}")
        b = inputs.text_embeddings.shape[0]
        if any(f.shape[0] != b for f in features):
            raise ValueError(f"expected features of batch size {b}, got {[tuple(f.shape) for f in features]}")
        if inputs.text_embeddings.shape[-1] != text_dim:
            raise ValueError(
                f"expected text_embeddings of width {text_dim}, got {inputs.text_embeddings.shape[-1]}"
            )
        return self.predict(features, inputs)

    def extra_repr(self) -> str:
        if self._sizes is None:
            return "not built"
        channels, text_dim, num_classes = self._sizes
        return f"feature_channels={list(channels)}, text_dim={text_dim}, num_classes={num_classes}"
