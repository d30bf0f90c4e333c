"""Running any detector over a dataset's images: one loop for ``detect_dataset`` and the attributes."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from detdiffusion.data.coco import CocoLayouts, ImageRecord
from detdiffusion.data.transforms import load_rgb
from detdiffusion.detectors.base import Detections, Detector

__all__ = ["detect_dataset", "detector_description", "iter_detections", "load_image"]

log = logging.getLogger(__name__)


def detector_description(detector: Detector) -> str:
    """The detector's repr, or its class path where that repr would hold a memory address."""
    cls = type(detector)
    name = f"{cls.__module__}.{cls.__qualname__}"
    # object's default repr holds a memory address, which would make outputs differ per run.
    return repr(detector) if cls.__repr__ is not object.__repr__ else name


def load_image(record: ImageRecord) -> torch.Tensor:
    """``(3, H, W)`` float in [0, 1]; the file's size must be the one the JSON gives."""
    rgb = load_rgb(record.path, record.id)
    height, width = rgb.shape[:2]
    if (width, height) != (record.width, record.height):
        raise ValueError(
            f"{record.path} (image id {record.id}): the file is {width}x{height} but the annotations "
            f"give {record.width}x{record.height}; boxes would not line up with the image"
        )
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)  # (H, W, 3) → (3, H, W)


def iter_detections(
    detector: Detector,
    records: Sequence[ImageRecord],
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "detecting",
) -> Iterator[tuple[ImageRecord, Detections]]:
    """``(record, detections)`` for every record, in order, ``batch_size`` images a ``detect`` call.

    Images of a detector that does not read pixels (a results file) are not decoded. Logs images/s.
    """
    batch_size = detector.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    with tqdm(total=len(records), desc=desc, unit="img", disable=not progress) as bar:
        for i in range(0, len(records), batch_size):
            chunk = records[i : i + batch_size]
            images = [load_image(r) if detector.reads_pixels else torch.empty(3, 0, 0) for r in chunk]
            with torch.inference_mode():
                results = detector.detect(images, [r.id for r in chunk])
            if len(results) != len(chunk):
                raise ValueError(
                    f"{detector_description(detector)} returned {len(results)} results "
                    f"for {len(chunk)} images"
                )
            yield from zip(chunk, results, strict=True)
            bar.update(len(chunk))
    elapsed = time.perf_counter() - start
    rate = len(records) / max(elapsed, 1e-9)
    log.info("detected %d images in %.1f s (%.1f images/s)", len(records), elapsed, rate)


def detect_dataset(
    detector: Detector,
    coco: CocoLayouts,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict[int, Detections]:
    """Detections of every image of ``coco`` by image id (images read from their records' paths).

    Args:
        detector: any detector.
        coco: the dataset.
        batch_size: images per ``detect`` call; None: the detector's own.
        progress: show a progress bar (images/s).
    """
    return {r.id: dets for r, dets in iter_detections(detector, coco.images, batch_size, progress)}
