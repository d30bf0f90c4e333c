"""Pictures: images with their layout boxes, class names and attributes drawn, and grids of them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from detdiffusion.layout.types import Attribute, Layout

#: Box colour of each attribute: easy green, hard red, background blue, unlabelled yellow.
ATTRIBUTE_COLORS: dict[Attribute, tuple[int, int, int]] = {
    Attribute.EASY: (40, 200, 60),
    Attribute.HARD: (230, 40, 40),
    Attribute.BACKGROUND: (60, 120, 255),
    Attribute.NONE: (250, 210, 30),
}


def draw_layout(
    image: np.ndarray | Image.Image, layout: Layout, tile: int = 256, labels: bool = True
) -> Image.Image:
    """``image`` scaled to fit a ``tile`` × ``tile`` square, with the layout's boxes drawn.

    Boxes are coloured by attribute (see ``ATTRIBUTE_COLORS``) and labelled ``name [attribute]``.
    Small images are scaled up so the labels stay readable.
    """
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")
    scale = tile / max(img.width, img.height)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    canvas = Image.new("RGB", (tile, tile), (24, 24, 24))
    canvas.paste(img.resize((w, h), Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(9, tile // 24))
    for obj in layout.objects:
        x0, y0, x1, y1 = obj.pixel_box(w, h)
        color = ATTRIBUTE_COLORS[obj.attribute]
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=max(1, tile // 128))
        if labels:
            text = obj.category + ("" if obj.attribute is Attribute.NONE else f" [{obj.attribute.value}]")
            left, top, right, bottom = draw.textbbox((x0 + 2, y0 + 1), text, font=font)
            draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=(0, 0, 0))
            draw.text((x0 + 2, y0 + 1), text, fill=color, font=font)
    return canvas


def image_grid(images: Sequence[Image.Image], columns: int = 4, pad: int = 4) -> Image.Image:
    """Equal-sized images side by side in rows of ``columns``."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    w, h = images[0].size
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        grid.paste(img, (pad + c * (w + pad), pad + r * (h + pad)))
    return grid
