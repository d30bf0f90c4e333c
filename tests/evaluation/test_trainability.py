"""Trainability: real vs real + synthetic detector runs over seeds, launched after generation or by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from detdiffusion.cli import main
from detdiffusion.evaluation.trainability import TrainabilityReport, TrainabilityRun

CONF = Path(__file__).parents[1] / "conf"


def _report(real: list[float], mixed: list[float]) -> TrainabilityReport:
    report = TrainabilityReport({"seeds": list(range(len(real)))})
    for variant, values in (("real", real), ("real+synthetic", mixed)):
        for seed, value in enumerate(values):
            metrics = {"val/map": value, "val/map_50": value + 0.2, "val/map_75": value - 0.1}
            report.runs.append(TrainabilityRun(variant, seed, f"/runs/{variant}/{seed}", metrics))
    return report


def test_summary_is_mean_and_sample_std_with_paired_differences() -> None:
    report = _report([0.40, 0.44, 0.42], [0.45, 0.47, 0.43])
    summary = report.summary()
    assert summary["real"]["val/map"]["mean"] == pytest.approx(0.42)
    assert summary["real"]["val/map"]["std"] == pytest.approx(0.02)  # sample std (n - 1)
    assert summary["real+synthetic"]["val/map_50"]["mean"] == pytest.approx(0.65)
    # Paired by seed: +0.05, +0.03, +0.01.
    assert summary["difference"]["val/map"]["mean"] == pytest.approx(0.03)
    assert summary["difference"]["val/map"]["std"] == pytest.approx(0.02)
    table = report.format().splitlines()
    assert table[0] == "| training data | runs | mAP | AP50 | AP75 |"
    assert table[2] == "| real | 3 | 42.0 ± 2.0 | 62.0 ± 2.0 | 32.0 ± 2.0 |"
    assert table[4].startswith("| difference | 3 | +3.0 ± 2.0 |")
    one = _report([0.5], [0.4]).summary()
    assert one["real"]["val/map"]["std"] == 0.0 and one["difference"]["val/map"]["mean"] == pytest.approx(
        -0.1
    )


@pytest.fixture(scope="module")
def study(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny predict run whose TrainabilityCallback trains the tiny detector on real, real + synthetic."""
    root = tmp_path_factory.mktemp("trainability")
    main(
        [
            "predict",
            "--config",
            str(CONF / "generate.yaml"),
            f"--ckpt_path={checkpoint}",
            f"--data.output_dir={root / 'synthetic'}",
            "--data.limit=2",
            "--trainer.callbacks+=detdiffusion.callbacks.TrainabilityCallback",
            f"--trainer.callbacks.config={CONF / 'detector.yaml'}",
            f"--trainer.callbacks.out={root / 'study'}",
            "--trainer.callbacks.seeds=[3]",
            # Validate the final model, step 2 (real + synthetic epochs are 3 steps long).
            '--trainer.callbacks.fit_args=["--trainer.val_check_interval=2", '
            '"--trainer.check_val_every_n_epoch=null"]',
        ]
    )
    return root


def test_the_callback_runs_the_study_after_generation(study: Path) -> None:
    report = json.loads((study / "study" / "trainability.json").read_text())
    assert [(r["variant"], r["seed"]) for r in report["runs"]] == [("real", 3), ("real+synthetic", 3)]
    assert report["settings"]["synthetic_annotations"] == str(study / "synthetic" / "annotations.json")
    for run in report["runs"]:
        assert all(math.isfinite(run["metrics"][k]) for k in ("val/map", "val/map_50", "val/map_75"))
        log = (Path(run["directory"]) / "fit.log").read_text()
        assert "--seed_everything=3" in log.splitlines()[0]
        assert ("--data.synthetic_annotations" in log.splitlines()[0]) == (run["variant"] != "real")
    # The synthetic run trained on 8 real + 4 synthetic images (2 layouts × 2 samples).
    synthetic_log = (Path(report["runs"][1]["directory"]) / "fit.log").read_text()
    assert "synthetic:" in synthetic_log
    assert (study / "study" / "trainability.md").read_text().startswith("| training data |")
    assert (study / "study" / "trainability.png").stat().st_size > 0


def test_a_rerun_skips_finished_runs_and_other_settings_are_refused(
    study: Path, capsys: pytest.CaptureFixture
) -> None:
    out = study / "study"
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/seed3/metrics.json")}
    args = [
        "trainability",
        f"--config={CONF / 'detector.yaml'}",
        f"--synthetic={study / 'synthetic' / 'annotations.json'}",
        f"--out={out}",
        "--seeds=[3]",
        '--fit_args=["--trainer.val_check_interval=2", "--trainer.check_val_every_n_epoch=null"]',
    ]
    main(args)
    assert "| real + synthetic | 1 |" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed3/metrics.json")} == before  # nothing re-run
    with pytest.raises(SystemExit, match=r"other settings \(seeds differ\)"):
        main([*args, "--seeds=[3, 4]"])


def test_a_failing_run_names_its_log(study: Path, tmp_path: Path) -> None:
    with pytest.raises(
        SystemExit, match=r"(?s)real/seed0 failed \(exit \d+\); .*fit\.log:\n.*no_such_option"
    ):
        main(
            [
                "trainability",
                f"--config={CONF / 'detector.yaml'}",
                f"--synthetic={study / 'synthetic' / 'annotations.json'}",
                f"--out={tmp_path}",
                "--seeds=[0]",
                '--fit_args=["--trainer.no_such_option=1"]',
            ]
        )
