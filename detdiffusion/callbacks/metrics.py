"""``MetricsFile``: every validation's metrics in a JSON file, for scripts that run ``fit``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L

from detdiffusion.files import write_json_atomic


class MetricsFile(L.Callback):
    """Writes ``{"validations": [{step, epoch, metrics}, …], "finished": bool, "step": int}``.

    The trainability runs read their final mAP from it; a sweep or a shell script can too. The
    file is rewritten atomically (rank zero) after each validation, so a reader never sees half of
    it; ``finished`` turns true when ``fit`` ends normally, and ``step`` is the last global step.

    Args:
        path: the JSON file.
        prefix: keep the metrics whose names start with this (``val/``); ``""`` keeps all.
    """

    def __init__(self, path: str | Path, prefix: str = "val/") -> None:
        self.path = Path(path).expanduser()
        self.prefix = prefix
        self.validations: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validations = []
        self._write(trainer, finished=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(self.prefix) and v.numel() == 1 and math.isfinite(float(v))
        }
        self.validations.append(
            {"step": trainer.global_step, "epoch": trainer.current_epoch} | {"metrics": metrics}
        )
        self._write(trainer, finished=False)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, finished=True)

    def _write(self, trainer: L.Trainer, finished: bool) -> None:
        if trainer.is_global_zero:
            data = {"validations": self.validations, "finished": finished, "step": trainer.global_step}
            write_json_atomic(data, self.path)
