"""W&B sweeps (experiments/sweeps): each is a valid sweep whose parameters are options of the CLI it calls,
and a trial's command line, built as a wandb agent builds it, runs and writes an offline W&B run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from detdiffusion.cli import TRAINER_COMMANDS, main
from tests.model.tiny import CONF
from tests.test_loggers import _key, _wandb_records

ROOT = Path(__file__).parents[1]
SWEEP_DIR = ROOT / "experiments" / "sweeps"
SHIPPED = "experiments/shapes/detdiffusion.yaml"
WANDB_LOGGER = "--trainer.logger=lightning.pytorch.loggers.WandbLogger"
DISTRIBUTIONS = {"uniform", "log_uniform_values", "int_uniform", "q_uniform", "q_log_uniform_values"}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


SWEEPS = sorted(p for p in SWEEP_DIR.glob("*.yaml") if "method" in _load(p))


def _option(line: list[str], key: str) -> str | None:
    """The value of ``--key=value`` in a command line (the last one), or None."""
    values = [a.split("=", 1)[1] for a in line if a.startswith(f"{key}=")]
    return values[-1] if values else None


def _configs(command: list[str]) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "--config"]


def trial(sweep: dict, pick: str) -> dict[str, Any]:
    """One trial's parameters: the ``first`` or ``last`` of each value list (a grid sweep's corner), or
    the bounds of each distribution."""
    params = {}
    for name, spec in sweep["parameters"].items():
        if "values" in spec:
            params[name] = spec["values"][0 if pick == "first" else -1]
        elif "value" in spec:
            params[name] = spec["value"]
        else:
            params[name] = spec["min" if pick == "first" else "max"]
    return params


def agent_command(sweep: dict, params: dict[str, Any]) -> list[str]:
    """The command line a wandb agent runs for a trial with ``params``.

    As ``wandb.wandb_agent.Agent._command_run`` does it on POSIX: ``${args}`` becomes one
    ``--name=value`` per parameter (wandb's own function), ``${env}`` ``/usr/bin/env``,
    ``${interpreter}`` ``python``, ``${program}`` the sweep's ``program``.
    """
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    macros: dict[str, list[str]] = create_sweep_command_args(
        {"args": {k: {"value": v} for k, v in params.items()}}
    )
    macros |= {"env": ["/usr/bin/env"], "interpreter": ["python"], "program": [sweep["program"]]}
    line = []
    for chunk in map(str, create_sweep_command(list(sweep["command"]))):
        if chunk.startswith("${") and chunk.endswith("}"):
            line += macros.get(chunk[2:-1]) or []
        else:
            line.append(chunk)
    return line


def _lookup(config: dict, key: str) -> Any:
    """``key`` (a CLI option's dotted name) in a printed config, resolved as jsonargparse resolves it: a
    subclass's arguments sit under ``init_args``, and options of a list go to its last item."""
    node: Any = config
    for part in key.split("."):
        if isinstance(node, list):
            node = node[-1]
        if part not in node and "init_args" in node:
            node = node["init_args"]
        node = node[part]
    return node


def test_there_are_sweeps() -> None:
    names = {p.stem for p in SWEEPS}
    assert {"shapes_pa_weight", "shapes_grid", "shapes_lr", "shapes_strategy"} <= names


def test_every_other_yaml_is_a_config_of_a_sweep() -> None:
    used = {cfg for p in SWEEPS for cfg in _configs(_load(p)["command"])}
    for path in SWEEP_DIR.glob("*.yaml"):
        assert path in SWEEPS or str(path.relative_to(ROOT)) in used, f"{path}: not a sweep, nor used by one"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_is_valid(path: Path) -> None:
    sweep = _load(path)
    assert {"program", "project", "method", "metric", "parameters", "command"} <= sweep.keys()
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["goal"] in ("minimize", "maximize")
    assert sweep["metric"]["name"].startswith("val/")
    for name, spec in sweep["parameters"].items():
        if "values" in spec:
            assert spec["values"], name
        elif "distribution" in spec:
            assert sweep["method"] != "grid", f"{name}: a grid sweep needs value lists"
            assert spec["distribution"] in DISTRIBUTIONS, name
            assert 0 < spec["min"] < spec["max"], name
        else:
            assert "value" in spec, name
        for value in spec.get("values", []):
            assert value is not None, f"{name}: wandb passes None as the string 'None', which is not null"
    command = [str(c) for c in sweep["command"]]
    assert command[:2] == ["${env}", "${program}"] and sweep["program"] == "detdiffusion"
    assert command[2] in TRAINER_COMMANDS and command[-1] == "${args}"
    for config in _configs(command):
        assert (ROOT / config).is_file(), config
    # Each run logs to W&B, to the sweep's project, in a folder of its own sweep.
    assert WANDB_LOGGER in command
    assert _option(command, "--trainer.logger.project") == sweep["project"]
    save_dir = _option(command, "--trainer.logger.save_dir")
    assert save_dir == f"outputs/sweeps/{path.stem.removeprefix('shapes_')}"


@pytest.mark.parametrize("pick", ["first", "last"])
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_parameters_are_cli_options(path: Path, pick: str, capsys, monkeypatch) -> None:
    # The trial's command line as the agent builds it, parsed by the CLI it calls (in this process,
    # from the repository root as the sweep is run); every parameter lands in the parsed config.
    sweep = _load(path)
    params = trial(sweep, pick)
    line = agent_command(sweep, params)
    assert line[:2] == ["/usr/bin/env", "detdiffusion"]
    assert line[-len(params) :] == [f"--{k}={v}" for k, v in params.items()]
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        main([*line[2:], "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert _lookup(config, "trainer.logger.class_path") == "lightning.pytorch.loggers.WandbLogger"
    for name, value in params.items():
        expected = yaml.safe_load(value) if isinstance(value, str) else value  # as jsonargparse reads it
        if isinstance(expected, float):
            expected = pytest.approx(expected)
        assert _lookup(config, name) == expected, name


def _run_trial(params: dict[str, Any], line: list[str], tmp_path: Path) -> Path:
    """Run ``line`` in a fresh folder as the agent runs a trial, W&B offline; the run's folder."""
    from wandb.sdk.lib.config_util import save_config_file_from_dict

    run_id = "trial0"
    param_path = tmp_path / "wandb" / "sweep-test" / f"config-{run_id}.yaml"
    param_path.parent.mkdir(parents=True)
    save_config_file_from_dict(str(param_path), {k: {"value": v} for k, v in params.items()})
    env = {
        # Not the test process's own W&B variables: an in-process run of an earlier test leaves
        # some (its service's address) that would capture the trial's run.
        **{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")},
        # What the agent sets for its trial.
        "WANDB_SWEEP_ID": "test",
        "WANDB_RUN_ID": run_id,
        "WANDB_SWEEP_PARAM_PATH": str(param_path),
        "WANDB_DIR": str(tmp_path / "wandb"),
        # Offline (the project's tests set WANDB_MODE=disabled), quiet, no console capture.
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        # An activated environment: `detdiffusion` on the PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = subprocess.run(line, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(line)}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    save_dir = cwd / _option(line, "--trainer.logger.save_dir")
    (run_dir,) = (save_dir / "wandb").glob(f"offline-run-*-{run_id}")
    return run_dir


def _items(records: list, kind: str) -> dict[str, Any]:
    """The keys and last values (JSON) of a run's ``config`` or ``history`` records."""
    items = {}
    for record in records:
        if record.WhichOneof("record_type") == kind:
            for item in record.config.update if kind == "config" else record.history.item:
                items[_key(item)] = json.loads(item.value_json)
    return items


def _absolute(arg: str) -> str:
    """A repository file named on the command line, by its absolute path (the trial runs elsewhere)."""
    return str(ROOT / arg) if (ROOT / arg).is_file() else arg


# The trial in brief: one training step and one validation batch. Not --trainer.fast_dev_run, which
# swaps the loggers for a DummyLogger: nothing would reach W&B.
ONE_STEP = [
    "--trainer.max_steps=1",
    "--trainer.limit_train_batches=1",
    "--trainer.limit_val_batches=1",
    "--trainer.val_check_interval=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.log_every_n_steps=1",
]


def test_a_fit_trial_logs_metrics_config_and_sample_grids(tmp_path) -> None:
    sweep = _load(SWEEP_DIR / "shapes_pa_weight.yaml")
    params = trial(sweep, "first")
    assert params == {"model.pa_weight": 0.0, "seed_everything": 0}  # λ = 0 differs from the default
    line = agent_command(sweep, params)
    # The shipped model swapped for the tiny test one, whose config has no sample grid callback: add it.
    line = [str(CONF) if arg == SHIPPED else _absolute(arg) for arg in line]
    line += [
        *ONE_STEP,
        "--trainer.callbacks+=detdiffusion.callbacks.SampleGridCallback",
        "--trainer.callbacks.init_args.num_layouts=2",
        "--trainer.callbacks.init_args.num_inference_steps=2",
    ]
    run_dir = _run_trial(params, line, tmp_path)

    records = _wandb_records(next(run_dir.glob("run-*.wandb")))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.sweep_id == "test"
    sweep_config = {_key(item): json.loads(item.value_json) for item in run.config.update}
    assert sweep_config["model.pa_weight"] == 0.0 and sweep_config["seed_everything"] == 0
    # The model's and the data's settings, logged by Lightning as hyperparameters.
    config = _items(records, "config")
    assert config["pa_weight"] == 0.0 and {"lr", "grid", "head", "batch_size", "shapes"} <= config.keys()
    # And the whole CLI config, trainer and seed included (detdiffusion's SaveConfigCallback).
    assert config["config"]["trainer"]["max_steps"] == 1 and config["config"]["seed_everything"] == 0
    history = _items(records, "history")
    assert math.isfinite(history["train/loss"]) and math.isfinite(history["val/loss_ldm"])
    assert history["val/samples/_type"] == "images/separated"
    assert list(run_dir.glob("files/media/images/val/samples_*.png"))  # the grid with its boxes
    # LightningCLI's config.yaml (the whole config, trainer included) in the logger's folder.
    saved = _load(run_dir.parents[1] / "config.yaml")
    assert saved["model"]["init_args"]["pa_weight"] == 0.0 and saved["seed_everything"] == 0


@pytest.mark.slow
def test_a_strategy_trial_logs_yolo_score_and_sample_grids(tmp_path, checkpoint) -> None:
    import torch

    from detdiffusion.detectors import TorchvisionDetector

    sweep = _load(SWEEP_DIR / "shapes_strategy.yaml")
    params = trial(sweep, "last")
    assert params == {"trainer.callbacks.init_args.strategy": "hard", "trainer.callbacks.init_args.seed": 2}
    # The shapes detector: a random one of the same architecture, saved as a state dict.
    detector = TorchvisionDetector("fasterrcnn_small", category_ids=[1, 2, 3, 4, 5], min_size=64, max_size=64)
    torch.save(detector.model.state_dict(), tmp_path / "detector.pt")
    line = agent_command(sweep, params)
    # The tiny test model and its checkpoint instead of the shapes run's; fewer layouts and steps.
    line = [str(CONF) if arg == SHIPPED else _absolute(arg) for arg in line]
    line = [f"--ckpt_path={checkpoint}" if arg.startswith("--ckpt_path=") else arg for arg in line]
    line += [
        "--trainer.limit_val_batches=1",
        f"--trainer.callbacks.init_args.detector.init_args.weights={tmp_path / 'detector.pt'}",
        "--trainer.callbacks.init_args.num_layouts=4",
        "--trainer.callbacks.init_args.num_inference_steps=2",
        "--trainer.callbacks.init_args.grid_images=4",
    ]
    run_dir = _run_trial(params, line, tmp_path)

    records = _wandb_records(next(run_dir.glob("run-*.wandb")))
    history = _items(records, "history")
    for name in ("val/yolo_map", "val/yolo_map50", "val/yolo_map75", "val/loss_ldm"):
        assert math.isfinite(history[name]), name  # a random detector's mAP may be 0
    assert list(run_dir.glob("files/media/images/val/fidelity_*.png"))
    saved = _load(run_dir.parents[1] / "config.yaml")
    (fidelity,) = saved["trainer"]["callbacks"]
    assert fidelity["init_args"]["strategy"] == "hard" and fidelity["init_args"]["seed"] == 2
