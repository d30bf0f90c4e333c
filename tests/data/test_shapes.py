"""Tests of the built-in shapes dataset generator."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from detdiffusion.data.shapes import (
    FORMAT_VERSION,
    MARKER_NAME,
    PALETTE,
    STUFF_ID_OFFSET,
    ShapesConfig,
    generate_shapes,
    shapes_paths,
)

# pycocotools' own mask decoding trips a NumPy 2 deprecation; nothing here to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMALL = ShapesConfig(num_train=6, num_val=3, size=48, seed=3)


def _load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # COCO prints progress
        return COCO(str(path))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _is_thing(annotation: dict) -> bool:
    return annotation["category_id"] < STUFF_ID_OFFSET


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("shapes") / "ds", SMALL, progress=False)


def test_layout(dataset: Path) -> None:
    paths = shapes_paths(dataset)
    assert set(paths) == {"train", "val"}
    assert len(list(paths["train"].images.glob("*.png"))) == SMALL.num_train
    assert len(list(paths["val"].images.glob("*.png"))) == SMALL.num_val
    assert paths["train"].annotations == dataset / "annotations" / "instances_train.json"
    marker = json.loads((dataset / MARKER_NAME).read_text())
    assert marker == {"format_version": FORMAT_VERSION, "config": asdict(SMALL)}
    assert not list(dataset.parent.glob("ds.tmp-*"))


def test_same_seed_gives_identical_files(dataset: Path, tmp_path: Path) -> None:
    assert _files(generate_shapes(tmp_path / "again", SMALL, progress=False)) == _files(dataset)
    other = _files(generate_shapes(tmp_path / "other", replace(SMALL, seed=4), progress=False))
    assert other.keys() == _files(dataset).keys()
    assert other["train/000001.png"] != _files(dataset)["train/000001.png"]
    assert other["annotations/instances_val.json"] != _files(dataset)["annotations/instances_val.json"]


def test_image_does_not_depend_on_split_sizes(dataset: Path, tmp_path: Path) -> None:
    fewer = generate_shapes(tmp_path / "fewer", replace(SMALL, num_train=2, num_val=1), progress=False)
    assert (fewer / "train/000002.png").read_bytes() == (dataset / "train/000002.png").read_bytes()
    # first val image: id 3 here, id 7 in the full dataset
    assert (fewer / "val/000003.png").read_bytes() == (dataset / "val/000007.png").read_bytes()


def test_annotations_are_consistent_coco(dataset: Path) -> None:
    image_ids: list[int] = []
    ann_ids: list[int] = []
    for split, paths in shapes_paths(dataset).items():
        coco = _load_coco(paths.annotations)
        assert {c["isthing"] for c in coco.loadCats(coco.getCatIds())} == {0, 1}
        assert {a["category_id"] >= STUFF_ID_OFFSET for a in coco.dataset["annotations"]} == {False, True}
        image_ids += coco.getImgIds()
        ann_ids += coco.getAnnIds()
        for image in coco.loadImgs(coco.getImgIds()):
            with Image.open(paths.images / image["file_name"]) as png:
                assert png.size == (image["width"], image["height"]) == (SMALL.size, SMALL.size)
                assert png.mode == "RGB"
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            num_things = sum(_is_thing(a) for a in annotations)
            assert SMALL.min_objects <= num_things <= SMALL.max_objects, f"{split} image {image['id']}"
            for ann in annotations:
                mask = coco.annToMask(ann).astype(bool)
                rows, cols = np.nonzero(mask)
                assert rows.size == ann["area"] > 0
                x, y = cols.min(), rows.min()
                assert ann["bbox"] == [x, y, cols.max() - x + 1, rows.max() - y + 1]
                assert ann["iscrowd"] == 0
    assert len(set(image_ids)) == len(image_ids) == SMALL.num_train + SMALL.num_val
    assert len(set(ann_ids)) == len(ann_ids)


def test_masks_match_pixels(dataset: Path) -> None:
    for paths in shapes_paths(dataset).values():
        coco = _load_coco(paths.annotations)
        for image in coco.loadImgs(coco.getImgIds()):
            pixels = np.asarray(Image.open(paths.images / image["file_name"]))
            coverage = np.zeros(pixels.shape[:2], dtype=int)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
                mask = coco.annToMask(ann).astype(bool)
                coverage += mask
                if _is_thing(ann):
                    assert (pixels[mask] == ann["rgb"]).all(), f"annotation {ann['id']}"
                    if not ann["low_contrast"]:
                        assert tuple(ann["rgb"]) == PALETTE[ann["color"]]
            # visible things and the stuff around them tile the image exactly
            assert (coverage == 1).all(), f"image {image['id']}"


def test_occlusion_contrast_and_sizes_vary(tmp_path: Path) -> None:
    config = ShapesConfig(num_train=40, num_val=0, size=32, min_objects=3, max_objects=8)
    root = generate_shapes(tmp_path / "ds", config, progress=False)
    annotations = json.loads(shapes_paths(root)["train"].annotations.read_text())["annotations"]
    things = [a for a in annotations if _is_thing(a)]
    assert any(a["area"] < a["full_area"] for a in things), "no object is occluded"
    assert all(a["area"] >= 0.4 * a["full_area"] for a in things)
    assert any(a["low_contrast"] for a in things) and not all(a["low_contrast"] for a in things)
    sides = [np.sqrt(a["full_area"]) / config.size for a in things]
    assert min(sides) < 0.15 and max(sides) > 0.35


def test_rerun_with_same_config_is_noop(dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    mtimes = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    with caplog.at_level(logging.INFO, logger="detdiffusion.data.shapes"):
        assert generate_shapes(str(dataset), SMALL, progress=False) == dataset
    assert "not regenerating" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == mtimes


def test_other_config_in_same_folder_raises(dataset: Path) -> None:
    with pytest.raises(FileExistsError, match=r"seed: on disk 3, requested 4") as info:
        generate_shapes(dataset, replace(SMALL, seed=4), progress=False)
    assert str(dataset) in str(info.value)


def test_foreign_folder_raises(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not empty and holds no shapes\.json"):
        generate_shapes(tmp_path, SMALL, progress=False)
    with pytest.raises(FileExistsError, match=r"not a folder"):
        generate_shapes(tmp_path / "notes.txt", SMALL, progress=False)


def test_empty_folder_is_filled_and_stale_tmp_removed(tmp_path: Path) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    stale = tmp_path / f"ds.tmp-{finished.pid}"
    stale.mkdir()
    (stale / "000001.png").write_bytes(b"half written")
    (tmp_path / "ds").mkdir()
    root = generate_shapes(tmp_path / "ds", replace(SMALL, num_train=1, num_val=1), progress=False)
    assert (root / MARKER_NAME).is_file()
    assert not stale.exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"size": 8}, "size"),
        ({"size": 32.0}, "size"),
        ({"num_train": 0}, "num_train"),
        ({"num_val": -1}, "num_val"),
        ({"seed": -1}, "seed"),
        ({"min_objects": 0}, "min_objects"),
        ({"max_objects": 9}, "max_objects"),
        ({"min_objects": 5, "max_objects": 3}, "min_objects"),
    ],
)
def test_bad_config_names_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"ShapesConfig\.{field} must be .*, got"):
        ShapesConfig(**overrides)
