"""The built-in ``shapes`` dataset: a small synthetic COCO-format detection dataset with masks.

Each image is a landscape of horizontal stuff bands (``sky`` on top; ``grass``, ``sand`` or
``water`` below; sometimes a ``water`` band in between, each with its own jittered base colour,
a vertical gradient and per-pixel noise) with ``min_objects``–``max_objects`` filled shapes
drawn over it. The colour of a shape is independent of its class.

Difficulty varies on purpose, so that a detector finds some objects easy and others hard (the
perception-aware attributes of DetDiffusion §3.2 are derived from exactly that):

- size: sides are log-uniform between 12% and 50% of the image side, so small objects are common;
- contrast: a quarter of the objects are muted, filled with a colour 35% of the way from the base
  colour of the band behind their centre to a palette colour (``"low_contrast": true``); other
  objects may still happen to match their background (green on grass, blue on water);
- occlusion: objects are drawn in order, later ones on top, and each annotation holds the visible
  part only. A placement that would leave an earlier object less than 40% visible is re-drawn
  (at most 20 times, after which the object is dropped, unless that leaves fewer than
  ``min_objects``: then another shape is drawn).

Thing annotations carry extra fields besides COCO's: ``color`` (palette name), ``rgb`` (the fill
actually drawn), ``low_contrast`` and ``full_area`` (pixels of the whole shape; the object is
occluded when ``area < full_area``). Stuff annotations cover the band pixels no object covers, as
in COCO-Stuff.

All randomness of an image comes from ``np.random.default_rng([seed, split, index])``, so an
image does not depend on how many were generated before it and one config always gives
byte-identical files.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm

from detdiffusion.data.coco import FilterConfig

logger = logging.getLogger(__name__)

#: Version of the on-disk format, stored in ``shapes.json`` and in each annotation file.
FORMAT_VERSION = 1
#: Written last, so its presence marks a complete dataset.
MARKER_NAME = "shapes.json"
SPLITS: tuple[str, ...] = ("train", "val")
#: Thing classes; category id = index + 1.
THING_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
#: Stuff classes; category id = index + ``STUFF_ID_OFFSET``.
STUFF_CLASSES: tuple[str, ...] = ("sky", "grass", "water", "sand")
STUFF_ID_OFFSET = 101
#: Upper bound of ``max_objects``: prompts and batches are sized for it.
MAX_OBJECTS = 8

#: Object colours, chosen independently of the class.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (50, 190, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 215, 40),
    "magenta": (210, 50, 200),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
# name: (base RGB, change from the band's top row to its bottom row, per-pixel noise std)
_STUFF_STYLES: dict[str, tuple[tuple[int, int, int], float, float]] = {
    "sky": ((115, 165, 225), 30.0, 3.0),  # lighter towards the horizon
    "grass": ((70, 140, 55), -20.0, 10.0),
    "sand": ((210, 190, 135), -15.0, 8.0),
    "water": ((40, 90, 165), -25.0, 6.0),
}
_BOTTOM_STUFF = ("grass", "sand", "water")
_MIDDLE_WATER_PROB = 0.3
_BASE_JITTER = 20
_SIDE_RANGE = (0.12, 0.5)  # object side as a fraction of the image side
_MIN_SIDE = 4  # pixels; smaller shapes are unrecognisable blobs
_MIN_VISIBLE = 0.4
_PLACEMENT_TRIES = 20
_EXTRA_DRAWS = 50  # redraws allowed to reach min_objects after drops
_LOW_CONTRAST_PROB = 0.25
_LOW_CONTRAST_MIX = 0.35
_LOW_CONTRAST_MIN_GAP = 90  # palette colours closer than this to the band would vanish when muted


@dataclass(frozen=True)
class ShapesConfig:
    """Settings of the built-in shapes dataset."""

    num_train: int = 2000
    """Number of training images."""
    num_val: int = 200
    """Number of validation images."""
    size: int = 64
    """Image side in pixels (images are square)."""
    seed: int = 0
    """Seed of every random choice; the same seed gives byte-identical files."""
    min_objects: int = 1
    """Fewest thing objects per image."""
    max_objects: int = 8
    """Most thing objects per image (at most 8)."""

    def __post_init__(self) -> None:
        minimum = {"num_train": 1, "num_val": 0, "size": 16, "seed": 0, "min_objects": 1, "max_objects": 1}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum[f.name]:
                raise ValueError(
                    f"ShapesConfig.{f.name} must be an integer >= {minimum[f.name]}, got {value!r}"
                )
        if self.max_objects > MAX_OBJECTS:
            raise ValueError(f"ShapesConfig.max_objects must be <= {MAX_OBJECTS}, got {self.max_objects}")
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"ShapesConfig.min_objects must be <= max_objects ({self.max_objects}), "
                f"got {self.min_objects}"
            )


@dataclass(frozen=True)
class SplitPaths:
    """Where one split of a shapes dataset lives."""

    images: Path
    """Folder of the PNGs; ``file_name`` in the annotations is relative to it."""
    annotations: Path
    """COCO instances JSON of the split."""


def shapes_paths(out_dir: str | Path) -> dict[str, SplitPaths]:
    """The images folder and annotations file of each split (``"train"``, ``"val"``) under ``out_dir``."""
    root = Path(out_dir)
    return {s: SplitPaths(root / s, root / "annotations" / f"instances_{s}.json") for s in SPLITS}


#: Filters for the built-in shapes: every object and image is kept.
SHAPES_FILTERS = FilterConfig(min_object_area=0.0, min_objects=1, max_objects=None)


def cache_dir() -> Path:
    """Where generated data is cached: ``$DETDIFFUSION_CACHE`` or ``~/.cache/detdiffusion``."""
    return Path(os.environ.get("DETDIFFUSION_CACHE", Path.home() / ".cache" / "detdiffusion")).expanduser()


def default_shapes_dir(config: ShapesConfig) -> Path:
    """Cache folder of the shapes dataset made with ``config``."""
    return cache_dir() / ("shapes-" + "-".join(str(v) for v in asdict(config).values()))


def shapes_categories() -> list[dict[str, Any]]:
    """COCO categories of the dataset: things with ids ``1..K``, stuff from ``STUFF_ID_OFFSET`` up."""
    things = [
        {"id": i + 1, "name": n, "supercategory": "shape", "isthing": 1} for i, n in enumerate(THING_CLASSES)
    ]
    stuff = [
        {"id": STUFF_ID_OFFSET + i, "name": n, "supercategory": "stuff", "isthing": 0}
        for i, n in enumerate(STUFF_CLASSES)
    ]
    return things + stuff


def generate_shapes(
    out_dir: str | Path, config: ShapesConfig = ShapesConfig(), progress: bool = True
) -> Path:
    """Write the dataset into ``out_dir`` (atomically) and return ``out_dir``.

    Everything is written to a sibling ``<out_dir>.tmp-<pid>`` folder, ``shapes.json`` last, then
    renamed into place, so ``out_dir`` either does not exist or holds a complete dataset.

    Args:
        out_dir: folder of the dataset; it must not exist, be empty, or hold a shapes dataset
            made with the same config (which is then returned as it is).
        config: what to generate.
        progress: show a progress bar.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        FileExistsError: ``out_dir`` holds a shapes dataset with another config, or other files.
    """
    root = Path(out_dir)
    if _holds_same_dataset(root, config):
        logger.info("shapes dataset at %s is complete with the same config; not regenerating", root)
        return root
    _remove_stale_tmp(root)
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    num_images = config.num_train + config.num_val
    # Ids run on across splits (train 1..N, val N+1..N+M) so that they are unique in the dataset.
    image_ids = {"train": range(1, config.num_train + 1), "val": range(config.num_train + 1, num_images + 1)}
    try:
        with tqdm(total=num_images, desc="shapes", unit="img", disable=not progress) as bar:
            next_ann_id = 1
            for split in SPLITS:
                next_ann_id = _write_split(tmp, split, image_ids[split], next_ann_id, config, bar)
        _write_json(tmp / MARKER_NAME, _marker(config), indent=2)
        try:
            if root.is_dir():
                root.rmdir()  # empty (checked above); a rename cannot replace a folder everywhere
            tmp.rename(root)
        except OSError:
            # Another process filled out_dir meanwhile: fine if it wrote the same dataset.
            if _holds_same_dataset(root, config):
                return root
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left to remove after the rename
    logger.info("wrote %d shapes images to %s in %.1f s", num_images, root, time.perf_counter() - start)
    return root


def _marker(config: ShapesConfig) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "config": asdict(config)}


def _holds_same_dataset(root: Path, config: ShapesConfig) -> bool:
    """Whether ``root`` holds a complete dataset of ``config``; ``False`` when absent or empty.

    Raises:
        FileExistsError: ``root`` holds anything else.
    """
    if not root.exists():
        return False
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder; expected a shapes dataset folder")
    marker = root / MARKER_NAME
    if not marker.is_file():
        if any(root.iterdir()):
            raise FileExistsError(
                f"{root} is not empty and holds no {MARKER_NAME}; "
                "expected an empty folder or a shapes dataset"
            )
        return False
    try:
        found = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileExistsError(f"{marker} is not a readable shapes marker: {err}") from err
    expected = _marker(config)
    if found == expected:
        return True
    found = found if isinstance(found, dict) else {}
    found_config = found.get("config") if isinstance(found.get("config"), dict) else {}
    differences = [
        f"{key}: on disk {found_config.get(key)!r}, requested {value!r}"
        for key, value in expected["config"].items()
        if found_config.get(key) != value
    ]
    if found.get("format_version") != FORMAT_VERSION:
        differences.append(
            f"format_version: on disk {found.get('format_version')!r}, requested {FORMAT_VERSION}"
        )
    raise FileExistsError(
        f"{root} holds a shapes dataset with another config ({'; '.join(differences)}); "
        "use another folder or delete this one"
    )


def _remove_stale_tmp(root: Path) -> None:
    """Remove ``<root>.tmp-<pid>`` folders whose process is gone (runs that were killed)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return
    for tmp in root.parent.glob(f"{glob.escape(root.name)}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            logger.info("removing %s, left by a run that was killed", tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def _write_json(path: Path, content: Any, indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, sort_keys=True, indent=indent) + "\n")


def _write_split(
    root: Path,
    split: str,
    image_ids: range,
    first_ann_id: int,
    config: ShapesConfig,
    bar: tqdm,
) -> int:
    """Write the images and annotations of one split; return the next free annotation id."""
    paths = shapes_paths(root)[split]
    paths.images.mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    ann_id = first_ann_id
    for index, image_id in enumerate(image_ids):
        pixels, image_annotations = _render_image(config, SPLITS.index(split), index)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(paths.images / file_name, format="PNG")
        images.append({"id": image_id, "file_name": file_name, "width": config.size, "height": config.size})
        for annotation in image_annotations:
            annotations.append({**annotation, "id": ann_id, "image_id": image_id})
            ann_id += 1
        bar.update()
    info = {
        "description": f"detdiffusion built-in shapes dataset, {split} split",
        "version": FORMAT_VERSION,
        "config": asdict(config),
    }
    content = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": shapes_categories(),
    }
    _write_json(paths.annotations, content)
    return ann_id


