"""What a dataset holds and what the model will be told about it: counts, token budgets, a picture."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from detdiffusion.data.coco import CocoLayouts
from detdiffusion.data.dataset import record_layout
from detdiffusion.data.transforms import load_rgb
from detdiffusion.layout.encoding import LayoutTokenizer
from detdiffusion.viz import draw_layout, image_grid

log = logging.getLogger(__name__)


@dataclass
class DatasetSummary:
    """Counts and token budgets of a dataset, as ``inspect-data`` reports them."""

    filter_report: dict[str, int]
    objects_per_class: dict[str, dict[str, Any]]
    attributes: dict[str, int]
    objects_per_image: dict[str, float]
    prompt_tokens: dict[str, float]
    tokens_per_object: dict[str, float]
    prompts_over_one_window: int
    objects_dropped_by_drop_smallest: int
    examples: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = ["Filtering:"] + [
            f"  {k.replace('_', ' '):<26} {v:>9,}" for k, v in self.filter_report.items()
        ]
        lines.append("Objects per class (kept):")
        for name, row in sorted(self.objects_per_class.items(), key=lambda kv: -kv[1]["count"]):
            lines.append(f"  {name:<26} {row['kind']:<6} {row['count']:>9,}")
        lines.append("Attributes: " + ", ".join(f"{k} {v:,}" for k, v in self.attributes.items()))
        lines.append("Objects per image: " + _stats_line(self.objects_per_image))
        lines.append("Prompt tokens (with BOS/EOS): " + _stats_line(self.prompt_tokens))
        lines.append("Tokens per object: " + _stats_line(self.tokens_per_object))
        lines.append(
            f"Prompts over 77 tokens: {self.prompts_over_one_window:,} "
            f"(policy 'drop_smallest' would drop {self.objects_dropped_by_drop_smallest:,} objects; "
            "'long' keeps them in extra windows)"
        )
        lines += ["Example prompts:"] + [f"  {p}" for p in self.examples]
        return "\n".join(lines)


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0.0, "median": 0.0, "max": 0}
    arr = np.asarray(values)
    return {
        "min": int(arr.min()),
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        "max": int(arr.max()),
    }


def _stats_line(s: dict[str, float]) -> str:
    return f"min {s['min']}, mean {s['mean']:.1f}, median {s['median']:g}, max {s['max']}"


def summarize(coco: CocoLayouts, tokenizer: LayoutTokenizer, progress: bool = True) -> DatasetSummary:
    """Counts of classes and attributes, and the token length of every image's prompt."""
    builder = tokenizer.builder
    names = {cid: builder.class_name(c.name) for cid, c in coco.categories.items()}
    per_class: Counter[int] = Counter()
    attributes: Counter[str] = Counter()
    objects, lengths, per_object, dropped, over = [], [], [], 0, 0
    examples = []
    for record in tqdm(coco.images, desc="tokenizing prompts", disable=not progress, unit="img"):
        layout = record_layout(record, coco.categories, names)
        per_class.update(a.category_id for a in record.annotations)
        attributes.update(o.attribute.value for o in layout.objects)
        objects.append(len(layout))
        budget = tokenizer.budget(layout)
        lengths.append(budget.tokens)
        per_object += budget.per_object.tolist()
        over += budget.windows > 1
        dropped += budget.would_drop
        if len(examples) < 3:
            examples.append(budget.prompt)
    return DatasetSummary(
        filter_report=coco.report.as_dict(),
        objects_per_class={
            names[cid]: {"count": n, "kind": "stuff" if coco.categories[cid].is_stuff else "thing", "id": cid}
            for cid, n in per_class.items()
        },
        attributes=dict(attributes),
        objects_per_image=_stats(objects),
        prompt_tokens=_stats(lengths),
        tokens_per_object=_stats(per_object),
        prompts_over_one_window=over,
        objects_dropped_by_drop_smallest=dropped,
        examples=examples,
    )


def sample_grid(coco: CocoLayouts, tokenizer: LayoutTokenizer, num: int = 16, seed: int = 0, tile: int = 256):
    """A grid of ``num`` random images of the dataset with boxes, class names and attributes drawn."""
    if not len(coco):
        raise ValueError("the dataset holds no images after filtering; nothing to draw")
    names = {cid: tokenizer.builder.class_name(c.name) for cid, c in coco.categories.items()}
    picks = np.random.default_rng(seed).choice(len(coco), size=min(num, len(coco)), replace=False)
    tiles = []
    for i in sorted(picks):
        record = coco.images[i]
        tiles.append(
            draw_layout(load_rgb(record.path, record.id), record_layout(record, coco.categories, names), tile)
        )
    return image_grid(tiles, columns=4)


def write_inspection(summary: DatasetSummary, grid, out: Path) -> dict[str, Path]:
    """Write ``summary.json`` and ``samples.png`` into ``out`` (each atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "samples": out / "samples.png"}
    tmp = paths["summary"].with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(summary.__dict__, indent=2))
    os.replace(tmp, paths["summary"])
    tmp = paths["samples"].with_suffix(f".tmp{os.getpid()}.png")
    grid.save(tmp)
    os.replace(tmp, paths["samples"])
    return paths
