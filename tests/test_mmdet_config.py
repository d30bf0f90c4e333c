"""The mmdet config for real + synthetic training: plain Python, and mmengine parses it when present.

mmdet itself cannot be installed beside this torch, so what is checked is the config's structure
(mmdet 3.x field names) and, where mmengine is installed, its parsing and the documented
``--cfg-options`` overrides.
"""

from __future__ import annotations

import runpy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

CONFIG = Path(__file__).parents[1] / "experiments" / "mmdet" / "faster-rcnn_r50_fpn_1x_coco_real+synthetic.py"

# The overrides the config's header documents for moving both datasets.
OVERRIDES = [
    "train_dataloader.dataset.datasets.0.data_root=/coco/",
    "val_dataloader.dataset.data_root=/coco/",
    "test_dataloader.dataset.data_root=/coco/",
    "val_evaluator.ann_file=/coco/annotations/instances_val2017.json",
    "test_evaluator.ann_file=/coco/annotations/instances_val2017.json",
    "train_dataloader.dataset.datasets.1.data_root=/synthetic/",
]


def check_structure(cfg: Mapping[str, Any]) -> None:
    """What the trainability protocol needs, on a plain dict or an mmengine ``Config``."""
    model = cfg["model"]
    assert model["type"] == "FasterRCNN"
    assert model["data_preprocessor"]["type"] == "DetDataPreprocessor"
    assert model["backbone"]["type"] == "ResNet" and model["backbone"]["depth"] == 50
    assert model["backbone"]["init_cfg"] == {"type": "Pretrained", "checkpoint": "torchvision://resnet50"}
    assert model["neck"]["type"] == "FPN"
    assert model["rpn_head"]["type"] == "RPNHead"
    assert model["roi_head"]["type"] == "StandardRoIHead"
    assert model["roi_head"]["bbox_head"]["type"] == "Shared2FCBBoxHead"
    assert model["roi_head"]["bbox_head"]["num_classes"] == 80
    assert set(model["train_cfg"]) == {"rpn", "rpn_proposal", "rcnn"}
    assert set(model["test_cfg"]) == {"rpn", "rcnn"}

    train = cfg["train_dataloader"]["dataset"]
    assert train["type"] == "ConcatDataset"
    real, synthetic = train["datasets"]
    assert real["type"] == synthetic["type"] == "CocoDataset"
    assert real["data_root"] == cfg["data_root"]
    assert real["ann_file"] == "annotations/instances_train2017.json"
    assert synthetic["data_root"] == cfg["synthetic_root"]
    assert synthetic["ann_file"] == "annotations.json"
    # detdiffusion's file names already start with "images/".
    assert synthetic["data_prefix"] == {"img": ""}

    val = cfg["val_dataloader"]["dataset"]
    assert val["type"] == "CocoDataset" and val["ann_file"] == "annotations/instances_val2017.json"
    for evaluator in (cfg["val_evaluator"], cfg["test_evaluator"]):
        assert evaluator["type"] == "CocoMetric" and evaluator["metric"] == "bbox"
        assert evaluator["ann_file"] == cfg["data_root"] + "annotations/instances_val2017.json"

    assert cfg["train_cfg"]["max_epochs"] == 12
    assert cfg["optim_wrapper"]["optimizer"] == {
        "type": "SGD",
        "lr": 0.02,
        "momentum": 0.9,
        "weight_decay": 0.0001,
    }
    warmup, steps = cfg["param_scheduler"]
    assert warmup["type"] == "LinearLR" and warmup["end"] == 500 and not warmup["by_epoch"]
    assert steps["type"] == "MultiStepLR" and list(steps["milestones"]) == [8, 11]
    assert cfg["auto_scale_lr"] == {"enable": False, "base_batch_size": 16}
    assert cfg["default_scope"] == "mmdet"
    for key in ("default_hooks", "env_cfg", "visualizer", "log_processor", "val_cfg", "test_cfg"):
        assert key in cfg


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a nested config, with its dotted key."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from strings(value, f"{path}.{i}")


def test_config_is_plain_python() -> None:
    check_structure(runpy.run_path(str(CONFIG)))


def test_header_documents_the_overrides() -> None:
    text = CONFIG.read_text()
    for override in OVERRIDES:
        key = override.split("=", 1)[0]
        assert key in text, f"{key} is not in the header's --cfg-options"


def test_mmengine_parses_and_overrides() -> None:
    mmengine_config = pytest.importorskip("mmengine.config")
    cfg = mmengine_config.Config.fromfile(str(CONFIG))
    check_structure(cfg)

    # What tools/train.py does with --cfg-options (DictAction, then merge_from_dict).
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=mmengine_config.DictAction)
    cfg.merge_from_dict(parser.parse_args(["--cfg-options", *OVERRIDES]).cfg_options)

    datasets = cfg.train_dataloader.dataset.datasets
    assert [d.data_root for d in datasets] == ["/coco/", "/synthetic/"]
    assert datasets[1].ann_file == "annotations.json"  # a sibling key is kept, not replaced
    assert cfg.val_evaluator.ann_file == "/coco/annotations/instances_val2017.json"
    # The documented set is complete: no path still points at the default roots.
    left = [
        key
        for key, value in strings(cfg.to_dict())
        if key not in ("data_root", "synthetic_root") and value.startswith(("data/coco/", "data/synthetic/"))
    ]
    assert not left, f"paths the header's overrides do not move: {left}"

    # The runner dumps the config into its work dir; the dump must read back the same.
    again = mmengine_config.Config.fromstring(cfg.pretty_text, ".py")
    assert again.to_dict() == cfg.to_dict()
