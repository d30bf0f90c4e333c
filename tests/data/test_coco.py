"""Tests of the COCO reader: parsing, filters, the stuff merge and the bad-data policy."""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from detdiffusion.data.coco import Annotation, Category, CocoLayouts, FilterConfig, ImageRecord, read_coco
from detdiffusion.layout.types import Attribute

# pycocotools' own mask decoding trips a NumPy 2 deprecation; nothing here to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

#: Keeps every valid object and image, so that tests not about filters see everything.
KEEP_ALL = FilterConfig(
    min_object_area=0.0, drop_crowd=False, drop_categories=(), min_objects=0, max_objects=None
)


def _ann(aid: int, image_id: int, category_id: int, bbox: Any, **extra: Any) -> dict[str, Any]:
    return {"id": aid, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0, **extra}


def _img(iid: int, file_name: str, width: int, height: int) -> dict[str, Any]:
    return {"id": iid, "file_name": file_name, "width": width, "height": height}


def _base() -> dict[str, Any]:
    """Two images (ids 101, 102) with two objects each; annotation ids 5001-5004."""
    return {
        "images": [_img(101, "a.png", 40, 30), _img(102, "sub/b.png", 20, 24)],
        "annotations": [
            _ann(5001, 101, 1, [2, 3, 10, 5]),
            _ann(5002, 101, 2, [20.5, 10.25, 8, 12]),
            _ann(5003, 102, 1, [0, 0, 20, 24]),
            _ann(5004, 102, 2, [4, 6, 5, 5]),
        ],
        "categories": [
            {"id": 1, "name": "person", "supercategory": "human"},
            {"id": 2, "name": "car", "supercategory": "vehicle"},
        ],
    }


