"""Every shipped YAML parses with the CLI that runs it."""

from pathlib import Path

import pytest

from detdiffusion.cli import main

ROOT = Path(__file__).parents[1]
CONFIGS = sorted([*ROOT.glob("experiments/**/*.yaml"), *ROOT.glob("tests/conf/*.yaml")])


def test_there_are_configs() -> None:
    assert any("experiments" in str(p) for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_parses(path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path" in printed and "trainer:" in printed
