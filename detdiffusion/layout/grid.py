"""Location tokens: a box as the grid bins of its two corners (GeoDiffusion's scheme)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_TOKEN = re.compile(r"<l(\d+)>")


@dataclass(frozen=True)
class LocationGrid:
    """A grid of ``h_bins`` × ``w_bins`` location tokens ``<l0>`` … ``<l{h_bins*w_bins-1}>``.

    Bin centres sit at ``k / (bins - 1)`` for ``k = 0 … bins - 1``, so the image corners are
    bin centres and the full image is ``<l0><l{N-1}>``. A coordinate goes to the nearest
    centre, ``round(x * (w_bins - 1))`` (GeoDiffusion), halves rounding to even (numpy), so a
    decoded coordinate is within half a bin step, ``0.5 / (bins - 1)``, of the original.
    Token index is row-major: ``row * w_bins + col``.

    Args:
        h_bins: number of bins along the height.
        w_bins: number of bins along the width.
    """

    h_bins: int = 16
    w_bins: int = 16

    def __post_init__(self) -> None:
        for name in ("h_bins", "w_bins"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 2:
                raise ValueError(f"LocationGrid.{name} must be an integer >= 2, got {value!r}")

    @property
    def num_tokens(self) -> int:
        return self.h_bins * self.w_bins

    @property
    def tokens(self) -> list[str]:
        """All location tokens in index order."""
        return [f"<l{i}>" for i in range(self.num_tokens)]

    def point_index(self, x: float, y: float) -> int:
        """Token index of the bin nearest to the normalised point ``(x, y)``."""
        return int(self.points_to_indices(np.asarray([[x, y]], dtype=np.float64))[0])

    def points_to_indices(self, points: np.ndarray) -> np.ndarray:
        """Token indices of normalised points, ``(N, 2)`` xy → ``(N,)`` int64."""
        points = np.clip(np.asarray(points, dtype=np.float64), 0.0, 1.0)
        col = np.rint(points[:, 0] * (self.w_bins - 1)).astype(np.int64)
        row = np.rint(points[:, 1] * (self.h_bins - 1)).astype(np.int64)
        return row * self.w_bins + col

    def indices_to_points(self, indices: np.ndarray) -> np.ndarray:
        """Bin centres of token indices, ``(N,)`` → ``(N, 2)`` normalised xy."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_tokens):
            raise ValueError(
                f"location index out of range for a {self.h_bins}x{self.w_bins} grid "
                f"(0..{self.num_tokens - 1}): {indices.min()}..{indices.max()}"
            )
        row, col = np.divmod(indices, self.w_bins)
        return np.stack([col / (self.w_bins - 1), row / (self.h_bins - 1)], axis=-1)

    def encode_box(self, box: Sequence[float]) -> str:
        """``<l{top-left}><l{bottom-right}>`` for a normalised xyxy box."""
        top_left, bottom_right = self.points_to_indices(np.asarray(box, dtype=np.float64).reshape(2, 2))
        return f"<l{top_left}><l{bottom_right}>"

    def decode_box(self, tokens: str) -> tuple[float, float, float, float]:
        """Normalised xyxy box of a two-token string such as ``<l23><l44>``."""
        indices = [int(i) for i in _TOKEN.findall(tokens)]
        if len(indices) != 2 or _TOKEN.sub("", tokens).strip():
            raise ValueError(f"expected two location tokens like '<l23><l44>', got {tokens!r}")
        (x0, y0), (x1, y1) = self.indices_to_points(np.asarray(indices))
        return (float(x0), float(y0), float(x1), float(y1))

    def snap_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes as the model sees them: normalised xyxy ``(N, 4)`` snapped to bin centres."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        indices = self.points_to_indices(boxes.reshape(-1, 2))
        return self.indices_to_points(indices).reshape(-1, 4)
