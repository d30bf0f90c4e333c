"""``TrainabilityCallback``: after ``detdiffusion predict`` writes a synthetic dataset, measure its worth."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from detdiffusion.evaluation.trainability import run_trainability
from detdiffusion.generation.data import LayoutSetDataModule
from detdiffusion.generation.store import ANNOTATIONS

log = logging.getLogger(__name__)


class TrainabilityCallback(L.Callback):
    """Runs the trainability study (``run_trainability``) on the dataset a predict run has just written.

    It starts at teardown, after the dataset is merged, on rank zero; the other ranks are done.
    The detector runs are fresh processes, so on a GPU they share it with this one's model:
    the generation model stays loaded until they finish.

    Args:
        config: the detector's ``fit`` config (e.g. ``experiments/shapes/trainability.yaml``).
        out: folder of the runs and the report.
        seeds: one real and one real + synthetic run per seed.
        fit_args: extra ``fit`` arguments for every run.
    """

    def __init__(
        self,
        config: str | Path,
        out: str | Path,
        seeds: Sequence[int] = (0, 1, 2),
        fit_args: Sequence[str] = (),
    ) -> None:
        self.config, self.out, self.seeds, self.fit_args = (
            Path(config),
            Path(out),
            list(seeds),
            list(fit_args),
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict" or not isinstance(trainer.datamodule, LayoutSetDataModule):
            raise ValueError(
                "TrainabilityCallback runs after `detdiffusion predict` with a LayoutSetDataModule"
            )
        if not self.config.is_file():
            raise FileNotFoundError(f"TrainabilityCallback config {self.config} does not exist")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict" or not trainer.is_global_zero:
            return
        dataset = trainer.datamodule.output_dir / ANNOTATIONS
        if not dataset.is_file():  # predict stopped early (interrupted): nothing to measure
            log.warning("no %s: trainability not run", dataset)
            return
        run_trainability(self.config, self.out, dataset, seeds=self.seeds, fit_args=self.fit_args)