@dataclass(frozen=True)
class _Band:
    name: str
    top: int
    bottom: int  # exclusive
    base: np.ndarray  # (3,) int RGB before gradient and noise


@dataclass
class _Placed:
    category_id: int
    full: np.ndarray  # (H, W) bool, the whole shape
    visible: np.ndarray  # (H, W) bool, what later objects leave of it
    full_area: int


def _render_image(
    config: ShapesConfig, split_code: int, index: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one image; return its pixels, ``(H, W, 3)`` uint8, and its annotations without ids."""
    rng = np.random.default_rng([config.seed, split_code, index])
    size = config.size
    bands = _sample_bands(rng, size)
    pixels = _paint_bands(rng, bands, size)
    placed = _place_objects(rng, config)
    if len(placed) < config.min_objects:
        raise RuntimeError(
            f"shapes: placed only {len(placed)} of min_objects={config.min_objects} objects in image "
            f"{index} of split {SPLITS[split_code]!r} (seed {config.seed}, size {size})"
        )
    annotations = []
    covered = np.zeros((size, size), dtype=bool)
    for obj in placed:
        rows = np.flatnonzero(obj.full.any(axis=1))
        centre = (rows[0] + rows[-1]) // 2
        behind = next(b for b in bands if b.top <= centre < b.bottom)
        color, rgb, low_contrast = _sample_color(rng, behind.base)
        pixels[obj.full] = rgb  # later objects overwrite, leaving each one's visible part
        covered |= obj.full
        annotations.append(
            _annotation(obj.visible, obj.category_id)
            | {"color": color, "rgb": list(rgb), "low_contrast": low_contrast, "full_area": obj.full_area}
        )
    for band in bands:
        mask = np.zeros((size, size), dtype=bool)
        mask[band.top : band.bottom] = True
        mask &= ~covered  # COCO-Stuff labels only what no thing covers
        if mask.any():
            annotations.append(_annotation(mask, STUFF_ID_OFFSET + STUFF_CLASSES.index(band.name)))
    return pixels, annotations


def _annotation(mask: np.ndarray, category_id: int) -> dict[str, Any]:
    """COCO fields of a non-empty mask: RLE segmentation, ``[x, y, w, h]`` box, pixel area."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")  # bytes are not JSON
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
    return {
        "category_id": category_id,
        "segmentation": rle,
        "area": int(mask.sum()),
        "bbox": box,
        "iscrowd": 0,
    }


