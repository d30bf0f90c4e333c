"""Tests of image decoding and of the geometry applied to images, boxes and masks together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from detdiffusion.data.transforms import (
    Geometry,
    from_model_range,
    load_rgb,
    plan_geometry,
    to_model_range,
)

# pycocotools' own mask decoding trips a NumPy 2 deprecation; nothing here to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

#: Few examples, no deadline (the first call pays for imports), no example database in the tree.
GEOMETRY_SETTINGS = settings(max_examples=30, deadline=None, database=None)

# --- load_rgb -----------------------------------------------------------------------------------

W, H = 5, 3  # not square, so that a transposed result shows


def _gray(values: list[float], dtype: Any, mode: str | None = None) -> Image.Image:
    """A W x H image whose first row holds ``values`` (the rest zeros)."""
    arr = np.zeros((H, W), dtype=dtype)
    arr[0, : len(values)] = values
    return Image.fromarray(arr, mode) if mode else Image.fromarray(arr)


def _rgb_of(values: list[int]) -> np.ndarray:
    row = np.zeros((H, W), dtype=np.uint8)
    row[0, : len(values)] = values
    return np.repeat(row[..., None], 3, axis=2)


def _palette() -> Image.Image:
    img = Image.new("P", (W, H), 0)
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 200, 100] + [0] * (256 * 3 - 9))
    img.putpixel((1, 0), 1)
    img.putpixel((4, 2), 2)
    return img


def _palette_expected() -> np.ndarray:
    out = np.zeros((H, W, 3), dtype=np.uint8)
    out[0, 1] = (255, 0, 0)
    out[2, 4] = (0, 200, 100)
    return out


def _full(color: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.asarray(color, dtype=np.uint8), (H, W, 3))


# name: (file suffix, make the image, expected RGB, tolerance)
DECODE_CASES: dict[str, tuple[str, Callable[[], Image.Image], np.ndarray, int]] = {
    "RGB png": (".png", lambda: Image.new("RGB", (W, H), (10, 20, 30)), _full((10, 20, 30)), 0),
    "RGB jpeg": (".jpg", lambda: Image.new("RGB", (W, H), (200, 40, 90)), _full((200, 40, 90)), 6),
    "L png": (".png", lambda: _gray([0, 77, 255], np.uint8), _rgb_of([0, 77, 255]), 0),
    "L jpeg": (".jpg", lambda: Image.new("L", (W, H), 77), _full((77, 77, 77)), 3),
    "L tiff": (".tif", lambda: _gray([0, 77, 255], np.uint8), _rgb_of([0, 77, 255]), 0),
    "LA png": (".png", lambda: Image.new("LA", (W, H), (100, 50)), _full((100, 100, 100)), 0),
    "P png": (".png", _palette, _palette_expected(), 0),
    "RGBA png (alpha dropped)": (
        ".png",
        lambda: Image.new("RGBA", (W, H), (10, 20, 30, 0)),
        _full((10, 20, 30)),
        0,
    ),
    "CMYK jpeg": (".jpg", lambda: Image.new("CMYK", (W, H), (0, 255, 255, 0)), _full((255, 0, 0)), 6),
    "CMYK tiff": (".tif", lambda: Image.new("CMYK", (W, H), (0, 255, 255, 0)), _full((255, 0, 0)), 0),
    # 16 bit: scaled by 255/65535, not clipped: 32768 → 127.5 → 128, 1000 → 3.9 → 4.
    "I;16 png": (
        ".png",
        lambda: _gray([0, 32768, 65535, 1000, 257], np.uint16),
        _rgb_of([0, 128, 255, 4, 1]),
        0,
    ),
    "I;16 tiff": (
        ".tif",
        lambda: _gray([0, 32768, 65535, 1000, 257], np.uint16),
        _rgb_of([0, 128, 255, 4, 1]),
        0,
    ),
    # Mode I holding 16-bit data (how some Pillow versions open 16-bit PNGs).
    "I tiff, 16-bit values": (
        ".tif",
        lambda: _gray([0, 32768, 65535, 1000], np.int32, "I"),
        _rgb_of([0, 128, 255, 4]),
        0,
    ),
    "F tiff in [0, 1]": (
        ".tif",
        lambda: _gray([0.0, 0.5, 1.0, 0.25, float("nan")], np.float32, "F"),
        _rgb_of([0, 128, 255, 64, 0]),
        0,
    ),
    "F tiff in [0, 255]": (
        ".tif",
        lambda: _gray([0.0, 100.4, 255.0, 7.6], np.float32, "F"),
        _rgb_of([0, 100, 255, 8]),
        0,
    ),
    "1 png": (".png", lambda: _gray([1, 0, 1], bool), _rgb_of([255, 0, 255]), 0),
}


@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_load_rgb_modes(tmp_path: Path, case: str) -> None:
    suffix, make, expected, tolerance = DECODE_CASES[case]
    path = tmp_path / f"image{suffix}"
    img = make()
    img.save(path, **({"quality": 100} if suffix == ".jpg" else {}))
    with Image.open(path) as check:
        assert check.mode == img.mode, "the test file does not have the mode under test"

    out = load_rgb(path, image_id=3)
    assert out.shape == (H, W, 3)
    assert out.dtype == np.uint8
    diff = np.abs(out.astype(int) - expected.astype(int))
    assert diff.max() <= tolerance, f"{case}: got\n{out[..., 0]}\nexpected\n{expected[..., 0]}"


def test_load_rgb_32_bit_integers_are_scaled_not_clipped(tmp_path: Path) -> None:
    # A 32-bit image using its range: distinct values must stay distinct, the top maps to 255.
    path = tmp_path / "image.tif"
    _gray([0, 2**24, 2**30, 2**31 - 1], np.int32, "I").save(path)
    out = load_rgb(path)[0, :4, 0]
    assert out[0] == 0 and out[3] == 255
    assert 0 < out[2] < 255, f"2**30 of 2**31 - 1 became {out[2]} (clipped?)"
    assert out[1] < out[2]


def test_load_rgb_accepts_str_paths_and_no_image_id(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    Image.new("RGB", (W, H), (1, 2, 3)).save(path)
    assert np.array_equal(load_rgb(str(path)), _full((1, 2, 3)))


def _noise_image(size: int = 48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_load_rgb_truncated_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"image{suffix}"
    _noise_image().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        load_rgb(path, image_id=417)
    assert str(path) in str(info.value)
    assert "image id 417" in str(info.value)


@pytest.mark.parametrize("content", [b"not an image at all\n", b""], ids=["text", "empty"])
def test_load_rgb_not_an_image(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_rgb(path, image_id=418)
    assert str(path) in str(info.value)
    assert "image id 418" in str(info.value)


def test_load_rgb_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError) as info:
        load_rgb(path, image_id=419)
    assert str(path) in str(info.value)
    assert "image id 419" in str(info.value)


# --- geometry -----------------------------------------------------------------------------------

BACKGROUND = (40, 40, 40)
COLOUR = (220, 30, 120)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _mask_bbox(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.asarray([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def _runs(bitmap: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts: column-major run lengths, starting with a run of zeros."""
    flat = bitmap.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return [0, *runs] if flat[0] else runs


