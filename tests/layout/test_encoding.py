import numpy as np
import pytest

from detdiffusion.layout.encoding import LayoutTokenizer
from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.prompt import PromptBuilder
from detdiffusion.layout.types import Attribute, Layout, LayoutObject

NAMES = ["person", "dining table", "wall brick", "traffic light", "cat"]


def _layout(n: int, seed: int = 0) -> Layout:
    rng = np.random.default_rng(seed)
    objects = []
    for i in range(n):
        x, y = rng.uniform(0, 0.6, 2)
        w, h = rng.uniform(0.05, 0.4, 2)
        objects.append(LayoutObject(NAMES[i % 5], (x, y, x + w, y + h), list(Attribute)[i % 4]))
    return Layout(tuple(objects), image_id=42)


@pytest.fixture
def layout_tokenizer(make_clip_tokenizer):
    def make(policy="long", **kwargs):
        return LayoutTokenizer(
            make_clip_tokenizer(), PromptBuilder(LocationGrid(16, 16)), policy=policy, **kwargs
        )

    return make


def test_short_prompt_is_one_window_matching_plain_tokenization(layout_tokenizer) -> None:
    lt = layout_tokenizer()
    encoded = lt.encode(_layout(4))
    assert encoded.num_windows == 1 and encoded.input_ids.shape == (77,)
    # The ids a plain diffusers pipeline would compute from the prompt string.
    plain = lt.tokenizer(encoded.prompt, padding="max_length", max_length=77).input_ids
    assert encoded.input_ids.tolist() == plain
    assert sorted(set(encoded.object_index.tolist()) - {-1}) == [0, 1, 2, 3]


def test_object_index_marks_each_objects_tokens(layout_tokenizer) -> None:
    lt = layout_tokenizer()
    layout = _layout(3)
    encoded = lt.encode(layout)
    tokens = lt.tokenizer.convert_ids_to_tokens(encoded.input_ids.tolist())
    for k, obj in enumerate(layout.objects):
        mine = [t for t, o in zip(tokens, encoded.object_index, strict=True) if o == k]
        location = lt.builder.grid.encode_box(obj.box)
        assert "".join(t for t in mine if t.startswith("<l")) == location
        assert mine[1].removesuffix("</w>") == obj.category.split()[0]


def test_long_policy_keeps_all_thirty_objects(layout_tokenizer) -> None:
    lt = layout_tokenizer("long")
    layout = _layout(30)
    encoded = lt.encode(layout)
    assert encoded.num_windows > 1 and encoded.dropped == 0 and len(encoded.kept) == 30
    windows = encoded.input_ids.reshape(-1, 77)
    assert (windows[:, 0] == lt.tokenizer.bos_token_id).all()
    assert all(lt.tokenizer.eos_token_id in w[1:] for w in windows)
    # Every object's tokens sit in one window, and every object is there.
    index = encoded.object_index.reshape(-1, 77)
    for k in range(30):
        assert len({w for w in range(len(index)) if (index[w] == k).any()}) == 1
    assert sorted(set(encoded.object_index.tolist()) - {-1}) == list(range(30))
    # All location and attribute tokens are there, in order.
    tokens = [t for w in windows for t in lt.tokenizer.convert_ids_to_tokens(w.tolist())]
    expected = [lt.builder.grid.encode_box(o.box) for o in layout.objects]
    assert "".join(t for t in tokens if t.startswith("<l")) == "".join(expected)
    assert sum(t in ("[easy]", "[hard]", "[background]") for t in tokens) == sum(
        o.attribute is not Attribute.NONE for o in layout.objects
    )


def test_drop_smallest_keeps_the_largest_and_counts(layout_tokenizer) -> None:
    lt = layout_tokenizer("drop_smallest")
    layout = _layout(30)
    encoded = lt.encode(layout)
    assert encoded.num_windows == 1 and encoded.dropped == 30 - len(encoded.kept) > 0
    areas = np.asarray([o.area for o in layout.objects])
    kept = list(encoded.kept)
    assert areas[kept].min() >= np.delete(areas, kept).max()  # the largest ones
    assert kept == sorted(kept)  # in layout order
    assert lt.builder.build(layout.with_objects([layout.objects[i] for i in kept])) == encoded.prompt
    assert lt.budget(layout).would_drop == encoded.dropped


def test_error_policy_refuses_naming_the_image(layout_tokenizer) -> None:
    with pytest.raises(ValueError, match=r"image 42.*tokens"):
        layout_tokenizer("error").encode(_layout(30))
    assert layout_tokenizer("error").encode(_layout(5)).num_windows == 1


def test_max_windows(layout_tokenizer) -> None:
    with pytest.raises(ValueError, match="max_windows=2"):
        layout_tokenizer("long", max_windows=2).encode(_layout(40))


def test_empty_layout_and_empty_text(layout_tokenizer) -> None:
    lt = layout_tokenizer()
    assert lt.encode(Layout(())).num_windows == 1
    empty = lt.encode_text("")
    assert empty.tolist() == [49406, 49407] + [49407] * 75
    assert np.array_equal(empty, lt.empty_window)


def test_tokens_per_object_on_the_real_vocabulary(layout_tokenizer) -> None:
    """The paper's template costs 8–11 tokens an object for COCO names (DESIGN.md §1)."""
    lt = layout_tokenizer()
    budget = lt.budget(
        Layout(
            (
                LayoutObject("person", (0, 0, 0.5, 0.5), "easy"),
                LayoutObject("dining table", (0.5, 0.5, 1, 1), "hard"),
            )
        )
    )
    assert budget.per_object.tolist() == [8, 9]  # "( person , <l><l> , [easy] )," and one word more
    assert budget.tokens == 3 + 8 + 9 + 2  # prefix, objects (the last one's ")" alone), BOS and EOS


def test_bad_policy(layout_tokenizer) -> None:
    with pytest.raises(ValueError, match="policy"):
        layout_tokenizer("truncate")
