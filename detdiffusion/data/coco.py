"""COCO-format layouts: instances JSON, optionally merged with a COCO-Stuff JSON, checked and filtered.

The JSON is read and validated here rather than by ``pycocotools.coco.COCO`` (which prints to
stdout and fails on bad data with bare asserts), so every mistake names the file and the image
or annotation id. Masks are decoded with ``pycocotools.mask`` (polygons and RLE).

Policy for bad data: structural mistakes (malformed JSON, missing keys, duplicate or unknown
ids, image paths outside the image folder, missing image files) are errors. Boxes with zero or
negative size or NaN are skipped and counted; boxes reaching outside the image are clipped and
counted. Both counts are in the ``FilterReport`` and logged.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from detdiffusion.layout.types import Attribute

log = logging.getLogger(__name__)

#: Annotation field read for perception-aware attributes (written by ``detdiffusion attributes``).
ATTRIBUTE_FIELD = "attribute"


@dataclass(frozen=True)
class Category:
    """A dataset class. ``is_stuff``: a COCO-Stuff stuff class (``isthing: 0``, or from the stuff JSON)."""

    id: int
    name: str
    is_stuff: bool = False
    supercategory: str = ""


@dataclass(frozen=True)
class Annotation:
    """One object of an image.

    Attributes:
        id: annotation id.
        category_id: category id.
        box: pixel ``(x0, y0, x1, y1)``, clipped to the image.
        segmentation: COCO polygons (list of flat coordinate lists) or RLE dict; None: box only.
        attribute: perception-aware attribute, from the annotation's ``attribute`` field.
        iscrowd: COCO crowd flag.
    """

    id: int
    category_id: int
    box: tuple[float, float, float, float]
    segmentation: Any = field(default=None, repr=False)
    attribute: Attribute = Attribute.NONE
    iscrowd: bool = False

    @property
    def box_area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)


@dataclass(frozen=True)
class ImageRecord:
    """An image and its annotations (after filtering)."""

    id: int
    file_name: str
    path: Path
    width: int
    height: int
    annotations: tuple[Annotation, ...] = ()


@dataclass(frozen=True)
class FilterConfig:
    """Which objects and images to keep (after LostGAN / LAMA's COCO-Stuff setting)."""

    min_object_area: float = 0.02
    """Keep objects whose box covers more than this fraction of the image (0 keeps all)."""
    drop_crowd: bool = True
    """Drop crowd annotations (``iscrowd: 1``)."""
    drop_categories: tuple[str, ...] = ("other",)
    """Drop annotations of these category names (COCO-Stuff's catch-all ``other``)."""
    min_objects: int = 3
    """Drop images with fewer objects left than this."""
    max_objects: int | None = 8
    """Drop images with more objects left than this (None: no limit)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_object_area < 1.0:
            raise ValueError(f"filters.min_object_area must be in [0, 1), got {self.min_object_area}")
        if self.min_objects < 0:
            raise ValueError(f"filters.min_objects must be >= 0, got {self.min_objects}")
        if self.max_objects is not None and self.max_objects < max(self.min_objects, 1):
            raise ValueError(
                f"filters.max_objects ({self.max_objects}) must be >= 1 and >= "
                f"filters.min_objects ({self.min_objects})"
            )
        object.__setattr__(self, "drop_categories", tuple(self.drop_categories))


#: Filters that keep every valid annotation and image: for files read as they are (attribute
#: labelling, filters and scoring of synthetic data).
KEEP_ALL = FilterConfig(
    min_object_area=0.0, drop_crowd=False, drop_categories=(), min_objects=0, max_objects=None
)


@dataclass
class FilterReport:
    """What reading and filtering did, in counts."""

    images_in: int = 0
    annotations_in: int = 0
    invalid_box: int = 0
    """Skipped: box with zero or negative size, NaN, or wholly outside the image."""
    clipped_box: int = 0
    """Kept after clipping: box reaching outside the image."""
    crowd: int = 0
    dropped_category: int = 0
    too_small: int = 0
    images_too_few_objects: int = 0
    images_too_many_objects: int = 0
    images_out: int = 0
    annotations_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def format(self) -> str:
        """A table for people."""
        width = max(len(k) for k in self.as_dict())
        return "\n".join(f"  {k.replace('_', ' '):<{width}}  {v:>9,}" for k, v in self.as_dict().items())


@dataclass(frozen=True)
class CocoLayouts:
    """A COCO-format dataset read, checked and filtered.

    Attributes:
        categories: categories by id (all of them, also ones no kept annotation uses).
        images: kept images in file order.
        report: counts of what was skipped, clipped and filtered.
        sources: the JSON files read.
        images_dir: the image folder.
    """

    categories: Mapping[int, Category]
    images: tuple[ImageRecord, ...]
    report: FilterReport
    sources: tuple[Path, ...]
    images_dir: Path

    def __len__(self) -> int:
        return len(self.images)


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg}); is the file truncated?"
        ) from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{path}: missing the top-level key {key!r}")
        if not isinstance(data[key], list):
            raise ValueError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data


def _require(entry: Any, keys: Iterable[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")


def _is_number(value: Any) -> bool:
    """A finite JSON number (not a bool, not a numeric string)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any, where: str, name: str) -> int:
    if not _is_number(value) or value != int(value):
        raise ValueError(f"{where}: {name} must be an integer, got {value!r}")
    return int(value)


