"""UNet decoder feature taps: the up-block outputs, collected in the same forward pass."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel
from torch import nn


class UpBlockTaps:
    """Forward hooks that keep each UNet up-block's output of the last forward pass.

    Hooks run outside any graph compiled per block (``DetDiffusionModule(compile=True)``
    compiles only the transformer blocks for that reason). Compiling the whole UNet instead hides
    the hooks from the compiled graph, and ``pop`` then says so.
    """

    def __init__(self, unet: UNet2DConditionModel) -> None:
        self.blocks: Sequence[nn.Module] = unet.up_blocks
        self._features: dict[int, torch.Tensor] = {}
        self._paused = False
        self._handles = [block.register_forward_hook(self._keeper(i)) for i, block in enumerate(self.blocks)]

    def _keeper(self, index: int):
        def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not self._paused:
                self._features[index] = output

        return keep

    @property
    def channels(self) -> list[int]:
        """Channels of each up-block's output, coarse to fine."""
        return [block.resnets[-1].out_channels for block in self.blocks]

    def pop(self) -> list[torch.Tensor]:
        """The features of the last forward, coarse to fine ``(B, C_i, H_i, W_i)``; cleared after."""
        if len(self._features) != len(self.blocks):
            self._features.clear()
            raise RuntimeError(
                "the UNet's decoder features were not captured: a torch.compile of the whole UNet hides "
                "forward hooks; use DetDiffusionModule(compile=True), which compiles the transformer "
                "blocks only"
            )
        features = [self._features[i] for i in range(len(self.blocks))]
        self._features.clear()
        return features

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Keep nothing inside the block (sampling: no head reads the features)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def clear(self) -> None:
        self._features.clear()
