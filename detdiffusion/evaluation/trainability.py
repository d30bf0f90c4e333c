"""Trainability: does a detector trained on real + synthetic data beat one trained on real data alone?

One ``detdiffusion fit`` config (a ``DetectorModule`` on a ``DetectionDataModule``) is run twice per
seed: on its real data, and on the same real data plus a synthetic COCO dataset (its
``--data.mix``, ``--data.synthetic_prob`` and ``--model.background_ignore`` settings apply to the
second only). The seed sets ``seed_everything`` and ``--data.seed``, so both runs of a seed see the
same real subset (``--data.train_subset``) and the differences pair up. Each run is a fresh
process, logged to ``<out>/<variant>/seed<s>/fit.log``; its validations go to ``metrics.json``
(``MetricsFile``), and the validation of the final model is the run's result. A rerun skips
finished runs.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detdiffusion.files import atomic_write_bytes, file_sha256, write_json_atomic

__all__ = ["RunFailed", "TrainabilityReport", "TrainabilityRun", "run_trainability"]

log = logging.getLogger(__name__)

VARIANTS = ("real", "real+synthetic")
#: Reported metrics (``DetectorModule``'s validation keys) and their column names.
METRICS = {"val/map": "mAP", "val/map_50": "AP50", "val/map_75": "AP75"}
REPORT = "trainability.json"


class RunFailed(RuntimeError):
    """A detector run exited with an error, or without validating."""


@dataclass
class TrainabilityRun:
    """One detector training: its variant, seed, folder and final validation metrics."""

    variant: str
    seed: int
    directory: str
    metrics: dict[str, float]


@dataclass
class TrainabilityReport:
    """All runs of a trainability study, with the settings that made them."""

    settings: dict[str, Any]
    runs: list[TrainabilityRun] = field(default_factory=list)

    def values(self, variant: str, key: str) -> dict[int, float]:
        """``{seed: metric}`` of a variant's runs."""
        return {r.seed: r.metrics[key] for r in self.runs if r.variant == variant}

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{variant or "difference": {metric: {mean, std, n}}}``; std is the sample std (0 for one run,
        None for none).

        ``difference`` is paired: real + synthetic minus real, seed by seed.
        """
        out: dict[str, dict[str, dict[str, float]]] = {}
        for variant in VARIANTS:
            out[variant] = {k: _stats(list(self.values(variant, k).values())) for k in METRICS}
        out["difference"] = {}
        for key in METRICS:
            real, mixed = self.values("real", key), self.values("real+synthetic", key)
            out["difference"][key] = _stats([mixed[s] - real[s] for s in sorted(real.keys() & mixed.keys())])
        return out

    def format(self) -> str:
        """A Markdown table in percent, mean ± std over seeds, as detection papers report it."""
        summary = self.summary()
        header = "| training data | runs | " + " | ".join(METRICS.values()) + " |"
        lines = [header, "|" + "---|" * (len(METRICS) + 2)]
        for name, row in (
            ("real", "real"),
            ("real + synthetic", "real+synthetic"),
            ("difference", "difference"),
        ):
            cells = [_cell(summary[row][k], signed=row == "difference") for k in METRICS]
            lines.append(f"| {name} | {int(summary[row]['val/map']['n'])} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "runs": [r.__dict__ for r in self.runs],
            "summary": self.summary(),
        }

    def plot(self, path: str | Path) -> Path:
        """Bars of each metric's mean with the std as error bars and each seed as a dot."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        width = 0.38
        for j, (variant, color) in enumerate(zip(VARIANTS, ("#8c8c8c", "#2a7ab9"), strict=True)):
            for i, key in enumerate(METRICS):
                values = [100 * v for v in self.values(variant, key).values()]
                stats = _stats(values)
                x = i + (j - 0.5) * width
                ax.bar(
                    x,
                    stats["mean"],
                    width,
                    yerr=stats["std"],
                    color=color,
                    capsize=3,
                    label=variant if i == 0 else None,
                )
                ax.scatter([x] * len(values), values, color="black", s=8, zorder=3)
        ax.set_xticks(range(len(METRICS)), list(METRICS.values()))
        ax.set_ylabel("validation AP (%)")
        ax.set_title(f"trainability, {len(self.settings['seeds'])} seeds (mean ± std)")
        ax.legend(frameon=False)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=120)
        plt.close(fig)
        tmp.replace(path)
        return path


