"""Decoding images and resizing, cropping and flipping them together with their boxes and masks.

A ``Geometry`` is planned once per sample and applied to everything: the image, the boxes and
the masks. Polygon masks are rasterised straight at the output size from transformed
coordinates (cheap and exact); RLE masks are decoded at the source size and resized nearest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

#: ``crop``: resize the shorter side to the target and crop (aspect preserved);
#: ``squash``: resize both sides to the target (GeoDiffusion; aspect changes).
ResizeMode = Literal["crop", "squash"]


def load_rgb(path: str | Path, image_id: int | None = None) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB.

    Grayscale, palette, RGBA (alpha dropped) and CMYK images are converted; 16-bit and
    32-bit integer images are scaled to 8 bits, not clipped.
    """
    where = f"{path}" + (f" (image id {image_id})" if image_id is not None else "")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                arr = np.asarray(img)
                if img.mode == "F":
                    scale = 1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0 / 255.0
                    arr = np.nan_to_num(arr) * (255.0 * scale)
                else:
                    # 16-bit data (also when Pillow opens it as mode I) maps 65535 → 255;
                    # wider 32-bit data maps its full range.
                    top = 65535.0 if float(arr.max(initial=0)) <= 65535 else float(2**31 - 1)
                    arr = arr.astype(np.float64) * (255.0 / top)
                arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
                return np.repeat(arr[..., None], 3, axis=2)
            return np.array(img.convert("RGB"))  # a writable copy, so torch.from_numpy may share it
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{where}: cannot read image ({e})") from None


@dataclass(frozen=True)
class Geometry:
    """How a source image maps onto the output: scale, then crop, then an optional flip."""

    src_w: int
    src_h: int
    out_w: int
    out_h: int
    scale_x: float
    scale_y: float
    crop_x: int
    crop_y: int
    flip: bool = False

    @property
    def resized(self) -> tuple[int, int]:
        """Size ``(h, w)`` after scaling, before cropping."""
        return round(self.src_h * self.scale_y), round(self.src_w * self.scale_x)

    def image(self, image: torch.Tensor) -> torch.Tensor:
        """``(3, H, W)`` uint8 → ``(3, out_h, out_w)`` uint8."""
        h, w = self.resized
        if (h, w) != tuple(image.shape[-2:]):
            image = F.interpolate(
                image[None].float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False
            )
            image = image[0].round().clamp(0, 255).to(torch.uint8)
        image = image[:, self.crop_y : self.crop_y + self.out_h, self.crop_x : self.crop_x + self.out_w]
        return image.flip(-1) if self.flip else image

    def boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Pixel xyxy ``(N, 4)`` in the source → pixel xyxy in the output, clipped to it."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        x = boxes[:, [0, 2]] * self.scale_x - self.crop_x
        y = boxes[:, [1, 3]] * self.scale_y - self.crop_y
        if self.flip:
            x = self.out_w - x[:, ::-1]
        x = np.clip(x, 0, self.out_w)
        y = np.clip(y, 0, self.out_h)
        return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)

    def mask(self, segmentation: Any, box: np.ndarray | None = None) -> np.ndarray:
        """Output mask ``(out_h, out_w)`` bool of polygons, RLE, or (None) the ``box`` rectangle."""
        if segmentation is None:
            out = np.zeros((self.out_h, self.out_w), dtype=bool)
            (x0, y0, x1, y1) = self.boxes(np.asarray(box))[0]
            # Pixels whose centre lies inside the box.
            out[
                int(np.ceil(y0 - 0.5)) : int(np.ceil(y1 - 0.5)),
                int(np.ceil(x0 - 0.5)) : int(np.ceil(x1 - 0.5)),
            ] = True
            return out
        if isinstance(segmentation, list):
            polygons = []
            for poly in segmentation:
                xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
                x = xy[:, 0] * self.scale_x - self.crop_x
                if self.flip:
                    x = self.out_w - x
                polygons.append(
                    np.stack([x, xy[:, 1] * self.scale_y - self.crop_y], axis=1).reshape(-1).tolist()
                )
            rles = mask_utils.frPyObjects(polygons, self.out_h, self.out_w)
            return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
        rle = segmentation
        if isinstance(rle["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        full = torch.from_numpy(mask_utils.decode(rle))
        h, w = self.resized
        if (h, w) != tuple(full.shape):
            # nearest-exact samples the source pixel under each output pixel's centre; plain
            # nearest is shifted by half a pixel against the image and polygon masks.
            full = F.interpolate(full[None, None].float(), size=(h, w), mode="nearest-exact")[0, 0]
        out = full[self.crop_y : self.crop_y + self.out_h, self.crop_x : self.crop_x + self.out_w].bool()
        return (out.flip(-1) if self.flip else out).numpy()


def plan_geometry(
    width: int,
    height: int,
    size: int | tuple[int, int],
    mode: ResizeMode = "crop",
    random_crop: bool = False,
    flip: bool = False,
    rng: np.random.Generator | None = None,
) -> Geometry:
    """The geometry taking a ``width`` × ``height`` image to ``size`` (an int or ``(h, w)``).

    Args:
        mode: ``crop`` keeps the aspect ratio and crops; ``squash`` stretches to the size.
        random_crop: with ``crop``, a random crop window instead of the centre (needs ``rng``).
        flip: mirror horizontally.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if mode == "squash":
        return Geometry(width, height, out_w, out_h, out_w / width, out_h / height, 0, 0, flip)
    if mode != "crop":
        raise ValueError(f"resize mode must be 'crop' or 'squash', got {mode!r}")
    scale = max(out_w / width, out_h / height)
    res_h, res_w = max(out_h, round(height * scale)), max(out_w, round(width * scale))
    if random_crop:
        if rng is None:
            raise ValueError("random_crop needs an rng")
        crop_y, crop_x = int(rng.integers(0, res_h - out_h + 1)), int(rng.integers(0, res_w - out_w + 1))
    else:
        crop_y, crop_x = (res_h - out_h) // 2, (res_w - out_w) // 2
    return Geometry(width, height, out_w, out_h, res_w / width, res_h / height, crop_x, crop_y, flip)


def to_model_range(image: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` → float ``[-1, 1]`` (what the VAE expects)."""
    return image.float().div(127.5).sub(1.0)


def from_model_range(image: torch.Tensor) -> torch.Tensor:
    """float ``[-1, 1]`` → uint8 ``[0, 255]``."""
    return image.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
