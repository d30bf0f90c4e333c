"""Detector training: batches, the low-data subset, the mAP path, and a tiny fit through the CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from detdiffusion.cli import main
from detdiffusion.data.shapes import ShapesConfig
from detdiffusion.detectors import TorchvisionDetector
from detdiffusion.detectors.training import DetectionDataModule, DetectorModule

CONF = Path(__file__).parents[1] / "conf" / "detector.yaml"
SMALL_SHAPES = ShapesConfig(num_train=12, num_val=4, size=32, seed=0)


def _datamodule(**kwargs) -> DetectionDataModule:
    kwargs.setdefault("shapes", SMALL_SHAPES)
    dm = DetectionDataModule(batch_size=4, num_workers=0, **kwargs)
    dm.setup("fit")
    return dm


def test_batches_hold_things_with_contiguous_labels() -> None:
    dm = _datamodule(size=48, hflip=False)
    assert dm.category_ids == [1, 2, 3, 4, 5]  # the shapes' things; stuff (101…) is not detected
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == len(targets) == 4
    for image, target in zip(images, targets, strict=True):
        assert image.shape == (3, 48, 48) and image.dtype == torch.float32
        assert image.min() >= 0.0 and image.max() <= 1.0
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert len(boxes) == len(labels) > 0
        assert ((labels >= 1) & (labels <= 5)).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 48


def test_resize_and_flip_move_boxes_with_pixels() -> None:
    plain = _datamodule(size=None, hflip=False).train_dataset
    resized = _datamodule(size=64, hflip=False).train_dataset
    flipped = _datamodule(size=None, hflip=True).train_dataset
    image, target = plain[0]
    big_image, big = resized[0]
    assert big_image.shape[-1] == 64
    torch.testing.assert_close(big["boxes"], target["boxes"] * 2)
    for i in range(len(plain)):
        (image, target), (flip_image, flip) = plain[i], flipped[i]
        if not torch.equal(image, flip_image):
            torch.testing.assert_close(flip_image, image.flip(-1))
            x0, y0, x1, y1 = target["boxes"].unbind(1)
            torch.testing.assert_close(flip["boxes"], torch.stack([32 - x1, y0, 32 - x0, y1], 1))
            return
    pytest.fail("no image was flipped")


def test_train_subset_is_exact_and_deterministic() -> None:
    def ids(seed: int) -> list[int]:
        dataset = _datamodule(train_subset=5, seed=seed).train_dataset
        return [r.id for r in dataset.records]

    assert len(ids(0)) == 5 and len(set(ids(0))) == 5
    assert ids(0) == ids(0)
    assert ids(0) != ids(1)
    with pytest.raises(ValueError, match="train_subset is 13 but the training split has 12 images"):
        _datamodule(train_subset=13)


class _Oracle(torch.nn.Module):
    """Returns the given targets as detections (score 1), or with their boxes shuffled."""

    def __init__(self, targets: list[dict[str, torch.Tensor]], shuffle: bool = False) -> None:
        super().__init__()
        self.targets, self.shuffle = targets, shuffle

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for target in self.targets:
            boxes = target["boxes"]
            if self.shuffle:
                boxes = boxes.roll(1, dims=1)  # x0 y0 x1 y1 → y1 x0 y0 x1: not a box of the image
            out.append({"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": target["labels"]})
        return out


@pytest.mark.parametrize(("shuffle", "expected"), [(False, 1.0), (True, None)])
def test_map_of_the_ground_truth_is_one(shuffle: bool, expected: float | None) -> None:
    dm = _datamodule(hflip=False)
    module = DetectorModule(category_ids=dm.category_ids, min_size=32, max_size=32)
    for images, targets in dm.val_dataloader():
        module.model = _Oracle(targets, shuffle)
        module.validation_step((images, targets), 0)
    result = module.val_map.compute()
    if expected is None:
        assert float(result["map"]) < 0.5
    else:
        assert float(result["map"]) == pytest.approx(expected)
        assert float(result["map_50"]) == float(result["map_75"]) == pytest.approx(1.0)


def test_tiny_fit_logs_map_and_its_checkpoint_loads(tmp_path: Path) -> None:
    main(
        [
            "fit",
            "--config",
            str(CONF),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={tmp_path}",
            "--trainer.log_every_n_steps=1",
        ]
    )
    (metrics,) = tmp_path.glob("lightning_logs/version_0/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    maps = [float(r["val/map"]) for r in rows if r.get("val/map")]
    assert maps and all(math.isfinite(m) for m in maps)
    assert any(r.get("train/loss") for r in rows)
    assert any(k.startswith("val/ap/") for k in rows[0])

    (ckpt,) = tmp_path.glob("lightning_logs/version_0/checkpoints/*.ckpt")
    module = DetectorModule.load_from_checkpoint(ckpt)
    assert module.hparams.category_ids == [1, 2, 3, 4, 5]
    assert module.hparams.category_names == ["circle", "square", "triangle", "diamond", "star"]
    detector = TorchvisionDetector(
        "fasterrcnn_small",
        category_ids=[1, 2, 3, 4, 5],
        weights=ckpt,
        min_size=64,
        max_size=64,
        score_threshold=0.0,
        device="cpu",
    )
    for name, value in module.model.state_dict().items():
        torch.testing.assert_close(detector.model.state_dict()[name], value)

    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = module.to_detector(device="cpu", score_threshold=0.0).detect([image], [7])[0]
    theirs = detector.detect([image], [7])[0]
    torch.testing.assert_close(ours["boxes"], theirs["boxes"])
    assert set(ours["labels"].tolist()) <= {1, 2, 3, 4, 5}


def test_a_checkpoint_loads_without_its_initial_weights_file(tmp_path: Path) -> None:
    init = tmp_path / "init.pth"
    start = TorchvisionDetector("fasterrcnn_small", category_ids=[1, 2, 3, 4, 5], device="cpu")
    torch.save(start.model.state_dict(), init)
    main(
        [
            "fit",
            "--config",
            str(CONF),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=1",
            "--trainer.limit_val_batches=0",
            f"--model.weights={init}",
        ]
    )
    init.unlink()  # moved or deleted after training
    (ckpt,) = tmp_path.glob("**/checkpoints/*.ckpt")
    module = DetectorModule.load_from_checkpoint(ckpt)
    assert module.hparams.weights is None
    assert module.model is not None


def _synthetic_stand_in() -> dict:
    """The small shapes' validation split, standing in for a synthetic dataset."""
    from detdiffusion.data.shapes import default_shapes_dir, shapes_paths

    _datamodule()  # makes the shapes
    val = shapes_paths(default_shapes_dir(SMALL_SHAPES))["val"]
    return {"synthetic_annotations": str(val.annotations), "synthetic_images": str(val.images)}


