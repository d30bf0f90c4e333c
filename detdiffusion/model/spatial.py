"""Spatial layout conditioning: the layout's boxes as per-class maps on extra UNet input channels.

An option beside the paper's token-only conditioning (off by default). Each configured
category id gets one channel, 1 inside the boxes of its objects and 0 elsewhere, at latent
resolution; the maps are concatenated to the noisy latents. The UNet's ``conv_in`` grows by
one zero-initialised input channel per category, the way image-edit models (InstructPix2Pix,
SD inpainting) add inputs to a pretrained UNet: at initialisation the model computes exactly
what it did without them. The UNet still predicts the latent channels only.

Objects of categories without a channel (stuff bands, classes left out of the list) draw
nothing: they reach the model through the prompt alone. The unconditional branch of
classifier-free guidance is (empty prompt, zero maps), as trained by caption dropout.

Why it exists: on a CPU budget a model trained from scratch learns *what* from location
tokens but not *where* (CALIBRATION.md); box maps teach position in a few hundred steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from torch.nn.utils import skip_init

from detdiffusion.layout.types import Layout

__all__ = [
    "add_input_channels",
    "channel_table",
    "check_spatial_categories",
    "layout_boxes",
    "layout_maps",
    "rasterize_boxes",
]


def check_spatial_categories(category_ids: Sequence[int] | None) -> tuple[int, ...] | None:
    """The category ids of ``--model.spatial_conditioning``, checked (None: off)."""
    if category_ids is None:
        return None
    ids = tuple(category_ids)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(
            f"--model.spatial_conditioning must be a non-empty list of category ids >= 0 or null, got {ids!r}"
        )
    if len(set(ids)) != len(ids):
        raise ValueError(f"--model.spatial_conditioning lists a category id twice: {list(ids)}")
    return ids


def channel_table(category_ids: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """``(max id + 1,)`` long: each category id's channel (its place in ``category_ids``), -1 for none."""
    table = torch.full((max(category_ids) + 1,), -1, dtype=torch.long, device=device)
    table[torch.as_tensor(list(category_ids), device=device)] = torch.arange(len(category_ids), device=device)
    return table


def _pixel_spans(lo: torch.Tensor, hi: torch.Tensor, size: int) -> torch.Tensor:
    """``(..., size)`` bool: the pixels whose centres lie in ``[lo, hi)`` (normalised), at least one.

    Pixel ``j``'s centre is ``(j + 0.5) / size``; a box too thin to hold a centre gets the pixel
    under its own centre.
    """
    start = torch.ceil(lo * size - 0.5)
    end = torch.ceil(hi * size - 0.5)
    centre = torch.floor((lo + hi) / 2 * size).clamp(0, size - 1)
    empty = end <= start
    start = torch.where(empty, centre, start).clamp(0, size)
    end = torch.where(empty, centre + 1, end).clamp(0, size)
    pixels = torch.arange(size, device=lo.device, dtype=lo.dtype)
    return (pixels >= start[..., None]) & (pixels < end[..., None])


def rasterize_boxes(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    channel_of: torch.Tensor,
    num_channels: int,
    height: int,
    width: int,
) -> torch.Tensor:
    """Per-channel box maps ``(B, C, H, W)`` float: 1 inside the boxes of a channel's objects, else 0.

    Args:
        boxes: ``(B, N, 4)`` normalised xyxy boxes.
        labels: ``(B, N)`` integer label of each object (a category id, or a batch's class index),
            looked up in ``channel_of``.
        valid: ``(B, N)`` bool, the real objects (padding is False).
        channel_of: ``(K,)`` long, the channel of each label value; -1, or a label outside
            ``[0, K)``, draws nothing.
        num_channels: ``C``.
        height: ``H`` of the maps.
        width: ``W`` of the maps.

    A box covers the pixels whose centres it contains (at least one pixel); overlapping boxes of
    a channel take the maximum.
    """
    b, n = labels.shape
    if boxes.shape != (b, n, 4) or valid.shape != (b, n):
        raise ValueError(
            f"expected boxes (B, N, 4) and valid (B, N) for labels {tuple(labels.shape)}, "
            f"got {tuple(boxes.shape)} and {tuple(valid.shape)}"
        )
    x0, y0, x1, y1 = boxes.float().unbind(-1)  # (B, N) each
    inside = _pixel_spans(y0, y1, height)[..., :, None] & _pixel_spans(x0, x1, width)[..., None, :]
    labels = labels.to(channel_of.device)
    known = (labels >= 0) & (labels < len(channel_of)) & valid.to(labels.device)
    channel = channel_of[labels.clamp(0, len(channel_of) - 1)]
    # Objects without a channel go to a spare channel C, dropped below.
    channel = torch.where(known & (channel >= 0), channel, num_channels)  # (B, N)
    maps = torch.zeros(b, num_channels + 1, height * width, device=boxes.device)
    index = channel.to(boxes.device)[..., None].expand(-1, -1, height * width)
    maps.scatter_reduce_(1, index, inside.flatten(2).float(), "amax")
    return maps[:, :num_channels].reshape(b, num_channels, height, width)


def layout_maps(
    boxes: torch.Tensor,
    category_ids: torch.Tensor,
    spatial_ids: Sequence[int],
    height: int,
    width: int,
) -> torch.Tensor:
    """``(B, len(spatial_ids), H, W)`` maps of boxes labelled with category ids (-1 pads)."""
    table = channel_table(spatial_ids, boxes.device)
    return rasterize_boxes(boxes, category_ids, category_ids >= 0, table, len(spatial_ids), height, width)


def layout_boxes(layouts: Sequence[Layout]) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes ``(B, N, 4)`` float32 and category ids ``(B, N)`` long (-1 pads) of layouts.

    Raises if an object has no ``category_id``: its channel could not be told.
    """
    n = max((len(layout) for layout in layouts), default=0)
    boxes = np.zeros((len(layouts), n, 4), dtype=np.float32)
    ids = np.full((len(layouts), n), -1, dtype=np.int64)
    for i, layout in enumerate(layouts):
        for j, obj in enumerate(layout.objects):
            if obj.category_id is None:
                raise ValueError(
                    f"layout {layout.image_id}, object {j} ({obj.category!r}) has no category_id: a "
                    "spatially conditioned model draws each box in its category's channel"
                )
            boxes[i, j] = obj.box
            ids[i, j] = obj.category_id
    return torch.from_numpy(boxes), torch.from_numpy(ids)


def add_input_channels(unet: UNet2DConditionModel, extra: int) -> None:
    """Give ``unet.conv_in`` ``extra`` more input channels with zero weights (output unchanged).

    ``unet.config.in_channels`` follows, so ``save_pretrained`` / ``from_pretrained`` rebuild the
    wider UNet; ``out_channels`` stays. No random numbers are drawn.
    """
    old = unet.conv_in
    new = skip_init(
        torch.nn.Conv2d,
        old.in_channels + extra,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.requires_grad_(old.weight.requires_grad)
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels + extra)
