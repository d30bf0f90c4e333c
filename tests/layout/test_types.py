import math

import pytest

from detdiffusion.layout.types import Attribute, Layout, LayoutObject


def test_pixel_and_normalised_boxes() -> None:
    obj = LayoutObject.from_pixels("cat", (64, 32, 192, 96), width=256, height=128)
    assert obj.box == (0.25, 0.25, 0.75, 0.75)
    assert obj.pixel_box(256, 128) == (64, 32, 192, 96)
    assert math.isclose(obj.area, 0.25)
    layout = Layout((obj,), width=256, height=128, image_id=3)
    assert layout.pixel_boxes().tolist() == [[64, 32, 192, 96]]


@pytest.mark.parametrize(
    "box", [(0.5, 0.1, 0.4, 0.2), (0, 0, 0, 1), (0, 0, 1.2, 1), (float("nan"), 0, 1, 1), (0, 0, 1)]
)
def test_bad_boxes_are_refused_naming_the_object(box) -> None:
    with pytest.raises(ValueError, match=r"'cat' \(annotation id 9\)"):
        LayoutObject("cat", box, annotation_id=9)


def test_attributes_parse_and_strategies() -> None:
    assert Attribute.parse("HARD") is Attribute.HARD
    assert Attribute.parse(None) is Attribute.NONE
    with pytest.raises(ValueError, match="medium"):
        Attribute.parse("medium")
    layout = Layout((LayoutObject("cat", (0, 0, 1, 1), "easy"), LayoutObject("dog", (0, 0, 1, 1))))
    assert {o.attribute for o in layout.with_attribute("hard").objects} == {Attribute.HARD}
