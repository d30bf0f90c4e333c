"""Perception-aware attributes (DetDiffusion §3.2, DESIGN.md §1): label each object easy, hard or background.

A detector runs on the real image; its predictions with score > γ are kept. A ground-truth
object is ``easy`` when a kept prediction of the same class overlaps it with IoU > β, else
``hard``. Objects of a class the detector cannot detect (stuff, classes outside its label set)
are ``background``. γ and β are not published; both default to 0.5.

Both comparisons are strict, as the paper writes them: a prediction scoring exactly γ is
dropped, and an IoU of exactly β is not a match.

``label_attributes`` writes the result into a copy of a COCO JSON: every field of the input is
kept, each annotation gains an ``attribute`` field (the one ``read_coco`` reads) and
``info.detdiffusion_attributes`` records how the labels were made. Policy:

- every annotation of the file is labelled, crowd ones included (a crowd box covers a group,
  so it is mostly ``hard``; the default ``FilterConfig`` drops crowd objects anyway);
- annotations with an invalid box (zero or negative size, NaN, wholly outside the image; the
  same rule as ``read_coco``) are counted and get no ``attribute`` (a stale one is removed);
- boxes reaching outside the image are clipped before matching, as ``read_coco`` does;
- images without annotations are not shown to the detector.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import box_iou

from detdiffusion.data.coco import ATTRIBUTE_FIELD, KEEP_ALL, ImageRecord, _load_json, read_coco
from detdiffusion.detectors.base import Detections, Detector
from detdiffusion.detectors.running import detector_description, iter_detections
from detdiffusion.files import write_json_atomic
from detdiffusion.layout.types import Attribute

__all__ = ["AttributeReport", "assign_attributes", "label_attributes"]

log = logging.getLogger(__name__)

#: Key of the provenance record under the output JSON's ``info``.
INFO_KEY = "detdiffusion_attributes"

_LABELS = (Attribute.EASY, Attribute.HARD, Attribute.BACKGROUND)


def _check_threshold(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def detected(
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    detections: Detections,
    min_score: float,
    min_iou: float,
    strict: bool,
) -> torch.Tensor:
    """``(N,)`` bool: which objects a detection of the same class overlaps (one IoU matrix).

    A detection counts when its score is above ``min_score`` and its IoU with the object above
    ``min_iou``: strictly (``>``, the attributes' γ and β) or not (``>=``). NaN IoUs never count.
    """
    gt_boxes = torch.as_tensor(gt_boxes, dtype=torch.float64).reshape(-1, 4)
    gt_labels = torch.as_tensor(gt_labels, dtype=torch.int64).reshape(-1)
    above = torch.gt if strict else torch.ge
    scores = detections["scores"].detach().cpu().reshape(-1)
    keep = above(scores, min_score)
    boxes = detections["boxes"].detach().cpu().to(torch.float64).reshape(-1, 4)[keep]
    labels = detections["labels"].detach().cpu().to(torch.int64).reshape(-1)[keep]
    if not boxes.shape[0] or not gt_boxes.shape[0]:
        return torch.zeros(gt_boxes.shape[0], dtype=torch.bool)
    match = above(box_iou(gt_boxes, boxes), min_iou) & (gt_labels[:, None] == labels[None, :])
    return match.any(dim=1)


def assign_attributes(
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    detections: Detections,
    detectable: Collection[int],
    is_stuff: torch.Tensor | None = None,
    gamma: float = 0.5,
    beta: float = 0.5,
) -> list[Attribute]:
    """The perception-aware attribute of each ground-truth object of one image.

    Args:
        gt_boxes: ``(N, 4)`` xyxy pixel boxes of the objects.
        gt_labels: ``(N,)`` dataset category ids of the objects.
        detections: the detector's output for the image (``boxes`` xyxy, ``scores``, ``labels``
            in dataset ids).
        detectable: dataset category ids the detector can report; other classes are background.
        is_stuff: ``(N,)`` bool, objects of stuff classes (background whatever was detected).
        gamma: predictions are kept when their score is strictly greater than this.
        beta: a kept prediction of the same class matches when its IoU is strictly greater.

    Returns:
        One attribute per object, in order: easy, hard or background.
    """
    gamma, beta = _check_threshold(gamma, "gamma"), _check_threshold(beta, "beta")
    gt_boxes = torch.as_tensor(gt_boxes, dtype=torch.float64).reshape(-1, 4)
    gt_labels = torch.as_tensor(gt_labels, dtype=torch.int64).reshape(-1)
    n = gt_boxes.shape[0]
    if gt_labels.shape[0] != n:
        raise ValueError(f"expected one label per box, got {n} boxes and {gt_labels.shape[0]} labels")
    if n == 0:
        return []
    known = torch.isin(gt_labels, torch.tensor(sorted(int(c) for c in detectable), dtype=torch.int64))
    if is_stuff is not None:
        is_stuff = torch.as_tensor(is_stuff, dtype=torch.bool).reshape(-1)
        if is_stuff.shape[0] != n:
            raise ValueError(f"expected one is_stuff flag per box, got {is_stuff.shape[0]} for {n} boxes")
        known &= ~is_stuff

    easy = detected(gt_boxes, gt_labels, detections, gamma, beta, strict=True)
    codes = torch.where(easy, 0, 1)
    codes = torch.where(known, codes, 2)  # (N,) index into _LABELS
    return [_LABELS[c] for c in codes.tolist()]


@dataclass
class AttributeReport:
    """What ``label_attributes`` did: attributes per class and what it skipped.

    Attributes:
        per_class: ``{class name: {"easy": n, "hard": n, "background": n}}`` in category order.
        images: images shown to the detector (those with at least one valid annotation).
        annotations: annotations labelled.
        crowd: of those, crowd annotations.
        skipped_invalid_box: annotations left without an attribute (invalid box).
        gamma: score threshold used.
        beta: IoU threshold used.
    """

    per_class: dict[str, dict[str, int]] = field(default_factory=dict)
    images: int = 0
    annotations: int = 0
    crowd: int = 0
    skipped_invalid_box: int = 0
    gamma: float = 0.5
    beta: float = 0.5

    def totals(self) -> dict[str, int]:
        return {a.value: sum(row[a.value] for row in self.per_class.values()) for a in _LABELS}

    def as_dict(self) -> dict[str, Any]:
        return {
            "gamma": self.gamma,
            "beta": self.beta,
            "images": self.images,
            "annotations": self.annotations,
            "crowd": self.crowd,
            "skipped_invalid_box": self.skipped_invalid_box,
            "totals": self.totals(),
            "per_class": self.per_class,
        }

    def format(self) -> str:
        """A table for people: one row per class, then the totals."""
        names = [*self.per_class, "total"]
        width = max(len(n) for n in names)
        head = f"  {'class':<{width}}  {'easy':>9}  {'hard':>9}  {'background':>10}  {'% easy':>6}"
        lines = [f"Attributes (score > {self.gamma:g}, IoU > {self.beta:g}):", head]
        for name, row in [*self.per_class.items(), ("total", self.totals())]:
            found = row["easy"] + row["hard"]
            share = f"{100.0 * row['easy'] / found:5.1f}%" if found else "     -"
            easy, hard, background = row["easy"], row["hard"], row["background"]
            lines.append(f"  {name:<{width}}  {easy:>9,}  {hard:>9,}  {background:>10,}  {share:>6}")
        lines.append(
            f"{self.annotations:,} annotations labelled ({self.crowd:,} crowd) on {self.images:,} images; "
            f"{self.skipped_invalid_box:,} skipped (invalid box)"
        )
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """A stacked bar per class (easy, hard, background) as a PNG, written atomically."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        names = list(self.per_class)
        fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(names) + 2.0), 3.5), layout="constrained")
        bottom = [0] * len(names)
        colours = {"easy": "tab:green", "hard": "tab:red", "background": "tab:gray"}
        for a in _LABELS:
            values = [self.per_class[n][a.value] for n in names]
            ax.bar(names, values, bottom=bottom, label=a.value, color=colours[a.value])
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_ylabel("objects")
        ax.set_title(f"Perception-aware attributes (score > {self.gamma:g}, IoU > {self.beta:g})")
        ax.tick_params(axis="x", labelrotation=90 if len(names) > 8 else 0)
        ax.legend()
        tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
        try:
            fig.savefig(tmp, dpi=100, metadata={"Software": None})
            os.replace(tmp, path)
        finally:
            plt.close(fig)
            tmp.unlink(missing_ok=True)
        return path


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def record_attributes(
    record: ImageRecord,
    detections: Detections,
    detectable: frozenset[int],
    is_stuff_class: Mapping[int, bool],
    gamma: float = 0.5,
    beta: float = 0.5,
) -> list[Attribute]:
    """``assign_attributes`` of one image's annotations, in their order."""
    anns = record.annotations
    return assign_attributes(
        torch.tensor([a.box for a in anns], dtype=torch.float64),
        torch.tensor([a.category_id for a in anns], dtype=torch.int64),
        detections,
        detectable,
        torch.tensor([is_stuff_class[a.category_id] for a in anns], dtype=torch.bool),
        gamma,
        beta,
    )