def _place_objects(rng: np.random.Generator, config: ShapesConfig) -> list[_Placed]:
    """Draw shapes and their placements; every one keeps at least ``_MIN_VISIBLE`` of its area visible.

    A shape that finds no placement in ``_PLACEMENT_TRIES`` is dropped; more are drawn only while
    fewer than ``min_objects`` are placed, at most ``_EXTRA_DRAWS`` more.
    """
    size = config.size
    target = int(rng.integers(config.min_objects, config.max_objects + 1))
    placed: list[_Placed] = []
    draws = 0
    while (draws < target or len(placed) < config.min_objects) and draws < target + _EXTRA_DRAWS:
        draws += 1
        category = int(rng.integers(len(THING_CLASSES)))
        fraction = math.exp(rng.uniform(math.log(_SIDE_RANGE[0]), math.log(_SIDE_RANGE[1])))
        side = max(_MIN_SIDE, round(fraction * size))
        patch = _shape_patch(THING_CLASSES[category], side)
        for _ in range(_PLACEMENT_TRIES):
            y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
            window = np.s_[y : y + side, x : x + side]
            if all(
                o.visible.sum() - np.count_nonzero(o.visible[window] & patch) >= _MIN_VISIBLE * o.full_area
                for o in placed
            ):
                break
        else:
            continue
        for o in placed:
            o.visible[window] &= ~patch
        full = np.zeros((size, size), dtype=bool)
        full[window] = patch
        placed.append(_Placed(category + 1, full, full.copy(), int(patch.sum())))
    return placed


