"""In-process detectors from ``torchvision.models.detection``.

Nothing is downloaded: models are built with ``weights=None, weights_backbone=None`` and trained
weights come from a local file (a torchvision state dict, e.g. ``fasterrcnn_resnet50_fpn_coco-*.pth``
fetched once by hand, or a Lightning checkpoint of a module that holds the detector as ``model``).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torchvision.models import detection

from detdiffusion.detectors.base import Detections, Detector, LabelMap
from detdiffusion.detectors.small import fasterrcnn_small

__all__ = ["Architecture", "TorchvisionDetector"]

log = logging.getLogger(__name__)

#: torchvision detection builders this class knows; ``fasterrcnn_resnet50_fpn`` is the paper's
#: trainability detector. ``fasterrcnn_small`` (``detdiffusion.detectors.small``) is ours: torchvision's
#: Faster R-CNN on a thin backbone that trains from scratch on a CPU in minutes, for small images.
Architecture = Literal[
    "fasterrcnn_small",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "retinanet_resnet50_fpn",
    "fcos_resnet50_fpn",
]

#: State-dict key of each family's classification weight; its first dimension is
#: ``num_classes`` times the anchors per location (RetinaNet: 9; Faster R-CNN, FCOS: 1).
_CLASS_WEIGHT_KEYS = (
    "roi_heads.box_predictor.cls_score.weight",
    "head.classification_head.cls_logits.weight",
)


def _build(
    architecture: str,
    num_classes: int,
    score_threshold: float,
    max_detections: int,
    min_size: int,
    max_size: int,
) -> nn.Module:
    kwargs: dict[str, Any] = {"min_size": min_size, "max_size": max_size}
    if architecture.startswith("fasterrcnn"):
        kwargs |= {"box_score_thresh": score_threshold, "box_detections_per_img": max_detections}
    else:
        kwargs |= {"score_thresh": score_threshold, "detections_per_img": max_detections}
    if architecture == "fasterrcnn_small":
        return fasterrcnn_small(num_classes, **kwargs)
    builder = getattr(detection, architecture)
    return builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)


class TorchvisionDetector(Detector):
    """A ``torchvision.models.detection`` model whose labels are mapped to dataset category ids.

    torchvision's label 0 is background, so ``num_classes`` is the dataset's class count + 1 and
    ``category_ids[i]`` is the dataset id of label ``i + 1``. For a detector trained on another
    label set (e.g. torchvision's COCO models, whose labels are COCO's 91 category ids) give an
    explicit ``label_map`` instead; its labels that the dataset lacks are dropped.

    Args:
        architecture: the torchvision builder.
        num_classes: classes including background (dataset classes + 1); None: from ``category_ids``.
        category_ids: dataset category id of detector labels 1, 2, … (``LabelMap.identity``).
        label_map: ``{detector label: dataset category id}``, instead of ``category_ids``.
        weights: a local file: a torchvision state dict, or a Lightning checkpoint whose
            ``state_dict`` holds the detector under ``model.``. None: random initialisation.
        score_threshold: drop detections scoring below this (torchvision's post-processing).
        max_detections: keep at most this many detections per image.
        batch_size: images per forward pass in ``detect``.
        device: ``"cuda"``, ``"cpu"``, …; None: CUDA when available.
        amp: run under fp16 autocast on CUDA (ignored on other devices).
        min_size: torchvision resizes the shorter image side to this (800 for COCO; for small
            images such as 64 px shapes use about the image size).
        max_size: and the longer side to at most this.
    """

    def __init__(
        self,
        architecture: Architecture = "fasterrcnn_resnet50_fpn",
        num_classes: int | None = None,
        category_ids: list[int] | None = None,
        label_map: dict[int, int] | None = None,
        weights: str | Path | None = None,
        score_threshold: float = 0.05,
        max_detections: int = 100,
        batch_size: int = 8,
        device: str | None = None,
        amp: bool = True,
        min_size: int = 800,
        max_size: int = 1333,
    ) -> None:
        if architecture not in Architecture.__args__:
            raise ValueError(
                f"architecture must be one of {', '.join(Architecture.__args__)}, got {architecture!r}"
            )
        if (category_ids is None) == (label_map is None):
            raise ValueError("give exactly one of category_ids and label_map")
        if category_ids is not None:
            if len(set(category_ids)) != len(category_ids):
                raise ValueError(f"category_ids has duplicates: {category_ids}")
            if num_classes is None:
                num_classes = len(category_ids) + 1
            mapping = LabelMap.identity(category_ids)
        else:
            mapping = LabelMap({int(k): int(v) for k, v in label_map.items()})  # type: ignore[union-attr]
        if num_classes is None:
            raise ValueError("num_classes is required with label_map")
        if num_classes < 2:
            raise ValueError(f"num_classes counts background too and must be >= 2, got {num_classes}")
        bad = sorted(k for k in mapping.to_dataset if not 1 <= k < num_classes)
        if bad:
            raise ValueError(
                f"detector labels {bad} are outside 1..{num_classes - 1} (num_classes={num_classes}, "
                "label 0 is background)"
            )
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if batch_size < 1 or max_detections < 1:
            raise ValueError(
                f"batch_size and max_detections must be >= 1, got {batch_size}, {max_detections}"
            )
        if not 0 < min_size <= max_size:
            raise ValueError(f"expected 0 < min_size <= max_size, got {min_size}, {max_size}")

        self.architecture = architecture
        self.num_classes = num_classes
        self.label_map = mapping
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.amp = amp
        self.model = _build(architecture, num_classes, score_threshold, max_detections, min_size, max_size)
        if weights is not None:
            self.load_weights(weights)
        self.model.to(self.device).eval()

    @property
    def detectable(self) -> frozenset[int]:
        return self.label_map.detectable

    def load_weights(self, path: str | Path) -> None:
        """Load a torchvision state dict or a Lightning checkpoint (keys under ``model.``) into ``model``."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"detector weights {path} do not exist")
        try:
            # weights_only: a checkpoint is data, never code to run.
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"{path}: holds objects other than tensors and plain containers, so it is not loaded "
                "(torch.load weights_only). Save just the state dict: torch.save(model.state_dict(), ...). "
                f"({e})"
            ) from None
        except RuntimeError as e:
            raise ValueError(f"{path}: not a PyTorch checkpoint ({e})") from None
        state = _state_dict(checkpoint, path)
        own = self.model.state_dict()
        key = next(k for k in _CLASS_WEIGHT_KEYS if k in own)
        if key not in state:
            raise ValueError(f"{path}: has no {key!r}; is it a {self.architecture} state dict?")
        per_class = own[key].shape[0] // self.num_classes
        found = state[key].shape[0] // per_class
        if found != self.num_classes:
            raise ValueError(
                f"{path}: weights are for {found} classes (incl. background), the detector has "
                f"num_classes={self.num_classes}"
            )
        try:
            result = self.model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"{path}: does not fit {self.architecture}: {e}") from None
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{path}: does not fit {self.architecture}: missing keys {result.missing_keys[:5]}, "
                f"unexpected keys {result.unexpected_keys[:5]}"
            )
        log.info("loaded %s weights from %s", self.architecture, path)

    def detect(self, images: Sequence[torch.Tensor], image_ids: Sequence[int]) -> list[Detections]:
        if len(images) != len(image_ids):
            raise ValueError(f"got {len(images)} images but {len(image_ids)} image ids")
        for image, image_id in zip(images, image_ids, strict=True):
            if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
                raise ValueError(
                    f"image id {image_id}: expected a (3, H, W) float image in [0, 1], "
                    f"got {tuple(image.shape)} {image.dtype}"
                )
        self.model.eval()
        out: list[Detections] = []
        autocast = torch.autocast("cuda", enabled=self.amp and self.device.type == "cuda")
        with torch.inference_mode(), autocast:
            for start in range(0, len(images), self.batch_size):
                batch = [im.to(self.device, torch.float32) for im in images[start : start + self.batch_size]]
                for raw in self.model(batch):
                    dets = {
                        "boxes": raw["boxes"].float().cpu(),
                        "scores": raw["scores"].float().cpu(),
                        "labels": raw["labels"].cpu(),
                    }
                    out.append(self.label_map.apply(dets))
        return out


def _state_dict(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    """The detector's tensors: a plain state dict, or a Lightning ``state_dict`` with ``model.`` stripped."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in checkpoint.values()
    ):
        raise ValueError(f"{path}: expected a state dict (names → tensors) or a Lightning checkpoint")
    if any(k.startswith("model.") for k in checkpoint):
        # A LightningModule holding the detector as ``self.model``; its other keys (metrics, EMA) are not
        # the detector's.
        return {k.removeprefix("model."): v for k, v in checkpoint.items() if k.startswith("model.")}
    return dict(checkpoint)
