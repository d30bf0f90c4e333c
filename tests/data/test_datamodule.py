import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detdiffusion.data.coco import FilterConfig
from detdiffusion.data.datamodule import LayoutDataModule
from detdiffusion.data.dataset import TransformConfig
from detdiffusion.data.shapes import ShapesConfig, shapes_paths
from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.types import ATTRIBUTE_CODES, Attribute

SMALL = ShapesConfig(num_train=24, num_val=8, size=64)


def _datamodule(shapes_dir: Path, **kwargs) -> LayoutDataModule:
    paths = shapes_paths(shapes_dir)
    defaults = dict(
        train_annotations=str(paths["train"].annotations),
        train_images=str(paths["train"].images),
        val_annotations=str(paths["val"].annotations),
        val_images=str(paths["val"].images),
        filters=FilterConfig(min_object_area=0.0, min_objects=1, max_objects=None),
        transform=TransformConfig(size=32),
        batch_size=4,
        num_workers=0,
    )
    dm = LayoutDataModule(**{**defaults, **kwargs})
    dm.setup("fit")
    return dm


def test_default_datamodule_generates_the_shapes_once(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DETDIFFUSION_CACHE", str(tmp_path / "cache"))
    dm = LayoutDataModule(shapes=SMALL, num_workers=0, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    (folder,) = (tmp_path / "cache").iterdir()
    assert folder.name.startswith("shapes-") and (folder / "shapes.json").is_file()
    assert len(dm.train_dataset) == 24 and len(dm.val_dataset) == 8
    assert [c.name for c in dm.categories][:3] == ["circle", "square", "triangle"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (4, 3, 64, 64)


def test_batch_contents_are_consistent(shapes_dir) -> None:
    dm = _datamodule(shapes_dir, empty_prompt_prob=0.0)
    batch = next(iter(dm.train_dataloader()))
    b, n = batch["labels"].shape
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_values"].min() >= -1.0 and batch["pixel_values"].max() <= 1.0
    assert batch["input_ids"].shape == (4, 77 * batch["num_windows"].max())
    assert batch["masks"].shape == (4, n, 32, 32) and batch["masks"].dtype == torch.bool
    grid = dm.layout_tokenizer.builder.grid
    for i in range(b):
        k = int(batch["object_mask"][i].sum())
        assert (batch["labels"][i, k:] == -1).all() and (batch["labels"][i, :k] >= 0).all()
        # The prompt describes exactly the batch's objects, in the same order.
        parsed = dm.layout_tokenizer.builder.parse(batch["prompts"][i])
        assert len(parsed) == k
        names = [dm.categories[j].name for j in batch["labels"][i, :k]]
        assert [o.category for o in parsed.objects] == names
        np.testing.assert_allclose(
            parsed.boxes(), grid.snap_boxes(batch["boxes"][i, :k].numpy()), atol=0.5 / 15 + 1e-6
        )
        assert sorted(set(batch["object_index"][i].tolist()) - {-1}) == list(range(k))
        # Masks lie inside their boxes (one pixel of slack for resampling).
        for j in range(k):
            ys, xs = torch.nonzero(batch["masks"][i, j], as_tuple=True)
            if len(xs):
                x0, y0, x1, y1 = (batch["boxes"][i, j] * 32).tolist()
                assert x0 - 1 <= xs.min() and xs.max() + 1 <= x1 + 1 and y0 - 1 <= ys.min() and ys.max() <= y1
        assert batch["attributes"][i, :k].tolist() == [ATTRIBUTE_CODES[Attribute.NONE]] * k


def test_prompt_dropout_rate_and_seeding(shapes_dir) -> None:
    dm = _datamodule(shapes_dir, empty_prompt_prob=0.1)
    ds = dm.train_dataset
    dropped = [ds[(i, epoch)]["prompt_dropped"] for epoch in range(10) for i in range(len(ds))]
    assert 0.05 < np.mean(dropped) < 0.16
    empty = next(ds[(i, e)] for e in range(10) for i in range(len(ds)) if ds[(i, e)]["prompt_dropped"])
    assert empty["prompt"] == "" and empty["input_ids"].tolist() == dm.layout_tokenizer.empty_window.tolist()
    assert (empty["object_index"] == -1).all() and len(empty["labels"]) > 0  # objects stay for the P.A. loss
    # Same (seed, epoch, index) → same example; another epoch → other order or flip.
    assert ds[(3, 1)]["prompt"] == ds[(3, 1)]["prompt"]
    assert any(ds[(i, 0)]["prompt"] != ds[(i, 1)]["prompt"] for i in range(len(ds)))


def test_loader_is_reproducible_and_independent_of_workers(shapes_dir) -> None:
    def first_batches(workers: int, seed: int = 0) -> list[dict]:
        dm = _datamodule(shapes_dir, num_workers=workers, seed=seed)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(2)
        return [b for _, b in zip(range(2), loader, strict=False)]

    a, b, c = first_batches(0), first_batches(2), first_batches(0, seed=1)
    for x, y in zip(a, b, strict=True):
        assert x["prompts"] == y["prompts"]
        assert torch.equal(x["pixel_values"], y["pixel_values"]) and torch.equal(x["masks"], y["masks"])
    assert a[0]["prompts"] != c[0]["prompts"]


def test_validation_is_deterministic(shapes_dir) -> None:
    dm = _datamodule(shapes_dir)
    first, second = (next(iter(dm.val_dataloader())) for _ in range(2))
    assert first["prompts"] == second["prompts"] and not first["prompt_dropped"].any()
    assert first["image_ids"].tolist() == [25, 26, 27, 28]  # file order
    assert torch.equal(first["pixel_values"], second["pixel_values"])


def _write_coco(root: Path, objects: list[list[float]], segmentation: bool = False) -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (100, 80), (90, 90, 90)).save(images / "a.png")
    anns = []
    for i, (x, y, w, h) in enumerate(objects):
        ann = {"id": i + 1, "image_id": 1, "category_id": 1 + i % 2, "bbox": [x, y, w, h], "iscrowd": 0}
        if segmentation:
            ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        anns.append(ann)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "traffic light"}, {"id": 2, "name": "wall-brick"}],
    }
    (root / "instances.json").write_text(json.dumps(data))
    return root / "instances.json", images


