"""The shapes benchmark end to end on tiny settings (``run.sh --quick``): every step runs and reports."""

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_the_quick_benchmark_runs_every_step_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = subprocess.run(
        [str(ROOT / "experiments" / "shapes" / "run.sh"), "--quick", f"--out={out}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results" / "results.json").read_text())
    assert results["settings"]["quick"] is True
    assert {(r["model"], r["strategy"]) for r in results["fidelity"]} == {
        (m, s) for m in ("pa", "no_pa") for s in ("origin", "easy", "hard")
    }
    assert all(r["fid"] is not None and r["images"] == 8 for r in results["fidelity"])
    claims = results["claims"]
    assert set(claims) == {"pa_loss_raises_yolo_score", "hard_lowers_confidence", "synthetic_helps_low_data"}
    assert claims["synthetic_helps_low_data"]["difference"]["n"] == 2  # two seeds in quick mode
    report = (out / "RESULTS.md").read_text()
    for heading in ("## Fidelity", "## Ablation", "## Easy vs hard", "## Trainability"):
        assert heading in report
    for figure in ("loss_curves", "samples_pa", "samples_no_pa", "yolo_score", "trainability"):
        assert (out / "results" / f"{figure}.png").stat().st_size > 0
    # A rerun finds every step done and only rewrites the report.
    again = subprocess.run(
        [str(ROOT / "experiments" / "shapes" / "run.sh"), "--quick", f"--out={out}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 0 and again.stderr.count("done before") >= 8
