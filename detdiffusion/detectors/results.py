"""Detections made elsewhere (mmdet, detectron2, ultralytics, …), read from a COCO results JSON.

The file is COCO's detection results format, what ``COCO.loadRes`` reads and every framework
writes: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.

Policy: the file is checked whole when the detector is made. A malformed entry (missing key,
bbox not 4 finite numbers, negative width or height, non-integer id, non-numeric score) is an
error naming the file and the entry's index. So are image ids outside ``image_ids`` (when given;
a results file of another split is a likely mistake — pass None, or the unfiltered ids, when the
file covers more images than the filtered dataset) and category ids that cannot be mapped. An
image without entries has no detections, which is valid. An empty file ``[]`` is allowed and
logged as a warning.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from detdiffusion.detectors.base import Detections, Detector

__all__ = ["CocoResultsDetector"]

log = logging.getLogger(__name__)

_KEYS = ("image_id", "category_id", "bbox", "score")


def _number(value: Any) -> bool:
    """A finite JSON number (not a bool, not a numeric string)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _empty() -> Detections:
    return {
        "boxes": torch.zeros((0, 4), dtype=torch.float32),
        "scores": torch.zeros((0,), dtype=torch.float32),
        "labels": torch.zeros((0,), dtype=torch.int64),
    }


def _shown(ids: Collection[int]) -> str:
    first = sorted(ids)[:5]
    return ", ".join(map(str, first)) + (", …" if len(ids) > 5 else "")


class CocoResultsDetector(Detector):
    """A detector whose detections were made elsewhere and saved as a COCO results JSON.

    ``detect`` looks the images up by id; the pixel data is not used.

    Args:
        path: the results JSON.
        category_map: ``{results category id: dataset category id}``; None: the file already
            uses the dataset's ids. A category id of the file that is neither mapped nor in
            ``drop_categories`` is an error.
        detectable: dataset category ids the detector can report. None: the values of
            ``category_map`` when given, else the (kept) category ids that occur in the file —
            a class the detector knows but never predicted then counts as undetectable, so pass
            it where that matters. When given, a mapped id outside it is an error.
        image_ids: the dataset's image ids; entries for other images are an error. None: not
            checked.
        drop_categories: results category ids to ignore (classes the dataset does not have).
    """

    reads_pixels = False

    def __init__(
        self,
        path: str | Path,
        category_map: dict[int, int] | None = None,
        detectable: list[int] | None = None,
        image_ids: Collection[int] | None = None,
        drop_categories: list[int] | None = None,
    ) -> None:
        self.path = Path(path).expanduser()
        self.category_map = (
            None if category_map is None else {int(k): int(v) for k, v in category_map.items()}
        )
        self.image_ids = None if image_ids is None else frozenset(int(i) for i in image_ids)
        drop = frozenset(int(c) for c in drop_categories or ())
        allowed = None if detectable is None else frozenset(int(c) for c in detectable)

        entries = self._load()
        grouped: dict[int, list[tuple[float, list[float], int]]] = {}
        unknown_images: set[int] = set()
        unknown_categories: set[int] = set()
        seen: set[int] = set()
        for i, entry in enumerate(entries):
            image_id, category_id, box, score = self._parse(entry, i)
            if self.image_ids is not None and image_id not in self.image_ids:
                unknown_images.add(image_id)
                continue
            if category_id in drop:
                continue
            if self.category_map is not None:
                if category_id not in self.category_map:
                    unknown_categories.add(category_id)
                    continue
                label = self.category_map[category_id]
            else:
                label = category_id
            if allowed is not None and label not in allowed:
                unknown_categories.add(category_id)
                continue
            seen.add(label)
            grouped.setdefault(image_id, []).append((score, box, label))
        if unknown_images:
            raise ValueError(
                f"{self.path}: {len(unknown_images)} image ids are not in the dataset "
                f"({_shown(unknown_images)}); "
                "is it the results of another split? (image_ids=None skips this check)"
            )
        if unknown_categories:
            known = "category_map" if self.category_map is not None else "detectable"
            raise ValueError(
                f"{self.path}: category ids {_shown(unknown_categories)} are not in {known} "
                "(map them, or list them in drop_categories)"
            )

        if allowed is not None:
            self._detectable = allowed
        elif self.category_map is not None:
            self._detectable = frozenset(self.category_map.values())
        else:
            self._detectable = frozenset(seen)
        self._detections: dict[int, Detections] = {}
        for image_id, dets in grouped.items():
            dets.sort(key=lambda d: -d[0])  # highest score first, as torchvision returns them
            boxes = torch.tensor([d[1] for d in dets], dtype=torch.float32)
            boxes[:, 2:] += boxes[:, :2]  # xywh → xyxy
            self._detections[image_id] = {
                "boxes": boxes,
                "scores": torch.tensor([d[0] for d in dets], dtype=torch.float32),
                "labels": torch.tensor([d[2] for d in dets], dtype=torch.int64),
            }
        log.info(
            "read %d detections of %d images from %s",
            sum(len(d["labels"]) for d in self._detections.values()),
            len(self._detections),
            self.path,
        )

    def _load(self) -> list[Any]:
        if not self.path.is_file():
            raise FileNotFoundError(f"detection results file {self.path} does not exist")
        try:
            with self.path.open("rb") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{self.path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})"
            ) from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not isinstance(data, list):
            raise ValueError(
                f"{self.path}: expected a JSON list of COCO detection results, got {type(data).__name__}"
            )
        if not data:
            log.warning("%s holds no detections: every image gets none", self.path)
        return data

    def _parse(self, entry: Any, index: int) -> tuple[int, int, list[float], float]:
        where = f"{self.path}: entry {index}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        missing = [k for k in _KEYS if k not in entry]
        if missing:
            raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
        ids = []
        for key in ("image_id", "category_id"):
            value = entry[key]
            if not _number(value) or value != int(value):
                raise ValueError(f"{where}: {key} must be an integer, got {value!r}")
            ids.append(int(value))
        bbox = entry["bbox"]
        if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(_number(v) for v in bbox):
            raise ValueError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"{where}: bbox width and height must be >= 0, got {bbox!r}")
        score = entry["score"]
        if not _number(score):
            raise ValueError(f"{where}: score must be a finite number, got {score!r}")
        return ids[0], ids[1], [float(v) for v in bbox], float(score)

    @property
    def detectable(self) -> frozenset[int]:
        return self._detectable

    def detections(self, image_id: int) -> Detections:
        """The detections of one image (empty when the file has none for it)."""
        if self.image_ids is not None and image_id not in self.image_ids:
            raise ValueError(f"image id {image_id} is not among the image_ids given for {self.path}")
        found = self._detections.get(image_id)
        return _empty() if found is None else {k: v.clone() for k, v in found.items()}

    def detect(self, images: Sequence[torch.Tensor], image_ids: Sequence[int]) -> list[Detections]:
        if len(images) != len(image_ids):
            raise ValueError(f"got {len(images)} images but {len(image_ids)} image ids")
        return [self.detections(int(i)) for i in image_ids]
