"""FidelityCallback through the CLI: FID and YOLO score of fixed validation layouts, logged."""

import csv
import json

import pytest

from detdiffusion.callbacks import FidelityCallback
from detdiffusion.cli import main
from tests.model.tiny import CONF


def test_scores_are_logged_and_the_grid_written(tmp_path) -> None:
    callback = {
        "class_path": "detdiffusion.callbacks.FidelityCallback",
        "init_args": {
            "detector": {
                "class_path": "detdiffusion.detectors.TorchvisionDetector",
                "init_args": {
                    "architecture": "fasterrcnn_small",
                    "category_ids": [1, 2, 3, 4, 5],
                    "min_size": 32,
                    "max_size": 32,
                    "device": "cpu",
                },
            },
            "fid": {
                "class_path": "detdiffusion.evaluation.FID",
                "init_args": {
                    "feature_extractor": {"class_path": "tests.evaluation.test_fid.TinyFeatures"},
                    "image_size": 32,
                },
            },
            "num_layouts": 4,
            "num_inference_steps": 2,
            "real_statistics": str(tmp_path / "real.pt"),
            "grid_images": 4,
            "tile": 64,
        },
    }
    main(
        [
            "fit",
            "--config",
            str(CONF),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=4",
            "--trainer.val_check_interval=2",
            "--trainer.limit_val_batches=1",
            "--trainer.log_every_n_steps=1",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={tmp_path}",
            f"--trainer.callbacks=[{json.dumps(callback)}]",
        ]
    )
    rows = list(csv.DictReader((tmp_path / "lightning_logs" / "version_0" / "metrics.csv").open()))
    for name in ("val/fid", "val/yolo_map", "val/yolo_map50", "val/yolo_map75"):
        values = [float(r[name]) for r in rows if r.get(name)]
        assert len(values) == 2, name  # after validations at steps 2 and 4
        assert all(v == v for v in values)  # finite numbers (mAP of a random detector may be 0)
    assert next(float(r["val/fid"]) for r in rows if r.get("val/fid")) > 0
    assert (tmp_path / "real.pt").is_file()  # statistics of the validation images, for next time
    grids = sorted(p.name for p in (tmp_path / "lightning_logs" / "version_0" / "fidelity").glob("*.png"))
    assert grids == ["step=2.png", "step=4.png"]


def test_needs_something_to_score() -> None:
    with pytest.raises(ValueError, match="needs a detector"):
        FidelityCallback()