def _plan(
    width: int, height: int, size: int | tuple[int, int], mode: str, random_crop: bool, flip: bool, seed: int
) -> Geometry:
    rng = np.random.default_rng(seed)
    return plan_geometry(width, height, size, mode, random_crop=random_crop, flip=flip, rng=rng)  # type: ignore[arg-type]


def _out_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


sizes = st.one_of(st.integers(80, 128), st.tuples(st.integers(80, 128), st.integers(80, 128)))
modes = st.sampled_from(["crop", "squash"])


@GEOMETRY_SETTINGS
@given(
    width=st.integers(24, 160),
    height=st.integers(24, 160),
    size=sizes,
    mode=modes,
    random_crop=st.booleans(),
    flip=st.booleans(),
    seed=st.integers(0, 2**16),
    start=st.tuples(st.floats(0.0, 0.45), st.floats(0.0, 0.45)),
    length=st.tuples(st.floats(0.5, 0.55), st.floats(0.5, 0.55)),
)
def test_image_box_and_masks_agree(
    width: int,
    height: int,
    size: int | tuple[int, int],
    mode: str,
    random_crop: bool,
    flip: bool,
    seed: int,
    start: tuple[float, float],
    length: tuple[float, float],
) -> None:
    g = _plan(width, height, size, mode, random_crop, flip, seed)
    out_h, out_w = _out_hw(size)

    # A rectangle on integer pixel edges, inside the part of the source the output shows.
    visible_x = (g.crop_x / g.scale_x, (g.crop_x + g.out_w) / g.scale_x)
    visible_y = (g.crop_y / g.scale_y, (g.crop_y + g.out_h) / g.scale_y)
    span_x, span_y = visible_x[1] - visible_x[0], visible_y[1] - visible_y[0]
    x0 = int(np.ceil(visible_x[0] + start[0] * span_x))
    y0 = int(np.ceil(visible_y[0] + start[1] * span_y))
    x1 = min(int(np.floor(visible_x[0] + (start[0] + length[0]) * span_x)), width)
    y1 = min(int(np.floor(visible_y[0] + (start[1] + length[1]) * span_y)), height)
    box = np.asarray([x0, y0, x1, y1], dtype=np.float64)
    out_box = g.boxes(box[None])[0]
    # Boxes of reasonable size only: the three rasterisations may disagree by a pixel row and a
    # pixel column where an edge falls on pixel centres, which costs a 40-pixel box 10 % IoU.
    assume(out_box[2] - out_box[0] >= 40 and out_box[3] - out_box[1] >= 40)

    source = torch.empty((3, height, width), dtype=torch.uint8)
    source[:] = torch.tensor(BACKGROUND, dtype=torch.uint8)[:, None, None]
    source[:, y0:y1, x0:x1] = torch.tensor(COLOUR, dtype=torch.uint8)[:, None, None]
    bitmap = np.zeros((height, width), dtype=np.uint8)
    bitmap[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(bitmap))
    rle_json = {"size": [height, width], "counts": rle["counts"].decode("ascii")}  # as read from JSON
    uncompressed = {"size": [height, width], "counts": _runs(bitmap)}

    image = g.image(source)
    m_box = g.mask(None, box)
    m_poly = g.mask([[x0, y0, x1, y0, x1, y1, x0, y1]])
    m_rle = g.mask(rle_json)
    m_uncompressed = g.mask(uncompressed)

    assert image.shape == (3, out_h, out_w) and image.dtype == torch.uint8
    for m in (m_box, m_poly, m_rle, m_uncompressed):
        assert m.shape == (out_h, out_w) and m.dtype == np.bool_
    assert np.array_equal(m_rle, m_uncompressed)
    assert _iou(m_poly, m_box) > 0.9
    assert _iou(m_rle, m_box) > 0.9
    assert _iou(m_poly, m_rle) > 0.9
    for m in (m_box, m_poly, m_rle):
        np.testing.assert_allclose(_mask_bbox(m), out_box, atol=1.0 + 1e-6)

    # Pixels well inside the box have the rectangle's colour, pixels well outside the background's;
    # the margin is the reach of the resampling kernel: two pixels, or half a source pixel upscaled.
    pixels = image.permute(1, 2, 0).numpy().astype(int)
    margin = 2 + int(np.ceil(max(g.scale_x, g.scale_y) / 2))
    bx0, by0 = int(np.floor(out_box[0])), int(np.floor(out_box[1]))
    bx1, by1 = int(np.ceil(out_box[2])), int(np.ceil(out_box[3]))
    inner = np.zeros((out_h, out_w), dtype=bool)
    inner[by0 + margin : by1 - margin, bx0 + margin : bx1 - margin] = True
    outer = np.ones((out_h, out_w), dtype=bool)
    outer[max(by0 - margin, 0) : by1 + margin, max(bx0 - margin, 0) : bx1 + margin] = False
    assert inner.any()
    assert np.abs(pixels[inner] - COLOUR).max() <= 2
    assert np.abs(pixels[outer] - BACKGROUND).max() <= 2
    # And the masks cover the rectangle's pixels: the mean colour inside a mask is the rectangle's.
    for m in (m_poly, m_rle):
        assert np.abs(pixels[m].mean(axis=0) - COLOUR).max() < 0.1 * 180


