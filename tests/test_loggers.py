"""Loggers chosen by config through the real CLI: the default one, and W&B offline."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from detdiffusion.cli import main

CONF = Path(__file__).parent / "conf" / "detdiffusion.yaml"
FIT = ["fit", "--config", str(CONF), "--trainer.log_every_n_steps=1", "--trainer.limit_val_batches=0"]


def test_default_logger_writes_tensorboard_logs(tmp_path) -> None:
    # tensorboard is a dependency, so Lightning's default logger is TensorBoardLogger (it falls
    # back to CSVLogger only when neither tensorboard nor tensorboardX is installed). The config's
    # data grid (default 16×16) differs from the model's 8×8: logging the merged hparams of both
    # works because the data records the vocabulary it adopted from the model.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    main([*FIT, "--trainer.logger=true", f"--trainer.default_root_dir={tmp_path}"])
    (version,) = (tmp_path / "lightning_logs").iterdir()
    assert version.name == "version_0" and (version / "hparams.yaml").is_file()
    events = EventAccumulator(str(version))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert {"train/loss_ldm", "train/loss_pa"} <= set(events.Tags()["scalars"])


def test_wandb_logger_by_config_writes_an_offline_run(tmp_path, monkeypatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_SILENT", "true")
    try:
        main(
            [
                *FIT,
                "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
                "--trainer.logger.offline=true",
                f"--trainer.logger.save_dir={tmp_path / 'runs'}",
                "--trainer.logger.project=detdiffusion-test",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
    finally:
        wandb.finish()  # WandbLogger leaves the run open; finishing flushes it to disk
    (run_dir,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    (run_file,) = run_dir.glob("run-*.wandb")
    records = _wandb_records(run_file)
    history = [r for r in records if r.WhichOneof("record_type") == "history"]
    losses = [
        float(json.loads(item.value_json))
        for r in history
        for item in r.history.item
        if _key(item) == "train/loss"
    ]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    keys = {
        _key(item) for r in records if r.WhichOneof("record_type") == "config" for item in r.config.update
    }
    assert {"pa_weight", "batch_size"} <= keys  # model and data hparams
    assert "config" in keys  # and the whole CLI config (trainer and seed too)


def _key(item) -> str:
    """The key of a W&B history, summary or config item (set as ``key`` or ``nested_key``)."""
    return item.key or "/".join(item.nested_key)


def _wandb_records(path: Path) -> list:
    """The protobuf records of an offline ``run-*.wandb`` file.

    The file is a LevelDB-style log: a 7-byte file header, then 32 KiB blocks of chunks, each a
    7-byte header (CRC32, little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and data.
    """
    from wandb.proto import wandb_internal_pb2

    data, block, pos, payload, records = path.read_bytes(), 32768, 7, b"", []
    assert data.startswith(b":W&B"), f"{path} is not a W&B run file"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            records.append(record)
            payload = b""
    return records
