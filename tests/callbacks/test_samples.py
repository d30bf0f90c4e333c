import json

import pytest
from PIL import Image

from detdiffusion.callbacks import SampleGridCallback
from detdiffusion.cli import main
from tests.model.tiny import CONF


def _fit(tmp_path, *extra: str) -> None:
    callback = {
        "class_path": "detdiffusion.callbacks.SampleGridCallback",
        "init_args": {"num_layouts": 3, "samples_per_layout": 2, "num_inference_steps": 2, "tile": 64},
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
            f"--trainer.callbacks=[{json.dumps(callback)}]",
            *extra,
        ]
    )


def test_grids_of_fixed_layouts_go_to_disk_and_tensorboard(tmp_path) -> None:
    _fit(
        tmp_path,
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.save_dir={tmp_path}",
    )
    grids = sorted(tmp_path.glob("lightning_logs/version_0/samples/*.png"))
    assert [g.name for g in grids] == ["step=2.png", "step=4.png"]  # not after the sanity check
    grid = Image.open(grids[0])
    # 3 layouts a row; the real images, then 2 rows of samples; 64 px tiles, 4 px padding.
    assert grid.size == (3 * 68 + 4, 3 * 68 + 4)
    (events,) = tmp_path.glob("lightning_logs/version_0/events.out.tfevents.*")
    assert b"val/samples" in events.read_bytes()


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="must be >= 1, got 0, 8, 2"):
        SampleGridCallback(every_n_validations=0)
