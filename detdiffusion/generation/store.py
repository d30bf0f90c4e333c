"""A synthetic dataset on disk, written image by image so that a killed run resumes.

Layout of ``output_dir``::

    generation.json          what this folder is: layouts, strategy, seeds, sampler, model
    images/<layout>_<k>.png  sample k of layout (source image id) <layout>
    records/rank<r>.jsonl    one line an image, appended after its PNG is in place
    annotations.json         the merged COCO dataset, written once every image is done

An image counts as done when its record line is complete and its PNG exists; a rerun of the
same command generates exactly the rest. A folder made with other settings is refused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from detdiffusion.data.coco import Category
from detdiffusion.files import atomic_write_bytes
from detdiffusion.layout.types import Layout

__all__ = ["MANIFEST", "SyntheticStore"]

log = logging.getLogger(__name__)

MANIFEST = "generation.json"
ANNOTATIONS = "annotations.json"

#: ``(layout id, sample index)``: one image of the plan.
Key = tuple[int, int]


def _image_name(key: Key) -> str:
    return f"images/{key[0]}_{key[1]}.png"


class SyntheticStore:
    """The files of one generation run in ``root``.

    Args:
        root: the output folder.
        manifest: the run's settings; a folder holding another run's must not be reused.
    """

    def __init__(self, root: str | Path, manifest: Mapping[str, Any]) -> None:
        self.root = Path(root).expanduser()
        self.manifest = json.loads(json.dumps(manifest))  # plain JSON values, as read back

    # -- opening --------------------------------------------------------------------------------

    def open(self, create: bool) -> None:
        """Check the folder belongs to this run; ``create`` (rank zero) writes the manifest."""
        path = self.root / MANIFEST
        if path.is_file():
            theirs = json.loads(path.read_text())
            if theirs != self.manifest:
                diff = [
                    f"{k}: {theirs.get(k)!r} there, {self.manifest.get(k)!r} here"
                    for k in sorted(set(theirs) | set(self.manifest))
                    if theirs.get(k) != self.manifest.get(k)
                ]
                raise ValueError(
                    f"{self.root} holds another generation run's files ({'; '.join(diff)}). "
                    "Give another output folder, or delete this one to start over."
                )
            return
        if self.root.exists() and any(self.root.iterdir()):
            raise ValueError(
                f"{self.root} is not empty and has no {MANIFEST}: it is not a generation folder; "
                "give an empty or new output folder"
            )
        if create:
            (self.root / "images").mkdir(parents=True, exist_ok=True)
            (self.root / "records").mkdir(exist_ok=True)
            atomic_write_bytes(path, json.dumps(self.manifest, indent=2, sort_keys=True).encode())

    # -- records --------------------------------------------------------------------------------

    def records(self) -> dict[Key, dict[str, Any]]:
        """Complete records whose PNG exists, by key (a torn last line of a killed run is ignored)."""
        out: dict[Key, dict[str, Any]] = {}
        folder = self.root / "records"
        for shard in sorted(folder.glob("rank*.jsonl")) if folder.is_dir() else ():
            for line in shard.read_text().splitlines(keepends=True):
                if not line.endswith("\n"):
                    continue
                record = json.loads(line)
                key = (int(record["layout_id"]), int(record["sample_index"]))
                if (self.root / record["file_name"]).is_file():
                    out[key] = record
        return out

    def done(self) -> set[Key]:
        return set(self.records())

    def write(self, rank: int, items: Iterable[tuple[Image.Image, dict[str, Any]]]) -> None:
        """Write images (atomically), then append their records to this rank's shard."""
        shard = self.root / "records" / f"rank{rank}.jsonl"
        _drop_torn_line(shard)
        lines = []
        for image, record in items:
            key = (record["layout_id"], record["sample_index"])
            record["file_name"] = _image_name(key)
            path = self.root / record["file_name"]
            tmp = path.with_name(f".{path.name}.tmp")
            image.save(tmp, format="PNG")
            os.replace(tmp, path)
            lines.append(json.dumps(record, sort_keys=True) + "\n")
        with open(shard, "a") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())

    # -- the dataset ----------------------------------------------------------------------------

    def merge(self, planned: Iterable[Key], categories: Mapping[int, Category], info: dict[str, Any]) -> Path:
        """Write ``annotations.json`` (COCO) from every record; every planned image must be done."""
        records = self.records()
        planned = sorted(planned)
        missing = [k for k in planned if k not in records]
        if missing:
            raise RuntimeError(
                f"{len(missing)} of {len(planned)} planned images are not in {self.root} "
                f"(e.g. layout {missing[0][0]} sample {missing[0][1]}); rerun the same command to finish"
            )
        images, annotations = [], []
        for image_id, key in enumerate(planned, start=1):
            r = records[key]
            images.append(
                {
                    "id": image_id,
                    "file_name": r["file_name"],
                    "width": r["width"],
                    "height": r["height"],
                    "is_synthetic": True,
                    "source_image_id": r["layout_id"],
                    "sample_index": r["sample_index"],
                    "seed": r["seed"],
                    "strategy": self.manifest["strategy"],
                }
            )
            for obj in r["objects"]:
                x0, y0, x1, y1 = obj["box"]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": obj["category_id"],
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                        "attribute": obj["attribute"],
                        "source_annotation_id": obj["annotation_id"],
                    }
                )
        coco = {
            "info": info,
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": c.id, "name": c.name, "supercategory": c.supercategory, "isthing": int(not c.is_stuff)}
                for c in sorted(categories.values(), key=lambda c: c.id)
            ],
        }
        path = self.root / ANNOTATIONS
        atomic_write_bytes(path, json.dumps(coco).encode())
        return path


def _drop_torn_line(shard: Path) -> None:
    """Cut a partial last line (a run killed mid-append), so the next append starts a new line."""
    if not shard.is_file():
        return
    data = shard.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning(
            "%s: dropping a torn last record (%d bytes) left by an interrupted run", shard, len(data) - keep
        )
        with open(shard, "r+b") as f:
            f.truncate(keep)


def record(layout: Layout, sample_index: int, seed: int, width: int, height: int) -> dict[str, Any]:
    """The record of a generated image: its layout's objects in pixels of the saved image."""
    return {
        "layout_id": layout.image_id,
        "sample_index": sample_index,
        "seed": seed,
        "width": width,
        "height": height,
        "objects": [
            {
                "category_id": o.category_id,
                "box": [round(v, 3) for v in o.pixel_box(width, height)],
                "attribute": o.attribute.value,
                "annotation_id": o.annotation_id,
            }
            for o in layout.objects
        ],
    }
