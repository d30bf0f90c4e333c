"""DDP on two CPU processes through the real CLI: one set of outputs, the shapes made once, resuming.

DDP starts its workers by re-running the command line, so the CLI runs in a subprocess
(``python -m detdiffusion``), on an empty cache folder, both ranks racing to prepare the data.
Slow: the two ranks start one after the other (rank 1 is launched when rank 0 reaches ``fit``), each
importing torch, Lightning and diffusers: about 25 s a run on two cores, of which training is 2 s.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

CONF = Path(__file__).parents[1] / "conf" / "detdiffusion.yaml"

pytestmark = pytest.mark.slow


@dataclass
class Run:
    root: Path
    cache: Path
    result: subprocess.CompletedProcess

    @property
    def log(self) -> str:
        return self.result.stdout + self.result.stderr


def _fit(cwd: Path, root: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DETDIFFUSION_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",  # two ranks on two cores
    }
    command = [
        sys.executable,
        "-m",
        "detdiffusion",
        "fit",
        "--config",
        str(CONF),
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_steps=2",
        "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={root}",
        "--trainer.enable_checkpointing=true",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={root / 'checkpoints'}",
        "--trainer.callbacks.save_last=true",
        *extra,
    ]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit code {result.returncode}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Two steps of DDP on two CPU processes, on an empty cache folder."""
    tmp = tmp_path_factory.mktemp("ddp")
    root, cache = tmp / "out", tmp / "cache"
    return Run(root, cache, _fit(tmp, root, cache))


def test_ddp_writes_one_set_of_outputs(ddp_run: Run) -> None:
    root = ddp_run.root
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in ddp_run.log  # two processes ran
    (version,) = (root / "lightning_logs").iterdir()
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "checkpoints/epoch=1-step=2.ckpt",
        "checkpoints/last.ckpt",
        f"lightning_logs/{version.name}/config.yaml",
        f"lightning_logs/{version.name}/hparams.yaml",
        f"lightning_logs/{version.name}/metrics.csv",
    ]
    with (version / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [0, 1]  # one row a step, not one a rank
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2


def test_ddp_makes_the_shapes_once(ddp_run: Run) -> None:
    # Lightning runs prepare_data on local rank 0 while the others wait; setup on each rank finds it.
    assert ddp_run.log.count("wrote 12 shapes images") == 1
    assert ddp_run.log.count("is complete with the same config; not regenerating") == 2
    (dataset,) = ddp_run.cache.iterdir()  # no .tmp-<pid> folder left behind
    assert (dataset / "shapes.json").is_file()
    assert len(list((dataset / "train").iterdir())) == 8 and len(list((dataset / "val").iterdir())) == 4


def test_ddp_resumes_from_last(ddp_run: Run, tmp_path: Path) -> None:
    result = _fit(tmp_path, ddp_run.root, ddp_run.cache, "--ckpt_path=last", "--trainer.max_steps=4")
    log = result.stdout + result.stderr
    assert f"Restoring states from the checkpoint path at {ddp_run.root / 'checkpoints' / 'last.ckpt'}" in log
    assert "wrote 12 shapes images" not in log
    ckpt = torch.load(ddp_run.root / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["epoch"] == 3
    assert sorted(p.name for p in (ddp_run.root / "lightning_logs").iterdir()) == ["version_0", "version_1"]