def test_box_only_dataset_gets_box_masks_and_long_prompts_get_windows(tmp_path) -> None:
    boxes = [[(i % 6) * 16, (i // 6) * 15, 14, 12] for i in range(30)]
    ann, images = _write_coco(tmp_path, boxes)
    dm = LayoutDataModule(
        train_annotations=str(ann),
        train_images=str(images),
        grid=LocationGrid(16, 16),
        filters=FilterConfig(min_object_area=0.0, min_objects=1, max_objects=None),
        transform=TransformConfig(size=40, resize="squash", hflip=False),
        num_workers=0,
        batch_size=1,
    )
    dm.setup("fit")
    example = dm.train_dataset[0]
    assert len(example["labels"]) == 30 and example["mask_is_box"].all()
    assert len(example["input_ids"]) // 77 >= 3  # ~9 tokens × 30 objects in several windows
    assert "wall brick" in example["prompt"] and "traffic light" in example["prompt"]
    # Box masks: the pixels of each (squashed) box.
    for box, mask in zip(example["boxes"], example["masks"], strict=True):
        _, xs = torch.nonzero(mask, as_tuple=True)
        assert abs(xs.min() - box[0] * 40) <= 1 and abs(xs.max() + 1 - box[2] * 40) <= 1
    batch = dm.train_dataloader().collate_fn([example, dm.train_dataset[(0, 1)]])
    assert batch["input_ids"].shape[1] == 77 * int(batch["num_windows"].max())


def test_drop_smallest_policy_reports_dropped_objects(tmp_path) -> None:
    boxes = [[(i % 6) * 16, (i // 6) * 15, 4 + i % 10, 12] for i in range(30)]
    ann, images = _write_coco(tmp_path, boxes, segmentation=True)
    dm = LayoutDataModule(
        train_annotations=str(ann),
        train_images=str(images),
        long_prompts="drop_smallest",
        filters=FilterConfig(min_object_area=0.0, min_objects=1, max_objects=None),
        transform=TransformConfig(size=40, resize="squash"),
        num_workers=0,
        batch_size=1,
    )
    dm.setup("fit")
    example = dm.train_dataset[0]
    assert example["objects_dropped"] == 30 - len(example["labels"]) > 0
    assert len(example["input_ids"]) == 77 and not example["mask_is_box"].any()


def test_image_size_mismatch_names_the_file(tmp_path) -> None:
    ann, images = _write_coco(tmp_path, [[10, 10, 30, 30]])
    Image.new("RGB", (50, 50)).save(images / "a.png")
    dm = LayoutDataModule(
        train_annotations=str(ann),
        train_images=str(images),
        filters=FilterConfig(min_object_area=0.0, min_objects=1),
        num_workers=0,
    )
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"a\.png \(image id 1\).*50x50.*100x80"):
        dm.train_dataset[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_annotations": "a.json"}, "train_annotations and --data.train_images"),
        ({"val_annotations": "a.json", "val_images": "x"}, "needs --data.train_annotations"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_config_mistakes_name_the_flag(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        LayoutDataModule(**kwargs)


def test_settings_parse_as_lightning_cli_sees_them() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(LayoutDataModule, "data")
    cfg = parser.parse_args(
        [
            "--data.grid.h_bins=8",
            "--data.grid.w_bins=8",
            "--data.filters.min_objects=1",
            "--data.transform.size=32",
        ]
    )
    dm = parser.instantiate(cfg).data
    assert dm.hparams.grid == LocationGrid(8, 8) and dm.filters.min_objects == 1
    assert dm.hparams.transform == TransformConfig(size=32)
    assert "min_object_area" in parser.dump(cfg)


def test_settings_objects_in_checkpoints_load_safely(tmp_path) -> None:
    # A datamodule made in Python saves these in its hyperparameters, hence in checkpoints.
    from detdiffusion.data.coco import FilterConfig
    from detdiffusion.data.dataset import TransformConfig
    from detdiffusion.data.shapes import ShapesConfig
    from detdiffusion.layout.grid import LocationGrid
    from detdiffusion.layout.prompt import PromptTemplate

    settings = [
        ShapesConfig(num_train=3),
        FilterConfig(),
        TransformConfig(size=32),
        LocationGrid(8, 8),
        PromptTemplate(),
    ]
    torch.save({"datamodule_hyper_parameters": settings}, tmp_path / "c.ckpt")
    assert torch.load(tmp_path / "c.ckpt", weights_only=True)["datamodule_hyper_parameters"] == settings