def run_trainability(
    config: str | Path,
    out: str | Path,
    synthetic_annotations: str | Path,
    synthetic_images: str | Path | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    fit_args: Sequence[str] = (),
) -> TrainabilityReport:
    """Train the ``config``'s detector on real and on real + synthetic data, once per seed.

    Args:
        config: a ``detdiffusion fit`` YAML of a ``DetectorModule`` and a ``DetectionDataModule``
            that validates the final model, whose metrics are the result (e.g.
            ``trainer.val_check_interval`` = ``max_steps`` with ``check_val_every_n_epoch: null``).
        out: folder of the runs, ``trainability.json`` (report), ``.md`` (table) and ``.png`` (bars).
        synthetic_annotations: the synthetic COCO JSON (``detdiffusion predict``'s ``annotations.json``,
            possibly filtered).
        synthetic_images: its image folder (None: the JSON's folder).
        seeds: one run of each variant per seed.
        fit_args: extra ``fit`` arguments for every run, after the config (e.g. ``--trainer.max_steps=100``).
    """
    config, out = Path(config).expanduser().resolve(), Path(out).expanduser().resolve()
    synthetic = Path(synthetic_annotations).expanduser().resolve()
    for path, what in ((config, "config"), (synthetic, "synthetic annotations")):
        if not path.is_file():
            raise FileNotFoundError(f"trainability {what} {path} does not exist")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {list(seeds)}")
    images = Path(synthetic_images).expanduser().resolve() if synthetic_images else synthetic.parent
    settings = {
        "config": str(config),
        "config_sha256": file_sha256(config),
        "synthetic_annotations": str(synthetic),
        "synthetic_annotations_sha256": file_sha256(synthetic),
        "synthetic_images": str(images),
        "seeds": [int(s) for s in seeds],
        "fit_args": list(fit_args),
    }
    _check_same_settings(out / REPORT, settings)
    report = TrainabilityReport(settings)
    plan = [(variant, seed) for seed in seeds for variant in VARIANTS]
    for n, (variant, seed) in enumerate(plan, 1):
        directory = out / variant.replace("+", "_") / f"seed{seed}"
        metrics = _finished(directory / "metrics.json")
        if metrics is None:
            log.info("trainability run %d/%d: %s, seed %d (%s)", n, len(plan), variant, seed, directory)
            extra = ["--data.synthetic_annotations", str(synthetic), "--data.synthetic_images", str(images)]
            metrics = _fit(config, directory, seed, [*(extra if variant != "real" else []), *fit_args])
        else:
            log.info("trainability run %d/%d: %s, seed %d: done before", n, len(plan), variant, seed)
        report.runs.append(TrainabilityRun(variant, int(seed), str(directory), metrics))
        log.info("  mAP %.3f, AP50 %.3f", metrics["val/map"], metrics["val/map_50"])
        write_json_atomic(report.as_dict(), out / REPORT)
    atomic_write_bytes(out / "trainability.md", (report.format() + "\n").encode())
    report.plot(out / "trainability.png")
    log.info("trainability (%d seeds):\n%s\nwrote %s", len(seeds), report.format(), out / REPORT)
    return report


def _fit(config: Path, directory: Path, seed: int, args: list[str]) -> dict[str, float]:
    """One ``detdiffusion fit`` in a fresh process; returns its last validation's metrics."""
    if directory.exists():
        shutil.rmtree(directory)  # an unfinished run of ours: start it again from nothing
    directory.mkdir(parents=True)
    command = [
        sys.executable, "-m", "detdiffusion", "fit", "--config", str(config),
        f"--seed_everything={seed}", f"--data.seed={seed}", f"--trainer.default_root_dir={directory}",
        "--trainer.callbacks+=detdiffusion.callbacks.metrics.MetricsFile",
        f"--trainer.callbacks.path={directory / 'metrics.json'}",
        *args,
    ]  # fmt: skip
    log_file = directory / "fit.log"
    with log_file.open("w") as f:
        f.write(" ".join(command) + "\n\n")
        f.flush()
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-15:])
        raise RunFailed(
            f"trainability run in {directory} failed (exit {done.returncode}); {log_file}:\n{tail}"
        )
    metrics = _finished(directory / "metrics.json")
    if metrics is None:
        raise RunFailed(
            f"trainability run in {directory} finished without validating at its last step: the config must "
            "validate the final model (e.g. trainer.val_check_interval = max_steps with "
            "check_val_every_n_epoch: null)"
        )
    return metrics


def _finished(path: Path) -> dict[str, float] | None:
    """The final model's validation metrics, or None (not run, unfinished, or the final model unvalidated)."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if (
        not data.get("finished")
        or not data.get("validations")
        or data["validations"][-1]["step"] != data["step"]
    ):
        return None
    metrics = data["validations"][-1]["metrics"]
    missing = [k for k in METRICS if k not in metrics]
    if missing:
        raise ValueError(f"{path}: the last validation has no {missing}; is the model a DetectorModule?")
    return metrics


def _check_same_settings(path: Path, settings: dict[str, Any]) -> None:
    if not path.is_file():
        return
    before = json.loads(path.read_text())["settings"]
    changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
    if changed:
        raise ValueError(
            f"{path.parent} holds trainability runs of other settings ({', '.join(changed)} differ): "
            "use another --out, or delete it"
        )


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:  # a variant not run yet (the report is written after every run)
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def _cell(stats: dict[str, float | None], signed: bool) -> str:
    if stats["mean"] is None:
        return "–"
    mean, std = 100 * stats["mean"], 100 * stats["std"]
    return f"{mean:+.1f} ± {std:.1f}" if signed else f"{mean:.1f} ± {std:.1f}"
