import json
import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch) -> None:
    # The notebook example loads the shapes run's checkpoint: a tiny run stands in for it.
    from detdiffusion.cli import main

    monkeypatch.chdir(tmp_path)
    checkpoint = json.dumps(
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}
    )
    main(
        [
            "fit",
            "--config",
            str(README.parent / "tests" / "conf" / "detdiffusion.yaml"),
            "--trainer.default_root_dir=outputs/shapes/detdiffusion",
            "--trainer.logger=true",
            "--trainer.enable_checkpointing=true",
            f"--trainer.callbacks=[{checkpoint}]",
            "--trainer.limit_val_batches=0",
        ]
    )
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)
        # A "# '...'" line shows the prompt the example builds.
        for expected in re.findall(r"^# '(.*)'$", block, flags=re.M):
            assert namespace["builder"].build(namespace["layout"]) == expected


def test_readme_gives_the_two_commands_ci_runs() -> None:
    text = README.read_text()
    assert "pip install -e . && detdiffusion inspect-data" in text
    test_command = "pip install -e '.[dev]' && python -m pytest"
    assert test_command in text
    assert "python -m pytest" in (README.parent / ".ci" / "run").read_text()
