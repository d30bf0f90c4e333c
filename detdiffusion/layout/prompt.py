"""Layout prompts: ``An image with (person, <l23><l44>, [easy]), (grass, <l0><l255>, [background])``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.types import Attribute, Layout, LayoutObject

#: Attribute tokens added to the tokenizer, one per attribute that is written into prompts.
ATTRIBUTE_TOKENS: dict[Attribute, str] = {
    Attribute.EASY: "[easy]",
    Attribute.HARD: "[hard]",
    Attribute.BACKGROUND: "[background]",
}

# Characters that delimit the default template; a class name holding one could not be parsed back.
_RESERVED = set("(),[]<>")


def normalize_class_name(name: str, overrides: Mapping[str, str] | None = None) -> str:
    """Class name as written in prompts: COCO-Stuff ``wall-brick`` → ``wall brick``.

    ``-`` and ``_`` become spaces, runs of whitespace collapse, and a trailing ``-merged``
    (COCO panoptic) is dropped. ``overrides`` maps raw names to prompt names first.
    """
    if overrides and name in overrides:
        return overrides[name]
    name = re.sub(r"-merged$", "", name.strip())
    return " ".join(re.sub(r"[-_]", " ", name).split())


@dataclass(frozen=True)
class PromptTemplate:
    """How a layout is written as text.

    Args:
        prefix: text before the first object.
        object: one object; fields ``{name}``, ``{location}`` and ``{attribute}``.
        object_without_attribute: an object whose attribute is ``none``.
        separator: text between objects.
        suffix: text after the last object.
    """

    prefix: str = "An image with "
    object: str = "({name}, {location}, {attribute})"
    object_without_attribute: str = "({name}, {location})"
    separator: str = ", "
    suffix: str = ""

    def __post_init__(self) -> None:
        for name, fields in (
            ("object", ("{name}", "{location}", "{attribute}")),
            ("object_without_attribute", ("{name}", "{location}")),
        ):
            text = getattr(self, name)
            missing = [f for f in fields if text.count(f) != 1]
            if missing:
                raise ValueError(f"PromptTemplate.{name} must contain each of {fields} once, got {text!r}")
        if not self.separator:
            raise ValueError("PromptTemplate.separator must not be empty (objects could not be told apart)")

    def render_object(self, obj: LayoutObject, location: str) -> str:
        """One object as text, ``location`` being its two location tokens."""
        if obj.attribute is Attribute.NONE:
            return self.object_without_attribute.format(name=obj.category, location=location)
        return self.object.format(
            name=obj.category, location=location, attribute=ATTRIBUTE_TOKENS[obj.attribute]
        )

    def _object_regex(self, text: str) -> str:
        pattern = re.escape(text)
        pattern = pattern.replace(re.escape("{name}"), r"(?P<name>[^()\[\]<>,]+?)")
        pattern = pattern.replace(re.escape("{location}"), r"(?P<location><l\d+><l\d+>)")
        attributes = "|".join(re.escape(t) for t in ATTRIBUTE_TOKENS.values())
        return pattern.replace(re.escape("{attribute}"), rf"(?P<attribute>{attributes})")


@dataclass(frozen=True)
class PromptBuilder:
    """Turns layouts into prompts and prompts back into layouts.

    Args:
        grid: location token grid.
        template: prompt template.
        class_names: optional raw → prompt name overrides (otherwise ``normalize_class_name``).
    """

    grid: LocationGrid = field(default_factory=LocationGrid)
    template: PromptTemplate = field(default_factory=PromptTemplate)
    class_names: Mapping[str, str] | None = None

    def class_name(self, raw: str) -> str:
        """Prompt name of a dataset class; rejects names the prompt could not be parsed back from."""
        name = normalize_class_name(raw, self.class_names)
        bad = sorted(_RESERVED & set(name))
        if not name or bad:
            raise ValueError(
                f"class name {raw!r} → {name!r} cannot go into a layout prompt"
                + (f" (it holds {''.join(bad)!r})" if bad else " (empty)")
                + "; give it another name with class_names={raw: new_name}"
            )
        return name

    def object_strings(self, layout: Layout) -> list[str]:
        """Each object of ``layout`` as text, in layout order."""
        if not len(layout):
            return []
        # All corners in one grid call: per-object numpy calls cost more than the tokenizer.
        corners = self.grid.points_to_indices(layout.boxes().reshape(-1, 2)).reshape(-1, 2).tolist()
        return [
            self.template.render_object(o, f"<l{a}><l{b}>")
            for o, (a, b) in zip(layout.objects, corners, strict=True)
        ]

    def build(self, layout: Layout) -> str:
        """The prompt for ``layout``, objects in layout order (deterministic)."""
        t = self.template
        return t.prefix + t.separator.join(self.object_strings(layout)) + t.suffix

    def shuffled(self, layout: Layout, rng: np.random.Generator) -> Layout:
        """``layout`` with its objects in random order (random-order training, DESIGN.md §1)."""
        order = rng.permutation(len(layout))
        return layout.with_objects([layout.objects[i] for i in order])

    def parse(self, prompt: str, category_ids: Mapping[str, int] | None = None) -> Layout:
        """The layout a prompt describes (boxes at grid bin centres).

        Raises:
            ValueError: if the prompt does not follow the template.
        """
        t = self.template
        if not prompt.startswith(t.prefix) or not prompt.endswith(t.suffix):
            raise ValueError(f"prompt does not start with {t.prefix!r} and end with {t.suffix!r}: {prompt!r}")
        body = prompt[len(t.prefix) : len(prompt) - len(t.suffix)]
        with_attr = re.compile(t._object_regex(t.object))
        without_attr = re.compile(t._object_regex(t.object_without_attribute))
        objects, pos = [], 0
        while pos < len(body):
            if objects:
                if not body.startswith(t.separator, pos):
                    raise ValueError(
                        f"expected {t.separator!r} at character {pos} of the prompt body: {body!r}"
                    )
                pos += len(t.separator)
            m = with_attr.match(body, pos) or without_attr.match(body, pos)
            if m is None:
                raise ValueError(f"no object following the template at character {pos} of {body!r}")
            groups = m.groupdict()
            attribute = next(
                (a for a, tok in ATTRIBUTE_TOKENS.items() if tok == groups.get("attribute")), Attribute.NONE
            )
            box = _widen_degenerate(self.grid.decode_box(groups["location"]), self.grid)
            name = groups["name"]
            objects.append(
                LayoutObject(name, box, attribute=attribute, category_id=(category_ids or {}).get(name))
            )
            pos = m.end()
        return Layout(tuple(objects))


def _widen_degenerate(box: Sequence[float], grid: LocationGrid) -> tuple[float, float, float, float]:
    """A box whose corners fell into one bin decodes to a line or a point: widen it to just under
    a bin, so that it is a valid box and still encodes back to the same two tokens."""
    x0, y0, x1, y1 = box
    hx, hy = 0.49 / (grid.w_bins - 1), 0.49 / (grid.h_bins - 1)
    if x1 <= x0:
        x0, x1 = max(0.0, x0 - hx), min(1.0, x1 + hx)
    if y1 <= y0:
        y0, y1 = max(0.0, y0 - hy), min(1.0, y1 + hy)
    return (x0, y0, x1, y1)