def _write(root: Path, data: Any, name: str = "instances.json", images: bool = True) -> tuple[Path, Path]:
    """Write ``data`` as JSON under ``root`` and (unless ``images=False``) a tiny PNG per image."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    if images and isinstance(data, dict):
        for img in data.get("images", []):
            path = images_dir / img["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (img["width"], img["height"]), (10, 20, 30)).save(path)
    ann_path = root / name
    ann_path.write_text(json.dumps(data))
    return ann_path, images_dir


def _read(
    tmp_path: Path, data: dict[str, Any], filters: FilterConfig = KEEP_ALL, **kwargs: Any
) -> CocoLayouts:
    ann_path, images_dir = _write(tmp_path, data)
    return read_coco(ann_path, images_dir, filters=filters, **kwargs)


def _annotations(layouts: CocoLayouts) -> dict[int, Annotation]:
    return {a.id: a for r in layouts.images for a in r.annotations}


def _names(message: str, *parts: object) -> bool:
    return all(re.search(rf"(?<![\w.]){re.escape(str(p))}(?![\w])", message) for p in parts)


def _raises(exc: type[Exception], call: Callable[[], Any], *names: object) -> str:
    """Assert ``call`` raises ``exc`` whose message names each of ``names``; return the message."""
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for name in names:
        assert _names(message, name), f"{name!r} not named in: {message}"
    return message


# --- a valid file -------------------------------------------------------------------------------


def test_reads_images_categories_and_boxes(tmp_path: Path) -> None:
    ann_path, images_dir = _write(tmp_path, _base())
    layouts = read_coco(ann_path, images_dir, filters=KEEP_ALL)

    assert isinstance(layouts, CocoLayouts)
    assert len(layouts) == 2
    assert layouts.sources == (ann_path,)
    assert layouts.images_dir == images_dir
    assert dict(layouts.categories) == {
        1: Category(1, "person", is_stuff=False, supercategory="human"),
        2: Category(2, "car", is_stuff=False, supercategory="vehicle"),
    }
    a, b = layouts.images
    assert isinstance(a, ImageRecord)
    assert (a.id, a.file_name, a.path, a.width, a.height) == (101, "a.png", images_dir / "a.png", 40, 30)
    assert (b.id, b.file_name, b.path, b.width, b.height) == (
        102,
        "sub/b.png",
        images_dir / "sub/b.png",
        20,
        24,
    )
    assert [x.id for x in a.annotations] == [5001, 5002]
    assert [x.id for x in b.annotations] == [5003, 5004]

    anns = _annotations(layouts)
    # COCO [x, y, w, h] → pixel (x0, y0, x1, y1).
    assert anns[5001].box == (2.0, 3.0, 12.0, 8.0)
    assert anns[5002].box == (20.5, 10.25, 28.5, 22.25)
    assert anns[5003].box == (0.0, 0.0, 20.0, 24.0)  # the whole image: not clipped
    assert anns[5004].box == (4.0, 6.0, 9.0, 11.0)
    assert anns[5001].box_area == 50.0
    assert [anns[i].category_id for i in (5001, 5002, 5003, 5004)] == [1, 2, 1, 2]
    assert all(
        x.segmentation is None and x.attribute is Attribute.NONE and not x.iscrowd for x in anns.values()
    )

    report = layouts.report
    assert report.as_dict() == {
        "images_in": 2,
        "annotations_in": 4,
        "invalid_box": 0,
        "clipped_box": 0,
        "crowd": 0,
        "dropped_category": 0,
        "too_small": 0,
        "images_too_few_objects": 0,
        "images_too_many_objects": 0,
        "images_out": 2,
        "annotations_out": 4,
    }
    assert "images in" in report.format()


def test_images_and_categories_keep_file_order_and_unused_categories(tmp_path: Path) -> None:
    data = _base()
    data["images"].reverse()
    data["categories"].append({"id": 7, "name": "unused"})
    layouts = _read(tmp_path, data)
    assert [r.id for r in layouts.images] == [102, 101]
    assert layouts.categories[7] == Category(7, "unused")


def test_segmentations_are_kept(tmp_path: Path) -> None:
    data = _base()
    polygon = [[2.0, 3.0, 12.0, 3.0, 12.0, 8.0, 2.0, 8.0], [30, 20, 35, 20, 33, 25]]
    bitmap = np.zeros((30, 40), dtype=np.uint8, order="F")
    bitmap[10:22, 20:28] = 1
    compressed = mask_utils.encode(bitmap)
    compressed = {
        "size": [int(s) for s in compressed["size"]],
        "counts": compressed["counts"].decode("ascii"),
    }
    # Uncompressed RLE (column-major run lengths starting with zeros), as COCO writes for crowds.
    small = np.zeros((24, 20), dtype=np.uint8)
    small[6:11, 4:9] = 1
    runs, previous, run = [], 0, 0
    for value in small.flatten(order="F"):
        if value != previous:
            runs.append(run)
            previous, run = value, 0
        run += 1
    runs.append(run)
    uncompressed = {"size": [24, 20], "counts": runs}
    data["annotations"][0]["segmentation"] = polygon
    data["annotations"][1]["segmentation"] = compressed
    data["annotations"][2]["segmentation"] = []  # COCO's "no segmentation"
    data["annotations"][3]["segmentation"] = uncompressed

    anns = _annotations(_read(tmp_path, data))
    assert anns[5001].segmentation == polygon
    assert anns[5002].segmentation == compressed
    assert anns[5003].segmentation is None
    assert anns[5004].segmentation == uncompressed
    # Both RLE forms decode to the intended masks.
    assert np.array_equal(mask_utils.decode(anns[5002].segmentation), bitmap)
    rle = mask_utils.frPyObjects(anns[5004].segmentation, 24, 20)
    assert np.array_equal(mask_utils.decode(rle), small)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("easy", Attribute.EASY),
        ("hard", Attribute.HARD),
        ("background", Attribute.BACKGROUND),
        ("HARD", Attribute.HARD),
        ("", Attribute.NONE),
        (None, Attribute.NONE),
    ],
)
def test_attribute_field(tmp_path: Path, value: str | None, expected: Attribute) -> None:
    data = _base()
    data["annotations"][1]["attribute"] = value
    anns = _annotations(_read(tmp_path, data))
    assert anns[5002].attribute is expected
    assert anns[5001].attribute is Attribute.NONE  # field absent


def test_invalid_attribute_names_file_and_annotation(tmp_path: Path) -> None:
    data = _base()
    data["annotations"][2]["attribute"] = "medium"
    ann_path, images_dir = _write(tmp_path, data)
    message = _raises(
        ValueError, lambda: read_coco(ann_path, images_dir, filters=KEEP_ALL), ann_path, "annotation id 5003"
    )
    assert "medium" in message


# --- filters ------------------------------------------------------------------------------------


def test_min_object_area_is_strict(tmp_path: Path) -> None:
    # 40 x 30 image, 1/8 of it is 150 px²: an object of exactly 150 px² is dropped (rule: area > fraction).
    data = _base()
    data["annotations"] = [
        _ann(5001, 101, 1, [0, 0, 15, 10]),  # 150: dropped
        _ann(5002, 101, 1, [0, 0, 15, 10.5]),  # 157.5: kept
        _ann(5003, 101, 1, [0, 0, 1, 1]),  # 1: dropped
        _ann(5004, 101, 1, [-10, 0, 25, 10]),  # 150 after clipping: dropped
        _ann(5005, 102, 1, [0, 0, 20, 24]),  # the whole image: kept
    ]
    filters = FilterConfig(min_object_area=0.125, min_objects=0)
    layouts = _read(tmp_path, data, filters)
    assert set(_annotations(layouts)) == {5002, 5005}
    assert layouts.report.too_small == 3
    assert layouts.report.clipped_box == 1
    assert (layouts.report.annotations_out, layouts.report.images_out) == (2, 2)


def test_min_object_area_zero_keeps_all(tmp_path: Path) -> None:
    data = _base()
    data["annotations"].append(_ann(5005, 101, 1, [0, 0, 0.01, 0.01]))
    layouts = _read(tmp_path, data, FilterConfig(min_object_area=0.0, min_objects=0))
    assert 5005 in _annotations(layouts)
    assert layouts.report.too_small == 0


@pytest.mark.parametrize("drop_crowd", [True, False])
def test_crowd_filter(tmp_path: Path, drop_crowd: bool) -> None:
    data = _base()
    data["annotations"][0]["iscrowd"] = 1
    layouts = _read(tmp_path, data, FilterConfig(min_object_area=0.0, drop_crowd=drop_crowd, min_objects=0))
    anns = _annotations(layouts)
    if drop_crowd:
        assert 5001 not in anns
        assert layouts.report.crowd == 1
        assert layouts.report.annotations_out == 3
    else:
        assert anns[5001].iscrowd
        assert layouts.report.crowd == 0
        assert layouts.report.annotations_out == 4


def test_other_category_dropped(tmp_path: Path) -> None:
    data = _base()
    data["categories"].append({"id": 183, "name": "other"})
    data["annotations"] += [_ann(5005, 101, 183, [0, 0, 30, 30]), _ann(5006, 102, 183, [0, 0, 10, 10])]

    layouts = _read(tmp_path / "default", data, FilterConfig(min_object_area=0.0, min_objects=0))
    assert {5005, 5006}.isdisjoint(_annotations(layouts))
    assert layouts.report.dropped_category == 2
    assert layouts.report.annotations_out == 4
    assert 183 in layouts.categories  # the category itself stays known

    kept = _read(
        tmp_path / "keep", data, FilterConfig(min_object_area=0.0, drop_categories=(), min_objects=0)
    )
    assert {5005, 5006} <= set(_annotations(kept))
    assert kept.report.dropped_category == 0


def test_objects_per_image(tmp_path: Path) -> None:
    counts = {201: 2, 202: 3, 203: 8, 204: 9, 205: 0}
    data: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    aid = 1
    for iid, n in counts.items():
        data["images"].append(_img(iid, f"{iid}.png", 16, 16))
        for _ in range(n):
            data["annotations"].append(_ann(aid, iid, 1, [1, 1, 10, 10]))
            aid += 1
    layouts = _read(tmp_path, data, FilterConfig(min_object_area=0.0))  # defaults: 3 to 8 objects
    assert [r.id for r in layouts.images] == [202, 203]
    report = layouts.report
    assert report.images_too_few_objects == 2  # 2 and 0 objects
    assert report.images_too_many_objects == 1
    assert (report.images_in, report.images_out) == (5, 2)
    assert (report.annotations_in, report.annotations_out) == (22, 11)


def test_object_count_is_after_the_object_filters(tmp_path: Path) -> None:
    # Three objects, one of them crowd: two left, fewer than min_objects=3.
    data = _base()
    data["annotations"].append(_ann(5005, 101, 1, [0, 0, 5, 5], iscrowd=1))
    layouts = _read(tmp_path, data, FilterConfig(min_object_area=0.0, min_objects=3))
    assert layouts.images == ()
    assert layouts.report.crowd == 1
    assert layouts.report.images_too_few_objects == 2
    assert (layouts.report.images_out, layouts.report.annotations_out) == (0, 0)


def test_default_filters_report(tmp_path: Path) -> None:
    # 100 x 100: 2 % is 200 px².
    data: dict[str, Any] = {
        "images": [_img(1, "1.png", 100, 100), _img(2, "2.png", 100, 100)],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "other"}],
        "annotations": [
            _ann(11, 1, 1, [0, 0, 20, 20]),
            _ann(12, 1, 1, [10, 10, 20, 20]),
            _ann(13, 1, 1, [50, 50, 60, 20]),  # clipped to 50 x 20, kept
            _ann(14, 1, 1, [0, 0, 10, 20]),  # exactly 2 %: too small
            _ann(15, 1, 1, [0, 0, 30, 30], iscrowd=1),
            _ann(16, 1, 2, [0, 0, 30, 30]),  # other
            _ann(17, 1, 1, [0, 0, 0, 30]),  # invalid
            _ann(21, 2, 1, [0, 0, 50, 50]),  # image 2: one object, too few
        ],
    }
    layouts = _read(tmp_path, data, FilterConfig())
    assert [r.id for r in layouts.images] == [1]
    assert [a.id for a in layouts.images[0].annotations] == [11, 12, 13]
    assert layouts.images[0].annotations[2].box == (50.0, 50.0, 100.0, 70.0)
    assert layouts.report.as_dict() == {
        "images_in": 2,
        "annotations_in": 8,
        "invalid_box": 1,
        "clipped_box": 1,
        "crowd": 1,
        "dropped_category": 1,
        "too_small": 1,
        "images_too_few_objects": 1,
        "images_too_many_objects": 0,
        "images_out": 1,
        "annotations_out": 3,
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_object_area": -0.01}, "min_object_area"),
        ({"min_object_area": 1.0}, "min_object_area"),
        ({"min_object_area": 1.5}, "min_object_area"),
        ({"min_object_area": math.nan}, "min_object_area"),
        ({"min_objects": 3, "max_objects": 2}, "max_objects"),
        ({"min_objects": 0, "max_objects": 0}, "max_objects"),
        ({"min_objects": -1}, "min_objects"),
    ],
)
def test_filter_config_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FilterConfig(**kwargs)


def test_filter_config_valid_edges() -> None:
    assert FilterConfig(min_object_area=0.0, min_objects=3, max_objects=3).max_objects == 3
    assert FilterConfig(max_objects=None).max_objects is None
    assert FilterConfig(drop_categories=["other", "banner"]).drop_categories == ("other", "banner")  # type: ignore[arg-type]


# --- stuff merge --------------------------------------------------------------------------------


def _stuff() -> dict[str, Any]:
    return {
        "images": [_img(101, "a.png", 40, 30)],
        "annotations": [
            _ann(9001, 101, 124, [0, 20, 40, 10]),
            _ann(9002, 101, 157, [0, 0, 40, 12]),
            _ann(9003, 101, 300, [30, 0, 10, 10]),
        ],
        "categories": [
            {"id": 124, "name": "grass", "supercategory": "plant"},
            {"id": 157, "name": "sky-other", "isthing": 0},
            {"id": 300, "name": "banner", "isthing": 1},
        ],
    }


def test_stuff_merge(tmp_path: Path) -> None:
    instances = _base()
    instances["categories"].append({"id": 50, "name": "wall", "isthing": 0})
    ann_path, images_dir = _write(tmp_path, instances)
    stuff_path, _ = _write(tmp_path, _stuff(), name="stuff.json")
    layouts = read_coco(ann_path, images_dir, stuff_annotations=stuff_path, filters=KEEP_ALL)

    assert layouts.sources == (ann_path, stuff_path)
    cats = layouts.categories
    assert not cats[1].is_stuff and not cats[2].is_stuff
    assert cats[50].is_stuff  # isthing: 0 in the instances file
    assert cats[124] == Category(124, "grass", is_stuff=True, supercategory="plant")
    assert cats[157].is_stuff
    assert not cats[300].is_stuff  # isthing: 1 in the stuff file

    # The shared image is read once and gets the objects of both files.
    assert [r.id for r in layouts.images] == [101, 102]
    assert [a.id for a in layouts.images[0].annotations] == [5001, 5002, 9001, 9002, 9003]
    assert [a.id for a in layouts.images[1].annotations] == [5003, 5004]
    assert _annotations(layouts)[9001].box == (0.0, 20.0, 40.0, 30.0)
    assert (layouts.report.images_in, layouts.report.annotations_in) == (2, 7)
    assert (layouts.report.images_out, layouts.report.annotations_out) == (2, 7)


@pytest.mark.parametrize(
    "change", [{"width": 41}, {"height": 29}, {"file_name": "sub/b.png"}], ids=["width", "height", "file"]
)
def test_stuff_image_must_match_instances(tmp_path: Path, change: dict[str, Any]) -> None:
    ann_path, images_dir = _write(tmp_path, _base())
    stuff = _stuff()
    stuff["images"][0].update(change)
    stuff_path, _ = _write(tmp_path, stuff, name="stuff.json", images=False)
    _raises(
        ValueError,
        lambda: read_coco(ann_path, images_dir, stuff_annotations=stuff_path, filters=KEEP_ALL),
        stuff_path,
        101,
    )


def test_stuff_annotation_of_unknown_image(tmp_path: Path) -> None:
    ann_path, images_dir = _write(tmp_path, _base())
    stuff = _stuff()
    stuff["annotations"][1]["image_id"] = 777
    stuff_path, _ = _write(tmp_path, stuff, name="stuff.json", images=False)
    _raises(
        ValueError,
        lambda: read_coco(ann_path, images_dir, stuff_annotations=stuff_path, filters=KEEP_ALL),
        stuff_path,
        9002,
        777,
    )


def test_stuff_annotation_id_clash(tmp_path: Path) -> None:
    ann_path, images_dir = _write(tmp_path, _base())
    stuff = _stuff()
    stuff["annotations"][0]["id"] = 5002
    stuff_path, _ = _write(tmp_path, stuff, name="stuff.json", images=False)
    _raises(
        ValueError,
        lambda: read_coco(ann_path, images_dir, stuff_annotations=stuff_path, filters=KEEP_ALL),
        stuff_path,
        5002,
    )


# --- bad input ----------------------------------------------------------------------------------


def _raw(tmp_path: Path, text: str) -> tuple[Path, Path]:
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    path = tmp_path / "instances.json"
    path.write_text(text)
    return path, images_dir


def test_malformed_json(tmp_path: Path) -> None:
    path, images_dir = _raw(tmp_path, '{"images": [],\n "annotations": [}, "categories": []}')
    message = _raises(ValueError, lambda: read_coco(path, images_dir), path)
    assert "line 2" in message and "column" in message


def test_truncated_json(tmp_path: Path) -> None:
    text = json.dumps(_base(), indent=1)
    path, images_dir = _raw(tmp_path, text[: len(text) // 2])
    message = _raises(ValueError, lambda: read_coco(path, images_dir), path)
    assert "line" in message and "column" in message


def test_not_utf8_json(tmp_path: Path) -> None:
    path, images_dir = _raw(tmp_path, "")
    path.write_bytes(b'{"images": ["\xff\xfe"], "annotations": [], "categories": []}')
    _raises(ValueError, lambda: read_coco(path, images_dir), path)


@pytest.mark.parametrize("top", [[], "images", 3, None])
def test_top_level_not_an_object(tmp_path: Path, top: Any) -> None:
    path, images_dir = _raw(tmp_path, json.dumps(top))
    _raises(ValueError, lambda: read_coco(path, images_dir), path)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key(tmp_path: Path, key: str) -> None:
    data = _base()
    del data[key]
    path, images_dir = _write(tmp_path, data)
    _raises(ValueError, lambda: read_coco(path, images_dir), path, key)


def test_top_level_key_not_a_list(tmp_path: Path) -> None:
    data = _base()
    data["annotations"] = {"5001": data["annotations"][0]}
    path, images_dir = _write(tmp_path, data)
    _raises(ValueError, lambda: read_coco(path, images_dir), path, "annotations")


def test_missing_annotation_file_and_image_folder(tmp_path: Path) -> None:
    path, images_dir = _write(tmp_path, _base())
    _raises(FileNotFoundError, lambda: read_coco(tmp_path / "nope.json", images_dir), tmp_path / "nope.json")
    _raises(FileNotFoundError, lambda: read_coco(path, tmp_path / "no_images"), tmp_path / "no_images")


def _del_image_key(key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        del data["images"][1][key]

    return mutate


def _set(section: str, index: int, **values: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        data[section][index].update(values)

    return mutate


def _append(section: str, entry: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        data[section].append(entry)

    return mutate


# Each case: how to break the base file, and the ids the error message must name (besides the file).
STRUCTURAL = {
    "image missing file_name": (_del_image_key("file_name"), ["102", "file_name"]),
    "image missing width": (_del_image_key("width"), ["102", "width"]),
    "image id not an integer": (_set("images", 1, id="b"), ["'b'"]),
    "image id NaN": (_set("images", 1, id=math.nan), []),
    "image width infinite": (_set("images", 1, width=math.inf), ["image id 102"]),
    "image width zero": (_set("images", 1, width=0), ["image id 102"]),
    "duplicate image id": (_set("images", 1, id=101), ["image id 101"]),
    "duplicate annotation id": (_set("annotations", 3, id=5002), ["annotation id 5002"]),
    "duplicate category id, other name": (
        _append("categories", {"id": 2, "name": "bus"}),
        ["2", "car", "bus"],
    ),
    "annotation missing bbox": (
        lambda d: d["annotations"][2].pop("bbox"),
        ["5003", "bbox"],
    ),
    "unknown image_id": (_set("annotations", 2, image_id=999), ["annotation id 5003", "999"]),
    "unknown category_id": (_set("annotations", 2, category_id=77), ["annotation id 5003", "77"]),
    "file_name with ..": (_set("images", 1, file_name="../b.png"), ["image id 102", "../b.png"]),
    "file_name with .. inside": (_set("images", 1, file_name="sub/../../b.png"), ["image id 102"]),
    "absolute file_name": (_set("images", 1, file_name="/etc/hostname"), ["image id 102", "/etc/hostname"]),
    "empty file_name": (_set("images", 1, file_name=""), ["image id 102"]),
    "odd-length polygon": (
        _set("annotations", 1, segmentation=[[1, 1, 5, 1, 5, 5, 1]]),
        ["annotation id 5002"],
    ),
    "polygon of two points": (_set("annotations", 1, segmentation=[[1, 1, 5, 1]]), ["annotation id 5002"]),
    "polygon with a string": (
        _set("annotations", 1, segmentation=[[1, 1, 5, 1, 5, "x"]]),
        ["annotation id 5002"],
    ),
    "RLE of another size": (
        _set("annotations", 1, segmentation={"size": [30, 41], "counts": [1230]}),
        ["annotation id 5002", "41"],
    ),
    "RLE transposed": (
        _set("annotations", 1, segmentation={"size": [40, 30], "counts": [1200]}),
        ["annotation id 5002"],
    ),
    "RLE size not a list": (
        _set("annotations", 1, segmentation={"size": 30, "counts": [1200]}),
        ["annotation id 5002"],
    ),
    "segmentation of another type": (_set("annotations", 1, segmentation="polygon"), ["annotation id 5002"]),
}


@pytest.mark.parametrize("case", list(STRUCTURAL))
def test_structural_errors_name_file_and_id(tmp_path: Path, case: str) -> None:
    mutate, names = STRUCTURAL[case]
    data = _base()
    path, images_dir = _write(tmp_path, data)  # the images of the unbroken file
    broken = copy.deepcopy(data)
    mutate(broken)
    path.write_text(json.dumps(broken))
    _raises(ValueError, lambda: read_coco(path, images_dir, filters=KEEP_ALL), path, *names)


def test_duplicate_category_with_the_same_name_is_allowed(tmp_path: Path) -> None:
    data = _base()
    data["categories"].append({"id": 2, "name": "car"})
    assert _read(tmp_path, data).categories[2].name == "car"


def test_symlink_out_of_the_image_folder_is_rejected(tmp_path: Path) -> None:
    data = _base()
    path, images_dir = _write(tmp_path / "ds", data)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (20, 24)).save(outside)
    (images_dir / "sub" / "b.png").unlink()
    (images_dir / "sub" / "b.png").symlink_to(outside)
    _raises(ValueError, lambda: read_coco(path, images_dir, filters=KEEP_ALL), path, "image id 102")

    # A linked folder pointing outside is rejected too.
    linked = tmp_path / "elsewhere"
    linked.mkdir()
    Image.new("RGB", (20, 24)).save(linked / "b.png")
    (images_dir / "sub" / "b.png").unlink()
    (images_dir / "sub").rmdir()
    (images_dir / "sub").symlink_to(linked, target_is_directory=True)
    _raises(ValueError, lambda: read_coco(path, images_dir, filters=KEEP_ALL), path, "image id 102")


def test_symlink_within_the_image_folder_is_allowed(tmp_path: Path) -> None:
    data = _base()
    path, images_dir = _write(tmp_path, data)
    (images_dir / "sub" / "b.png").rename(images_dir / "real_b.png")
    (images_dir / "sub" / "b.png").symlink_to(images_dir / "real_b.png")
    layouts = read_coco(path, images_dir, filters=KEEP_ALL)
    assert layouts.images[1].path == images_dir / "sub" / "b.png"


def test_missing_image_files(tmp_path: Path) -> None:
    data = _base()
    data["images"].append(_img(103, "c.png", 16, 16))
    data["annotations"].append(_ann(5005, 103, 1, [0, 0, 4, 4]))
    path, images_dir = _write(tmp_path, data)
    (images_dir / "sub" / "b.png").unlink()
    (images_dir / "c.png").unlink()
    message = _raises(
        FileNotFoundError,
        lambda: read_coco(path, images_dir, filters=KEEP_ALL),
        images_dir / "sub" / "b.png",
        "image id 102",
        images_dir / "c.png",
        "image id 103",
    )
    assert re.search(r"\b2 image files\b", message)
    assert "image id 101" not in message

    # Not checked when asked not to.
    assert len(read_coco(path, images_dir, filters=KEEP_ALL, check_files=False)) == 3
    # Images the filters drop (103 has one object) are not checked either.
    Image.new("RGB", (20, 24)).save(images_dir / "sub" / "b.png")
    layouts = read_coco(path, images_dir, filters=FilterConfig(min_object_area=0.0, min_objects=2))
    assert [r.id for r in layouts.images] == [101, 102]


# --- invalid and clipped boxes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "bbox",
    [
        [2, 2, 0, 5],
        [2, 2, 5, 0],
        [2, 2, 5, -3],
        [2, 2, -1, -1],
        [2, math.nan, 5, 5],
        [2, 2, math.inf, 5],
        "2, 2, 5, 5",
        [2, 2, "wide", 5],
        [2, 2, "5", 5],  # a number written as a string is no number either
        [2, 2, None, 5],
        [2, 2, 5],
        [2, 2, 5, 5, 5],
        [],
        None,
        {"x": 2, "y": 2, "w": 5, "h": 5},
        [40, 5, 5, 5],  # starts at the right edge
        [45, 5, 5, 5],  # right of the image
        [-10, 5, 10, 5],  # ends at the left edge
        [5, -20, 5, 10],  # above
        [5, 31, 5, 10],  # below
    ],
    ids=repr,
)
def test_invalid_box_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bbox: Any
) -> None:
    data = _base()
    data["annotations"][1]["bbox"] = bbox
    with caplog.at_level(logging.WARNING, logger="detdiffusion.data.coco"):
        layouts = _read(tmp_path, data)
    assert set(_annotations(layouts)) == {5001, 5003, 5004}
    assert layouts.report.invalid_box == 1
    assert layouts.report.clipped_box == 0
    assert (layouts.report.annotations_in, layouts.report.annotations_out) == (4, 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and _names(warnings[0], 5002)


def test_invalid_boxes_counted_and_logged_together(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _base()
    for aid, bbox in zip(range(6001, 6008), [[0, 0, 0, 1]] * 7, strict=True):
        data["annotations"].append(_ann(aid, 101, 1, bbox))
    with caplog.at_level(logging.WARNING, logger="detdiffusion.data.coco"):
        layouts = _read(tmp_path, data)
    assert layouts.report.invalid_box == 7
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert _names(message, 7, 6001, 6005)


@pytest.mark.parametrize(
    ("bbox", "clipped"),
    [
        ([-5, 2, 10, 5], (0.0, 2.0, 5.0, 7.0)),
        ([2, -3.5, 10, 5], (2.0, 0.0, 12.0, 1.5)),
        ([35, 25, 10, 10], (35.0, 25.0, 40.0, 30.0)),
        ([-1, -1, 50, 40], (0.0, 0.0, 40.0, 30.0)),
        ([30.5, 2, 9.5001, 5], (30.5, 2.0, 40.0, 7.0)),
    ],
)
def test_box_reaching_outside_is_clipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bbox: list[float], clipped: tuple[float, ...]
) -> None:
    data = _base()
    data["annotations"][1]["bbox"] = bbox
    with caplog.at_level(logging.WARNING, logger="detdiffusion.data.coco"):
        layouts = _read(tmp_path, data)
    anns = _annotations(layouts)
    assert anns[5002].box == pytest.approx(clipped)
    assert layouts.report.clipped_box == 1
    assert layouts.report.invalid_box == 0
    assert layouts.report.annotations_out == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and _names(warnings[0], 5002)


def test_box_on_the_image_border_is_not_clipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _base()
    data["annotations"][1]["bbox"] = [30, 20, 10, 10]  # ends exactly at (40, 30)
    with caplog.at_level(logging.WARNING, logger="detdiffusion.data.coco"):
        layouts = _read(tmp_path, data)
    assert _annotations(layouts)[5002].box == (30.0, 20.0, 40.0, 30.0)
    assert layouts.report.clipped_box == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