def test_concatenated_synthetic_images_are_flagged() -> None:
    dm = _datamodule(hflip=False, **_synthetic_stand_in())
    dataset = dm.train_dataset
    assert len(dataset) == 12 + 4 and dataset.synthetic_from == 12
    flags = [bool(dataset[i][1]["is_synthetic"]) for i in range(len(dataset))]
    assert flags == [False] * 12 + [True] * 4
    _, targets = next(iter(dm.train_dataloader()))
    assert all("is_synthetic" in t for t in targets)


def test_sampled_mixing_draws_synthetic_slots_with_probability_p() -> None:
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    from detdiffusion.detectors.training import MixSampler

    sampler = MixSampler(num_real=2000, num_synthetic=50, p=0.2, seed=0, epoch_source=lambda: 3)
    drawn = list(sampler)
    share = sum(i >= 2000 for i in drawn) / len(drawn)
    assert len(drawn) == 2000 and abs(share - 0.2) < 0.03  # 4 standard deviations
    assert list(sampler) == drawn  # a function of (seed, epoch): every rank draws the same stream
    assert list(MixSampler(2000, 50, 0.2, 0, lambda: 4)) != drawn
    real = [i for i in drawn if i < 2000]
    assert len(set(real)) == len(real)  # real images without repeats within an epoch
    assert all(i < 2000 for i in MixSampler(100, 5, 0.0, 0))
    # Under DDP Lightning wraps it: the two ranks' shares cover the stream without overlap.
    shards = [list(DistributedSamplerWrapper(sampler, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == sorted(drawn)

    dm = _datamodule(mix="sample", synthetic_prob=0.5, **_synthetic_stand_in())
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, MixSampler) and len(loader.sampler) == 12


def test_synthetic_data_of_other_classes_is_refused(tmp_path: Path) -> None:
    import json

    stand_in = _synthetic_stand_in()
    data = json.loads(Path(stand_in["synthetic_annotations"]).read_text())
    for c in data["categories"]:
        if c["name"] == "star":
            c["name"] = "heart"
    path = tmp_path / "synthetic.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"synthetic\.json: thing categories .* differ from the real"):
        _datamodule(synthetic_annotations=str(path), synthetic_images=stand_in["synthetic_images"])
    with pytest.raises(ValueError, match="synthetic_prob must be in"):
        _datamodule(synthetic_prob=1.5)


def test_fit_on_real_and_synthetic_through_the_cli(tmp_path: Path) -> None:
    stand_in = _synthetic_stand_in()
    main(
        [
            "fit",
            "--config",
            str(CONF),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=0",
            f"--data.synthetic_annotations={stand_in['synthetic_annotations']}",
            f"--data.synthetic_images={stand_in['synthetic_images']}",
            "--data.mix=sample",
            "--data.synthetic_prob=0.5",
            "--model.background_ignore=true",
        ]
    )
    assert list(tmp_path.glob("**/checkpoints/*.ckpt"))