@GEOMETRY_SETTINGS
@given(
    width=st.integers(2, 200),
    height=st.integers(2, 200),
    size=st.one_of(st.integers(1, 64), st.tuples(st.integers(1, 64), st.integers(1, 64))),
    mode=modes,
    random_crop=st.booleans(),
    flip=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_output_size_is_exact(
    width: int, height: int, size: int | tuple[int, int], mode: str, random_crop: bool, flip: bool, seed: int
) -> None:
    g = _plan(width, height, size, mode, random_crop, flip, seed)
    out_h, out_w = _out_hw(size)
    assert (g.out_h, g.out_w, g.src_w, g.src_h) == (out_h, out_w, width, height)
    res_h, res_w = g.resized
    assert 0 <= g.crop_x <= res_w - out_w and 0 <= g.crop_y <= res_h - out_h
    if mode == "crop":  # the aspect ratio is kept (up to rounding to whole pixels)
        assert g.scale_x == pytest.approx(g.scale_y, rel=1 / min(res_w, res_h) + 1e-9)
        assert res_w == out_w or res_h == out_h
    else:
        assert (res_h, res_w, g.crop_x, g.crop_y) == (out_h, out_w, 0, 0)

    image = g.image(torch.zeros((3, height, width), dtype=torch.uint8))
    assert image.shape == (3, out_h, out_w)
    full = np.asarray([0, 0, width, height], dtype=np.float64)
    assert g.mask(None, full).shape == (out_h, out_w)
    assert g.mask(None, full).all()  # the whole source covers the whole output
    assert g.mask([[0, 0, width, 0, width, height, 0, height]]).shape == (out_h, out_w)
    rle = mask_utils.encode(np.ones((height, width), dtype=np.uint8, order="F"))
    assert g.mask(rle).shape == (out_h, out_w)
    np.testing.assert_allclose(g.boxes(full[None])[0], [0, 0, out_w, out_h], atol=1e-9)


@GEOMETRY_SETTINGS
@given(
    width=st.integers(8, 160),
    height=st.integers(8, 160),
    size=sizes,
    mode=modes,
    random_crop=st.booleans(),
    seed=st.integers(0, 2**16),
    box=st.tuples(*[st.floats(0.0, 1.0)] * 4),
)
def test_flip_twice_is_identity(
    width: int,
    height: int,
    size: int | tuple[int, int],
    mode: str,
    random_crop: bool,
    seed: int,
    box: tuple[float, float, float, float],
) -> None:
    corners = np.asarray(box).reshape(2, 2) * [width, height]
    boxes = np.concatenate([corners.min(axis=0), corners.max(axis=0)])[None]
    plain = _plan(width, height, size, mode, random_crop, False, seed)
    flipped = _plan(width, height, size, mode, random_crop, True, seed)
    assert flipped == replace(plain, flip=True)  # the flip does not change the crop

    out_h, out_w = _out_hw(size)
    mirror = Geometry(out_w, out_h, out_w, out_h, 1.0, 1.0, 0, 0, flip=True)
    np.testing.assert_allclose(mirror.boxes(flipped.boxes(boxes)), plain.boxes(boxes), atol=1e-9)
    np.testing.assert_allclose(mirror.boxes(mirror.boxes(plain.boxes(boxes))), plain.boxes(boxes), atol=1e-9)

    source = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    assert torch.equal(mirror.image(flipped.image(source)), plain.image(source))
    # Decoded masks are mirrored exactly.
    bitmap = np.zeros((height, width), dtype=np.uint8, order="F")
    x0, y0, x1, y1 = np.round(boxes[0]).astype(int)
    bitmap[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(bitmap)
    assert np.array_equal(flipped.mask(rle)[:, ::-1], plain.mask(rle))


@pytest.mark.parametrize(
    ("width", "height", "size", "box"),
    [
        (20, 20, 30, (3, 5, 9, 12)),  # 1.5x: edges at 4.5, 7.5, 13.5, 18
        (100, 100, 50, (11, 21, 31, 40)),  # 0.5x
        (10, 10, 30, (2, 3, 5, 9)),  # 3x: edges on pixel edges
        (40, 24, 36, (7, 2, 30, 20)),  # crop, 1.5x
    ],
)
def test_rle_mask_is_aligned_with_the_box(
    width: int, height: int, size: int, box: tuple[int, int, int, int]
) -> None:
    # The rectangle's RLE, decoded and resized, covers the pixels whose centres lie in the
    # transformed box: resizing must sample at pixel centres, without a half-pixel shift.
    g = plan_geometry(width, height, size, "crop")
    x0, y0, x1, y1 = box
    bitmap = np.zeros((height, width), dtype=np.uint8, order="F")
    bitmap[y0:y1, x0:x1] = 1
    m_rle = g.mask(mask_utils.encode(bitmap))
    m_box = g.mask(None, np.asarray(box, dtype=np.float64))
    out_box = g.boxes(np.asarray([box]))[0]
    assert np.array_equal(_mask_bbox(m_rle), _mask_bbox(m_box)), (
        f"box {out_box}, RLE mask {_mask_bbox(m_rle)}"
    )


def test_flip_mirrors_boxes_and_masks() -> None:
    g = Geometry(10, 4, 10, 4, 1.0, 1.0, 0, 0, flip=True)
    np.testing.assert_array_equal(g.boxes(np.asarray([[1, 1, 4, 3]])), [[6, 1, 9, 3]])
    np.testing.assert_array_equal(g.boxes(g.boxes(np.asarray([[1, 1, 4, 3]]))), [[1, 1, 4, 3]])
    expected = np.zeros((4, 10), dtype=bool)
    expected[1:3, 6:9] = True
    assert np.array_equal(g.mask(None, np.asarray([1, 1, 4, 3])), expected)
    assert np.array_equal(g.mask([[1, 1, 4, 1, 4, 3, 1, 3]]), expected)
    bitmap = np.zeros((4, 10), dtype=np.uint8, order="F")
    bitmap[1:3, 1:4] = 1
    assert np.array_equal(g.mask(mask_utils.encode(bitmap)), expected)
    image = torch.arange(40, dtype=torch.uint8).reshape(1, 4, 10).expand(3, 4, 10)
    assert torch.equal(g.image(image), image.flip(-1))


@GEOMETRY_SETTINGS
@given(
    width=st.integers(8, 200),
    height=st.integers(8, 200),
    size=st.one_of(st.integers(4, 64), st.tuples(st.integers(4, 64), st.integers(4, 64))),
    flip=st.booleans(),
)
def test_centre_crop_is_centred(width: int, height: int, size: int | tuple[int, int], flip: bool) -> None:
    g = plan_geometry(width, height, size, "crop", flip=flip)
    res_h, res_w = g.resized
    # The margins cut off left and right (top and bottom) differ by at most one pixel.
    assert abs(g.crop_x - (res_w - g.out_w - g.crop_x)) <= 1
    assert abs(g.crop_y - (res_h - g.out_h - g.crop_y)) <= 1
    # The source centre lands on the output centre.
    eps = 1e-3
    centre = np.asarray([[width / 2 - eps, height / 2 - eps, width / 2 + eps, height / 2 + eps]])
    x0, y0, x1, y1 = g.boxes(centre)[0]
    assert abs((x0 + x1) / 2 - g.out_w / 2) <= 0.5 + 1e-9
    assert abs((y0 + y1) / 2 - g.out_h / 2) <= 0.5 + 1e-9


def test_random_crop_moves_within_bounds() -> None:
    rng = np.random.default_rng(0)
    crops = set()
    for _ in range(50):
        g = plan_geometry(120, 40, 32, "crop", random_crop=True, rng=rng)
        res_h, res_w = g.resized
        assert (res_h, res_w) == (32, 96)
        assert 0 <= g.crop_x <= res_w - 32 and g.crop_y == 0
        crops.add(g.crop_x)
    assert len(crops) > 10
    assert plan_geometry(120, 40, 32, "crop").crop_x == 32


def test_plan_geometry_errors() -> None:
    with pytest.raises(ValueError, match="rng"):
        plan_geometry(64, 32, 16, "crop", random_crop=True)
    with pytest.raises(ValueError, match="pad"):
        plan_geometry(64, 32, 16, "pad")  # type: ignore[arg-type]


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize(("width", "height", "size"), [(64, 48, 32), (30, 50, (20, 40)), (13, 7, (70, 50))])
def test_squash_maps_corners_to_corners(
    flip: bool, width: int, height: int, size: int | tuple[int, int]
) -> None:
    g = plan_geometry(width, height, size, "squash", flip=flip)
    out_h, out_w = _out_hw(size)
    sx, sy = out_w / width, out_h / height
    assert (g.scale_x, g.scale_y, g.crop_x, g.crop_y) == (sx, sy, 0, 0)
    np.testing.assert_allclose(g.boxes(np.asarray([[0, 0, width, height]])), [[0, 0, out_w, out_h]])
    corners = np.asarray([[0, 0, 1, 1], [width - 1, height - 1, width, height]], dtype=np.float64)
    top_left, bottom_right = [[0, 0, sx, sy]], [[out_w - sx, out_h - sy, out_w, out_h]]
    expected = np.asarray(top_left + bottom_right)
    if flip:
        expected[:, [0, 2]] = out_w - expected[:, [2, 0]]
    np.testing.assert_allclose(g.boxes(corners), expected, atol=1e-9)

    # Four coloured quadrants: each output corner pixel has its quadrant's colour.
    colours = torch.tensor([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 0]]], dtype=torch.uint8)
    source = torch.zeros((3, height, width), dtype=torch.uint8)
    for i, rows in enumerate((slice(0, height // 2), slice(height // 2, None))):
        for j, cols in enumerate((slice(0, width // 2), slice(width // 2, None))):
            source[:, rows, cols] = colours[i, j][:, None, None]
    image = g.image(source)
    assert image.shape == (3, out_h, out_w)
    right, left = (0, out_w - 1) if flip else (out_w - 1, 0)
    assert image[:, 0, left].tolist() == colours[0, 0].tolist()
    assert image[:, 0, right].tolist() == colours[0, 1].tolist()
    assert image[:, out_h - 1, left].tolist() == colours[1, 0].tolist()
    assert image[:, out_h - 1, right].tolist() == colours[1, 1].tolist()


@pytest.mark.parametrize("flip", [False, True])
def test_boxes_outside_the_crop_are_clipped(flip: bool) -> None:
    # 200 x 50 → 50 x 50: scale 1, the centre crop keeps x in [75, 125).
    g = plan_geometry(200, 50, 50, "crop", flip=flip)
    assert (g.scale_x, g.scale_y, g.crop_x, g.crop_y) == (1.0, 1.0, 75, 0)
    boxes = np.asarray(
        [
            [0, 10, 50, 20],  # wholly left of the crop
            [60, 10, 100, 20],  # reaching in from the left
            [110, -5, 190, 60],  # reaching out right, above and below
            [150, 10, 200, 20],  # wholly right of the crop
            [80, 10, 90, 20],  # inside
        ],
        dtype=np.float64,
    )
    expected = np.asarray(
        [[0, 10, 0, 20], [0, 10, 25, 20], [35, 0, 50, 50], [50, 10, 50, 20], [5, 10, 15, 20]],
        dtype=np.float64,
    )
    if flip:
        expected[:, [0, 2]] = 50 - expected[:, [2, 0]]
    out = g.boxes(boxes)
    np.testing.assert_allclose(out, expected)
    assert (out >= 0).all() and (out <= 50).all()
    assert (out[:, 0] <= out[:, 2]).all() and (out[:, 1] <= out[:, 3]).all()
    # A box cut away entirely leaves an empty mask; one partly inside, the visible part.
    assert not g.mask(None, boxes[0]).any()
    assert g.mask(None, boxes[1]).sum() == 25 * 10


def test_identity_geometry_keeps_the_image() -> None:
    g = plan_geometry(24, 16, (16, 24), "squash")
    source = torch.randint(0, 256, (3, 16, 24), dtype=torch.uint8)
    assert torch.equal(g.image(source), source)
    assert torch.equal(plan_geometry(24, 16, (16, 24), "crop").image(source), source)


# --- value range --------------------------------------------------------------------------------


def test_model_range_round_trip() -> None:
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).expand(3, 16, 16)
    scaled = to_model_range(values)
    assert scaled.dtype == torch.float32
    assert scaled.min().item() == -1.0 and scaled.max().item() == 1.0
    assert torch.equal(from_model_range(scaled), values)
    back = from_model_range(torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.5]))
    assert back.dtype == torch.uint8
    assert back.tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds half to even: 128
