"""Decoding images and resizing, cropping and flipping them together with their boxes and masks.

A ``Geometry`` is planned once per sample and applied to everything: the image, the boxes and
the masks. Polygon masks are rasterised straight at the output size from transformed
coordinates (cheap and exact); RLE masks are decoded at the source size and resized nearest.
"""

from __future__ import annotations

from collections.abc import Sequence
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

    def mask(
        self, segmentation: Any, box: np.ndarray | None = None, size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """One object's mask; see ``masks``."""
        boxes = np.zeros((1, 4)) if box is None else np.asarray(box, dtype=np.float64).reshape(1, 4)
        return self.masks([segmentation], boxes, size)[0]

    def masks(
        self, segmentations: Sequence[Any], boxes: np.ndarray, size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Output masks ``(N, h, w)`` bool of COCO segmentations; None: the matching box rectangle.

        Args:
            segmentations: polygons (list of flat coordinate lists), RLE dicts or None, one per object.
            boxes: source pixel xyxy ``(N, 4)``, used where the segmentation is None.
            size: mask size ``(h, w)``; default the output image size. A smaller size (the
                latent's) gives the same masks at lower resolution, much cheaper.

        Polygons are rasterised straight at the mask size from transformed coordinates. RLE
        masks are decoded together at the source size and sampled at the source pixel under
        each mask pixel's centre (resize, crop and flip in one gather, as ``nearest-exact``).
        """
        mh, mw = size or (self.out_h, self.out_w)
        fx, fy = mw / self.out_w, mh / self.out_h
        out = np.zeros((len(segmentations), mh, mw), dtype=bool)
        polygons, rles = [], []
        for i, segm in enumerate(segmentations):
            if segm is None:
                x0, y0, x1, y1 = self.boxes(boxes[i])[0] * (fx, fy, fx, fy)
                # Pixels whose centre lies inside the box.
                out[i, _centre_span(y0, y1), _centre_span(x0, x1)] = True
            elif isinstance(segm, list):
                polygons.append(i)
            else:
                rles.append(i)
        if polygons:
            merged = []
            for i in polygons:
                transformed = []
                for poly in segmentations[i]:
                    xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
                    x = xy[:, 0] * self.scale_x - self.crop_x
                    if self.flip:
                        x = self.out_w - x
                    y = xy[:, 1] * self.scale_y - self.crop_y
                    transformed.append(np.stack([x * fx, y * fy], axis=1).reshape(-1).tolist())
                merged.append(mask_utils.merge(mask_utils.frPyObjects(transformed, mh, mw)))
            out[polygons] = mask_utils.decode(merged).transpose(2, 0, 1).astype(bool)
        if rles:
            encoded = [segmentations[i] for i in rles]
            encoded = [
                mask_utils.frPyObjects(r, *r["size"]) if isinstance(r["counts"], list) else r for r in encoded
            ]
            # decode gives (H, W, N) in Fortran order: its transpose (N, W, H) is contiguous.
            full = mask_utils.decode(encoded).T
            rows = self._source_pixels(mh, fy, self.crop_y, self.scale_y, self.src_h)
            cols = self._source_pixels(mw, fx, self.crop_x, self.scale_x, self.src_w)
            if self.flip:
                cols = cols[::-1]
            sampled = np.take(np.take(full, cols, axis=1), rows, axis=2)  # (N, mw, mh), 0/1
            out[rles] = sampled.transpose(0, 2, 1).view(bool)
        return out

    @staticmethod
    def _source_pixels(n: int, factor: float, crop: int, scale: float, limit: int) -> np.ndarray:
        """Source pixel under the centre of each of ``n`` mask pixels along one axis."""
        centres = (np.arange(n) + 0.5) / factor + crop  # in resized-image pixels
        return np.clip(np.floor(centres / scale).astype(np.int64), 0, limit - 1)


def _centre_span(a: float, b: float) -> slice:
    """Pixels whose centre lies in ``[a, b)``."""
    return slice(int(np.ceil(a - 0.5)), int(np.ceil(b - 0.5)))


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
