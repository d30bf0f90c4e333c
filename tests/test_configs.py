"""Every shipped YAML parses with the CLI that runs it."""

import runpy
from pathlib import Path

import pytest

from detdiffusion.cli import main

ROOT = Path(__file__).parents[1]
# experiments/sweeps holds W&B sweep files (and a config they compose): tests/test_sweeps.py parses those.
CONFIGS = sorted(
    p
    for p in [*ROOT.glob("experiments/**/*.yaml"), *ROOT.glob("tests/conf/*.yaml")]
    if "sweeps" not in p.relative_to(ROOT).parts
)


def test_there_are_configs() -> None:
    assert any("experiments" in str(p) for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_parses(path: Path, capsys) -> None:
    command = "predict" if path.stem.startswith("generate") else "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path" in printed and "trainer:" in printed


def test_the_shapes_config_trains(tmp_path) -> None:
    # Its own trainer settings (validation interval, callbacks, EMA) on less data: two steps.
    main(
        [
            "fit",
            "--config",
            str(ROOT / "experiments" / "shapes" / "detdiffusion.yaml"),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.log_every_n_steps=1",
            "--data.init_args.shapes.num_train=32",
            "--data.init_args.shapes.num_val=8",
            "--data.init_args.num_workers=0",
        ]
    )
    assert list(tmp_path.glob("lightning_logs/version_0/events.out.tfevents.*"))
    plot = runpy.run_path(str(ROOT / "experiments" / "shapes" / "plot_fit.py"))
    plot["main"]([str(tmp_path / "lightning_logs" / "version_0"), "--out", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").stat().st_size > 0