@lru_cache(maxsize=512)
def _shape_patch(shape: str, side: int) -> np.ndarray:
    """Read-only ``(side, side)`` bool mask of a shape filling its square, drawn without antialiasing."""
    canvas = Image.new("1", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    last = side - 1
    mid = last / 2
    if shape == "circle":
        draw.ellipse((0, 0, last, last), fill=1)
    elif shape == "square":
        draw.rectangle((0, 0, last, last), fill=1)
    elif shape == "triangle":
        draw.polygon([(mid, 0), (last, last), (0, last)], fill=1)
    elif shape == "diamond":
        draw.polygon([(mid, 0), (last, mid), (mid, last), (0, mid)], fill=1)
    elif shape == "star":
        # 5 points; inner radius 0.45 of the outer (fatter than a regular star) so it survives 32 px
        radii = [mid if k % 2 == 0 else 0.45 * mid for k in range(10)]
        angles = [math.pi * k / 5 for k in range(10)]
        corners = [(mid + r * math.sin(a), mid - r * math.cos(a)) for r, a in zip(radii, angles, strict=True)]
        draw.polygon(corners, fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {THING_CLASSES}")
    patch = np.asarray(canvas, dtype=bool)
    patch.setflags(write=False)
    return patch


def _sample_color(rng: np.random.Generator, behind: np.ndarray) -> tuple[str, tuple[int, int, int], bool]:
    """A palette colour, or with ``_LOW_CONTRAST_PROB`` a muted one close to the ``behind`` band colour."""
    names = list(PALETTE)
    low_contrast = bool(rng.random() < _LOW_CONTRAST_PROB)
    if low_contrast:
        names = [n for n in names if np.abs(np.subtract(PALETTE[n], behind)).max() >= _LOW_CONTRAST_MIN_GAP]
    name = names[rng.integers(len(names))]
    rgb = np.asarray(PALETTE[name], dtype=float)
    if low_contrast:
        rgb = behind + _LOW_CONTRAST_MIX * (rgb - behind)
    r, g, b = (int(v) for v in np.clip(np.rint(rgb), 0, 255))
    return name, (r, g, b), low_contrast


def _sample_bands(rng: np.random.Generator, size: int) -> list[_Band]:
    """Sky above a random horizon; grass, sand or water below; sometimes water in between."""
    horizon = round(rng.uniform(0.25, 0.65) * size)
    bottom = _BOTTOM_STUFF[rng.integers(len(_BOTTOM_STUFF))]
    edges = [("sky", 0, horizon)]
    if bottom != "water" and rng.random() < _MIDDLE_WATER_PROB:
        shore = horizon + max(2, round(rng.uniform(0.12, 0.25) * size))
        edges += [("water", horizon, shore), (bottom, shore, size)]
    else:
        edges.append((bottom, horizon, size))
    jitter = rng.integers(-_BASE_JITTER, _BASE_JITTER + 1, (len(edges), 3))
    return [
        _Band(name, top, bottom, np.add(_STUFF_STYLES[name][0], shift))
        for (name, top, bottom), shift in zip(edges, jitter, strict=True)
    ]


def _paint_bands(rng: np.random.Generator, bands: list[_Band], size: int) -> np.ndarray:
    pixels = np.empty((size, size, 3), dtype=np.uint8)
    for band in bands:
        _, gradient, noise_std = _STUFF_STYLES[band.name]
        height = band.bottom - band.top
        ramp = np.linspace(0.0, gradient, height)[:, None, None]  # (h, 1, 1)
        noise = rng.normal(0.0, noise_std, (height, size, 1))  # grey noise: texture, not colour speckle
        pixels[band.top : band.bottom] = np.clip(np.rint(band.base + ramp + noise), 0, 255)
    return pixels