def _where(path: Path, kind: str, index: int, entry: Any) -> str:
    """``file: image id 7`` where the entry has a usable id, else ``file: images[3]``."""
    if isinstance(entry, dict) and _is_number(entry.get("id")):
        return f"{path}: {kind} id {entry['id']}"
    return f"{path}: {kind}s[{index}]"


def _resolve(images_dir: Path, file_name: Any, where: str) -> Path:
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"{where}: file_name must be a non-empty string, got {file_name!r}")
    if Path(file_name).is_absolute() or ".." in Path(file_name).parts:
        raise ValueError(
            f"{where}: file_name {file_name!r} escapes the image folder; give a path relative to it"
        )
    path = images_dir / file_name
    if not path.resolve().is_relative_to(images_dir.resolve()):
        raise ValueError(
            f"{where}: file_name {file_name!r} escapes the image folder {images_dir} (via a link)"
        )
    return path


def _check_segmentation(segm: Any, height: int, width: int, where: str) -> Any:
    if segm is None or segm == []:
        return None
    if isinstance(segm, list):
        for poly in segm:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                raise ValueError(f"{where}: a polygon must be a flat list of >= 3 x, y pairs")
            if not all(_is_number(v) for v in poly):
                raise ValueError(f"{where}: polygon coordinates must be finite numbers")
        return segm
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if not isinstance(segm["size"], list | tuple) or list(segm["size"]) != [height, width]:
            raise ValueError(f"{where}: RLE size {segm['size']} differs from the image's [{height}, {width}]")
        return segm
    raise ValueError(f"{where}: segmentation must be polygons or an RLE dict with 'counts' and 'size'")


