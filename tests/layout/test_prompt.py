import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.prompt import PromptBuilder, PromptTemplate, normalize_class_name
from detdiffusion.layout.types import Attribute, Layout, LayoutObject


def test_default_template_writes_the_paper_prompt() -> None:
    grid = LocationGrid(16, 16)
    # <l23> = row 1, column 7; <l44> = row 2, column 12; <l255> = the bottom-right corner.
    person = LayoutObject("person", (7 / 15, 1 / 15, 12 / 15, 2 / 15), Attribute.EASY)
    grass = LayoutObject("grass", (0.0, 0.0, 1.0, 1.0), Attribute.BACKGROUND)
    prompt = PromptBuilder(grid).build(Layout((person, grass)))
    assert prompt == "An image with (person, <l23><l44>, [easy]), (grass, <l0><l255>, [background])"


def test_object_without_attribute_has_no_attribute_token() -> None:
    obj = LayoutObject("cat", (0.0, 0.0, 0.5, 0.5))
    assert PromptBuilder(LocationGrid(3, 3)).build(Layout((obj,))) == "An image with (cat, <l0><l4>)"


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("wall-brick", "wall brick"),
        ("grass-merged", "grass"),
        ("dining_table", "dining table"),
        (" sky  ", "sky"),
    ],
)
def test_class_names_are_normalised(raw: str, name: str) -> None:
    assert normalize_class_name(raw) == name
    assert PromptBuilder().class_name(raw) == name


def test_class_name_overrides_and_reserved_characters() -> None:
    assert PromptBuilder(class_names={"tv": "television"}).class_name("tv") == "television"
    with pytest.raises(ValueError, match="class_names"):
        PromptBuilder().class_name("cat, dog")
    with pytest.raises(ValueError, match="empty"):
        PromptBuilder().class_name("--")


layouts = st.lists(
    st.tuples(
        st.sampled_from(["person", "wall brick", "playingfield", "traffic light", "sky"]),
        st.floats(0, 0.9),
        st.floats(0, 0.9),
        st.floats(0.05, 1.0),
        st.floats(0.05, 1.0),
        st.sampled_from(list(Attribute)),
    ),
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(objects=layouts)
def test_parse_prompt_round_trips(objects) -> None:
    grid = LocationGrid(16, 16)
    builder = PromptBuilder(grid)
    layout = Layout(
        tuple(
            LayoutObject(name, (x, y, min(1.0, x + w), min(1.0, y + h)), attribute)
            for name, x, y, w, h, attribute in objects
        )
    )
    parsed = builder.parse(builder.build(layout))
    assert [o.category for o in parsed.objects] == [o.category for o in layout.objects]
    assert [o.attribute for o in parsed.objects] == [o.attribute for o in layout.objects]
    np.testing.assert_allclose(parsed.boxes(), grid.snap_boxes(layout.boxes()), atol=1 / 15 / 2 + 1e-6)
    assert builder.build(parsed) == builder.build(layout)


def test_parse_with_a_custom_template() -> None:
    template = PromptTemplate(
        prefix="a photo: ",
        object="{attribute} {name} at {location}",
        object_without_attribute="{name} at {location}",
        separator="; ",
        suffix=".",
    )
    builder = PromptBuilder(LocationGrid(8, 8), template)
    layout = Layout((LayoutObject("dog", (0, 0, 0.5, 1.0), "hard"), LayoutObject("sky", (0, 0, 1, 0.3))))
    prompt = builder.build(layout)
    assert prompt == "a photo: [hard] dog at <l0><l60>; sky at <l0><l23>."
    assert [(o.category, o.attribute.value) for o in builder.parse(prompt).objects] == [
        ("dog", "hard"),
        ("sky", "none"),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "A picture of (cat, <l0><l5>)",
        "An image with (cat <l0><l5>)",
        "An image with (cat, <l0><l5>), ",
        "An image with x",
    ],
)
def test_parse_rejects_prompts_off_the_template(bad: str) -> None:
    with pytest.raises(ValueError):
        PromptBuilder().parse(bad)


def test_template_validation() -> None:
    with pytest.raises(ValueError, match="location"):
        PromptTemplate(object="({name}, {attribute})")
    with pytest.raises(ValueError, match="separator"):
        PromptTemplate(separator="")


def test_training_order_is_random_and_evaluation_order_is_fixed() -> None:
    builder = PromptBuilder()
    layout = Layout(tuple(LayoutObject(f"c{i}", (0.0, 0.0, 0.5, 0.5)) for i in range(6)))
    assert builder.build(layout) == builder.build(layout)
    orders = {
        tuple(o.category for o in builder.shuffled(layout, np.random.default_rng(s)).objects)
        for s in range(20)
    }
    assert len(orders) > 10
    first = builder.shuffled(layout, np.random.default_rng(3))
    assert first == builder.shuffled(layout, np.random.default_rng(3))  # seeded


def test_degenerate_box_decodes_to_a_small_box() -> None:
    builder = PromptBuilder(LocationGrid(4, 4))
    tiny = LayoutObject("dot", (0.5, 0.5, 0.51, 0.51))
    (obj,) = builder.parse(builder.build(Layout((tiny,)))).objects
    x0, y0, x1, y1 = obj.box
    assert x0 < 0.51 and x1 > 0.5 and y0 < 0.51 and y1 > 0.5