def label_attributes(
    annotations: str | Path,
    images: str | Path,
    detector: Detector,
    out: str | Path,
    gamma: float = 0.5,
    beta: float = 0.5,
    batch_size: int = 8,
    stuff: str | Path | None = None,
    progress: bool = True,
    description: str | None = None,
) -> AttributeReport:
    """Run ``detector`` over a COCO dataset and write a copy of its JSON with an attribute per annotation.

    Args:
        annotations: COCO JSON to label (never modified).
        images: folder the images' ``file_name`` are relative to.
        detector: the detector; its ``detectable`` ids decide what is background.
        out: where the labelled JSON goes (written atomically; must differ from ``annotations``).
        gamma: keep predictions scoring strictly above this.
        beta: a match needs an IoU strictly above this.
        batch_size: images per ``detector.detect`` call.
        stuff: a COCO-Stuff JSON; its categories count as stuff (background), besides the
            categories marked ``isthing: 0`` in ``annotations``.
        progress: show a progress bar.
        description: how the detector is recorded in ``info`` (default: its repr or class path).
    """
    annotations, out = Path(annotations).expanduser(), Path(out).expanduser()
    gamma, beta = _check_threshold(gamma, "gamma"), _check_threshold(beta, "beta")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if _same_file(out, annotations):
        raise ValueError(f"out {out} is the input annotation file; write the labelled copy elsewhere")

    # read_coco checks the file (ids, categories, image paths, files present) and clips boxes.
    coco = read_coco(annotations, images, filters=KEEP_ALL, check_files=True)
    stuff_ids = {int(c["id"]) for c in _load_json(Path(stuff).expanduser())["categories"]} if stuff else set()
    is_stuff_class = {cid: c.is_stuff or cid in stuff_ids for cid, c in coco.categories.items()}
    detectable = frozenset(int(c) for c in detector.detectable)

    attributes: dict[int, Attribute] = {}
    counts: dict[int, Counter[Attribute]] = {cid: Counter() for cid in coco.categories}
    report = AttributeReport(gamma=gamma, beta=beta, skipped_invalid_box=coco.report.invalid_box)
    records = [r for r in coco.images if r.annotations]
    for record, dets in iter_detections(detector, records, batch_size, progress, desc="attributes"):
        labels = record_attributes(record, dets, detectable, is_stuff_class, gamma, beta)
        for ann, attribute in zip(record.annotations, labels, strict=True):
            attributes[ann.id] = attribute
            counts[ann.category_id][attribute] += 1
            report.crowd += ann.iscrowd
    report.images = len(records)
    report.annotations = len(attributes)
    report.per_class = {
        coco.categories[cid].name: {a.value: counts[cid][a] for a in _LABELS}
        for cid in sorted(counts)
        if counts[cid]
    }

    data = _load_json(annotations)
    for ann in data["annotations"]:
        attribute = attributes.get(int(ann["id"]))
        if attribute is None:
            ann.pop(ATTRIBUTE_FIELD, None)  # invalid box: no attribute, and no stale one either
        else:
            ann[ATTRIBUTE_FIELD] = attribute.value
    info = data.setdefault("info", {})
    if not isinstance(info, dict):
        raise ValueError(f"{annotations}: 'info' must be a JSON object, got {type(info).__name__}")
    info[INFO_KEY] = {
        "detector": description or detector_description(detector),
        "detectable": sorted(detectable),
        "source": annotations.name,
        **report.as_dict(),
    }
    write_json_atomic(data, out)
    log.info("wrote %s: %s", out, report.totals())
    return report
