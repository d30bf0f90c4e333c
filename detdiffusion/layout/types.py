"""Layouts: the objects an image is made of, in the form every part of the library shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Literal

import numpy as np


class Attribute(str, Enum):
    """Perception-aware attribute of an object (DetDiffusion §3.2, DESIGN.md §1).

    ``easy``: a detector found it; ``hard``: a detector that knows the class missed it;
    ``background``: the detector cannot detect the class (stuff, unknown classes);
    ``none``: not labelled, so the prompt carries no attribute token for it.
    """

    EASY = "easy"
    HARD = "hard"
    BACKGROUND = "background"
    NONE = "none"

    @classmethod
    def parse(cls, value: str | Attribute | None, where: str = "") -> Attribute:
        """Read an attribute from a string (``None`` and ``""`` mean ``none``)."""
        if isinstance(value, Attribute):
            return value
        if value is None or value == "":
            return cls.NONE
        try:
            return cls(str(value).lower())
        except ValueError:
            choices = ", ".join(a.value for a in cls)
            raise ValueError(f"{where}unknown attribute {value!r}; expected one of {choices}") from None


#: What happens to a prompt longer than one 77-token window.
#: ``long``: several windows, each with BOS/EOS, hidden states concatenated, nothing lost;
#: ``drop_smallest``: the largest objects that fit one window, the count dropped is reported;
#: ``error``: refuse the layout.
LongPromptPolicy = Literal["long", "drop_smallest", "error"]

#: Integer code of each attribute in batches (``-1`` pads).
ATTRIBUTE_CODES: dict[Attribute, int] = {a: i for i, a in enumerate(Attribute)}


@dataclass(frozen=True)
class LayoutObject:
    """One object of a layout.

    Args:
        category: class name as it appears in prompts (already normalised).
        box: normalised ``(x0, y0, x1, y1)`` in ``[0, 1]`` with ``x0 < x1`` and ``y0 < y1``.
        attribute: perception-aware attribute.
        category_id: id of the class in the source dataset, when known.
        is_stuff: whether the class is a stuff class (COCO-Stuff) rather than a thing.
        mask: optional binary mask of the object, ``(H, W)`` in image pixels.
        annotation_id: id of the source annotation, when known.
    """

    category: str
    box: tuple[float, float, float, float]
    attribute: Attribute = Attribute.NONE
    category_id: int | None = None
    is_stuff: bool = False
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    annotation_id: int | None = None

    def __post_init__(self) -> None:
        box = tuple(float(v) for v in self.box)
        where = f"object {self.category!r}" + (
            f" (annotation id {self.annotation_id})" if self.annotation_id is not None else ""
        )
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ValueError(f"{where}: box must be 4 finite numbers, got {self.box!r}")
        x0, y0, x1, y1 = box
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(
                f"{where}: box must be normalised xyxy with 0 <= x0 < x1 <= 1 and "
                f"0 <= y0 < y1 <= 1, got {box}"
            )
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "attribute", Attribute.parse(self.attribute, f"{where}: "))

    @property
    def area(self) -> float:
        """Box area as a fraction of the image."""
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)

    def pixel_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The box in pixels, ``(x0, y0, x1, y1)``, for an image of ``width`` × ``height``."""
        x0, y0, x1, y1 = self.box
        return (x0 * width, y0 * height, x1 * width, y1 * height)

    @classmethod
    def from_pixels(
        cls, category: str, box: Sequence[float], width: int, height: int, **kwargs: Any
    ) -> LayoutObject:
        """Build an object from a pixel ``(x0, y0, x1, y1)`` box of a ``width`` × ``height`` image."""
        x0, y0, x1, y1 = (float(v) for v in box)
        return cls(category, (x0 / width, y0 / height, x1 / width, y1 / height), **kwargs)

    def with_attribute(self, attribute: Attribute | str) -> LayoutObject:
        return replace(self, attribute=Attribute.parse(attribute))


@dataclass(frozen=True)
class Layout:
    """The objects of one image, in prompt order.

    Args:
        objects: the objects.
        width: image width in pixels (for pixel boxes and masks).
        height: image height in pixels.
        image_id: id of the source image, when known.
    """

    objects: tuple[LayoutObject, ...]
    width: int = 512
    height: int = 512
    image_id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"layout {self.image_id}: size must be positive, got {self.width}x{self.height}")

    def __len__(self) -> int:
        return len(self.objects)

    def boxes(self) -> np.ndarray:
        """Normalised xyxy boxes, ``(N, 4)`` float64 (as stored, so tokens computed from them agree)."""
        return np.asarray([o.box for o in self.objects], dtype=np.float64).reshape(-1, 4)

    def pixel_boxes(self) -> np.ndarray:
        """Pixel xyxy boxes, ``(N, 4)`` float64."""
        return self.boxes() * np.asarray([self.width, self.height] * 2, dtype=np.float64)

    def with_objects(self, objects: Sequence[LayoutObject]) -> Layout:
        return replace(self, objects=tuple(objects))

    def with_attribute(self, attribute: Attribute | str) -> Layout:
        """A copy whose objects all carry ``attribute`` (the ``easy`` / ``hard`` strategies)."""
        return self.with_objects([o.with_attribute(attribute) for o in self.objects])
