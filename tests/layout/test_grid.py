import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detdiffusion.layout.grid import LocationGrid

grids = st.builds(LocationGrid, st.integers(2, 300), st.integers(2, 300))
unit = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(grid=grids, a=unit, b=unit, c=unit, d=unit)
def test_decoded_box_is_within_half_a_bin(grid: LocationGrid, a: float, b: float, c: float, d: float) -> None:
    box = (min(a, c), min(b, d), max(a, c), max(b, d))
    decoded = np.asarray(grid.decode_box(grid.encode_box(box)))
    step = np.asarray([1 / (grid.w_bins - 1), 1 / (grid.h_bins - 1)] * 2)
    # Nearest bin centre: at most half a step away, so well within one bin.
    assert np.all(np.abs(decoded - np.asarray(box)) <= step / 2 + 1e-9)


def test_token_layout_is_row_major_and_corners_are_bin_centres() -> None:
    grid = LocationGrid(h_bins=4, w_bins=8)
    assert grid.num_tokens == 32
    assert grid.tokens[:2] == ["<l0>", "<l1>"] and grid.tokens[-1] == "<l31>"
    assert grid.encode_box((0, 0, 1, 1)) == "<l0><l31>"
    assert grid.point_index(1.0, 0.0) == 7  # top-right: row 0, last column
    assert grid.point_index(0.0, 1.0) == 24  # bottom-left: last row, column 0
    assert grid.decode_box("<l0><l31>") == (0.0, 0.0, 1.0, 1.0)


def test_rounding_is_to_nearest_bin() -> None:
    grid = LocationGrid(2, 11)  # column centres every 0.1
    assert grid.point_index(0.149, 0) == 1
    assert grid.point_index(0.151, 0) == 2
    assert grid.point_index(-0.5, 2.0) == grid.point_index(0.0, 1.0)  # clipped into the image


def test_snap_boxes_matches_encode_decode() -> None:
    grid = LocationGrid(16, 16)
    boxes = np.random.default_rng(0).uniform(0, 1, (20, 4))
    snapped = grid.snap_boxes(boxes)
    for box, snap in zip(boxes, snapped, strict=True):
        np.testing.assert_allclose(snap, grid.decode_box(grid.encode_box(box)))


@pytest.mark.parametrize("bad", ["<l1>", "<l1><l2><l3>", "<l1> <l2> x", "l1l2"])
def test_decode_rejects_malformed_tokens(bad: str) -> None:
    with pytest.raises(ValueError, match="two location tokens"):
        LocationGrid().decode_box(bad)


def test_decode_rejects_indices_outside_the_grid() -> None:
    with pytest.raises(ValueError, match="out of range"):
        LocationGrid(4, 4).decode_box("<l0><l16>")


@pytest.mark.parametrize("bins", [1, 0, 2.5])
def test_grid_validates_bins(bins) -> None:
    with pytest.raises(ValueError, match="h_bins"):
        LocationGrid(h_bins=bins)