def read_coco(
    annotations: str | Path,
    images_dir: str | Path,
    stuff_annotations: str | Path | None = None,
    filters: FilterConfig | None = None,
    check_files: bool = True,
    strict_boxes: bool = False,
) -> CocoLayouts:
    """Read a COCO instances JSON (and optionally a COCO-Stuff JSON of the same images).

    Args:
        annotations: instances JSON (``images``, ``annotations``, ``categories``).
        images_dir: folder the images' ``file_name`` are relative to.
        stuff_annotations: a stuff JSON over the same images; its categories become stuff.
        filters: which objects and images to keep (default ``FilterConfig()``).
        check_files: check up front that every kept image file exists.
        strict_boxes: a box that is empty, inverted, NaN or reaches outside its image is an error
            (for layouts to generate from) instead of a counted skip or clip (for real datasets).
    """
    filters = filters or FilterConfig()
    images_dir = Path(images_dir).expanduser()
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    sources = [Path(annotations).expanduser()]
    if stuff_annotations is not None:
        sources.append(Path(stuff_annotations).expanduser())

    report = FilterReport()
    categories: dict[int, Category] = {}
    images: dict[int, tuple[str, Path, int, int]] = {}
    objects: dict[int, list[Annotation]] = {}
    annotation_ids: set[int] = set()
    drop = set(filters.drop_categories)
    clipped_ids: list[int] = []
    invalid_ids: list[int] = []

    for source_index, path in enumerate(sources):
        data = _load_json(path)
        from_stuff_file = source_index == 1
        for i, cat in enumerate(data["categories"]):
            where = _where(path, "category", i, cat)
            _require(cat, ("id", "name"), where)
            cid = _int(cat["id"], where, "id")
            is_stuff = not cat["isthing"] if "isthing" in cat else from_stuff_file
            new = Category(cid, str(cat["name"]), bool(is_stuff), str(cat.get("supercategory", "")))
            if cid in categories and categories[cid].name != new.name:
                raise ValueError(
                    f"{where}: duplicate category id ({categories[cid].name!r} and {new.name!r})"
                )
            # A class listed twice under one name (in one file or in both) keeps its first entry,
            # so the stuff file cannot turn an instances-file thing into stuff.
            categories.setdefault(cid, new)
        seen: set[int] = set()
        for i, img in enumerate(data["images"]):
            where = _where(path, "image", i, img)
            _require(img, ("id", "file_name", "width", "height"), where)
            iid = _int(img["id"], where, "id")
            width, height = _int(img["width"], where, "width"), _int(img["height"], where, "height")
            if width <= 0 or height <= 0:
                raise ValueError(f"{where}: width and height must be positive, got {width}x{height}")
            entry = (img["file_name"], _resolve(images_dir, img["file_name"], where), width, height)
            if iid in seen:
                raise ValueError(f"{where}: duplicate image id")
            seen.add(iid)
            if iid in images:
                if from_stuff_file and images[iid] == entry:
                    continue
                raise ValueError(
                    f"{where}: file name or size differs from the instances file's {images[iid][:1]}"
                )
            images[iid] = entry
            objects[iid] = []
            report.images_in += 1
        for i, ann in enumerate(data["annotations"]):
            where = _where(path, "annotation", i, ann)
            _require(ann, ("id", "image_id", "category_id", "bbox"), where)
            aid = _int(ann["id"], where, "id")
            if aid in annotation_ids:
                raise ValueError(f"{where}: duplicate annotation id")
            annotation_ids.add(aid)
            report.annotations_in += 1
            iid = _int(ann["image_id"], where, "image_id")
            if iid not in images:
                raise ValueError(f"{where}: image_id {iid} is not in 'images'")
            cid = _int(ann["category_id"], where, "category_id")
            if cid not in categories:
                raise ValueError(f"{where}: category_id {cid} is not in 'categories'")
            _, _, width, height = images[iid]
            box = _clip_box(ann["bbox"], width, height)
            if strict_boxes and (box is None or box[1]):
                raise ValueError(
                    f"{where}: layout (image id) {iid}: bbox {ann['bbox']} is empty, not [x, y, w, h] with "
                    f"w, h > 0, or reaches outside the {width}x{height} image"
                )
            if box is None:
                report.invalid_box += 1
                invalid_ids.append(aid)
                continue
            box, clipped = box
            if clipped:
                report.clipped_box += 1
                clipped_ids.append(aid)
            # Checked before filtering, so a mistake is reported whatever the filters are.
            segmentation = _check_segmentation(ann.get("segmentation"), height, width, where)
            attribute = Attribute.parse(ann.get(ATTRIBUTE_FIELD), f"{where}: ")
            crowd = bool(ann.get("iscrowd", 0))
            if crowd and filters.drop_crowd:
                report.crowd += 1
                continue
            if categories[cid].name in drop:
                report.dropped_category += 1
                continue
            if (box[2] - box[0]) * (box[3] - box[1]) <= filters.min_object_area * width * height:
                report.too_small += 1
                continue
            objects[iid].append(Annotation(aid, cid, box, segmentation, attribute, crowd))

    if invalid_ids:
        log.warning(
            "skipped %d annotations with an empty, negative or NaN box (ids %s%s)",
            len(invalid_ids),
            invalid_ids[:5],
            " …" if len(invalid_ids) > 5 else "",
        )
    if clipped_ids:
        log.warning(
            "clipped %d boxes reaching outside their image (ids %s%s)",
            len(clipped_ids),
            clipped_ids[:5],
            " …" if len(clipped_ids) > 5 else "",
        )

    kept: list[ImageRecord] = []
    for iid, (file_name, path, width, height) in images.items():
        anns = objects[iid]
        if len(anns) < filters.min_objects:
            report.images_too_few_objects += 1
            continue
        if filters.max_objects is not None and len(anns) > filters.max_objects:
            report.images_too_many_objects += 1
            continue
        kept.append(ImageRecord(iid, file_name, path, width, height, tuple(anns)))
    report.images_out = len(kept)
    report.annotations_out = sum(len(r.annotations) for r in kept)

    if check_files:
        missing = [r for r in kept if not r.path.is_file()]
        if missing:
            shown = ", ".join(f"{r.path} (image id {r.id})" for r in missing[:5])
            raise FileNotFoundError(f"{len(missing)} image files are missing from {images_dir}: {shown}")
    return CocoLayouts(categories, tuple(kept), report, tuple(sources), images_dir)


def _clip_box(bbox: Any, width: int, height: int) -> tuple[tuple[float, float, float, float], bool] | None:
    """Pixel xyxy of a COCO ``[x, y, w, h]`` clipped to the image and whether it was; None if invalid."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return None
    if not all(_is_number(v) for v in bbox):
        return None
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return None
    box = (max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height)))
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return box, box != (x, y, x + w, y + h)
