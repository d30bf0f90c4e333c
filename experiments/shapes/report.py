"""RESULTS.md, results.json and figures of a shapes benchmark run (called by benchmark.py).

    python experiments/shapes/report.py outputs/shapes_benchmark --results experiments/shapes

re-writes them from a finished work folder without running anything.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MODELS = {"pa": "with P.A. loss", "no_pa": "without P.A. loss"}
STRATEGIES = ("origin", "easy", "hard")


def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (0 for fewer than two values)."""
    if not values:
        return float("nan"), float("nan")
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return statistics.fmean(values), se


def _verdict(diff: float, se: float, claimed_positive: bool) -> str:
    """The rule of every claim: it holds when the difference is in the claimed direction by more than
    two standard errors; against it by more than two, it is contradicted; otherwise not shown."""
    signed = diff if claimed_positive else -diff
    if signed > 2 * se:
        return "holds"
    if signed < -2 * se:
        return "contradicted"
    return "not shown (within 2 standard errors)"


def _paired(scores: dict[str, Any], a: str, b: str, key: str) -> list[float]:
    """Per layout object: ``key`` in set ``b`` minus in set ``a`` (same layouts, same noise seeds)."""

    def index(name: str) -> dict[tuple, float]:
        return {(o["source_image_id"], o["source_annotation_id"]): o[key] for o in scores[name]["per_object"]}

    first, second = index(a), index(b)
    return [second[k] - first[k] for k in sorted(first.keys() & second.keys())]


def _curves(work: Path, out: Path) -> Path:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for model, label in MODELS.items():
        events = EventAccumulator(
            str(work / "diffusion" / model / "lightning_logs" / "version_0"), size_guidance={"scalars": 0}
        )
        events.Reload()
        tags = set(events.Tags()["scalars"])
        for ax, tag in zip(axes, ("train/loss_ldm", "train/loss_pa"), strict=True):
            if tag in tags:
                points = events.Scalars(tag)
                ax.plot([p.step for p in points], [p.value for p in points], label=label, lw=1)
                ax.set_title(tag)
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    fig.tight_layout()
    path = out / "loss_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _samples(work: Path, out: Path, model: str, n: int = 6) -> Path:
    from PIL import Image

    from detdiffusion.data.coco import KEEP_ALL, read_coco
    from detdiffusion.data.dataset import record_layout
    from detdiffusion.viz import draw_layout, image_grid

    rows = []
    real = read_coco(work / "attributes" / "val.json", work / "data" / "val", filters=KEEP_ALL)
    names = {c: cat.name for c, cat in real.categories.items()}
    rows.append(
        [
            draw_layout(Image.open(r.path), record_layout(r, real.categories, names), 160)
            for r in real.images[:n]
        ]
    )
    for strategy in STRATEGIES:
        generated = work / "generated" / f"{model}_{strategy}"
        coco = read_coco(generated / "annotations.json", generated, filters=KEEP_ALL)
        rows.append(
            [
                draw_layout(Image.open(r.path), record_layout(r, coco.categories, names), 160)
                for r in coco.images[:n]
            ]
        )
    grid = image_grid([im for row in rows for im in row], columns=n)
    path = out / f"samples_{model}.png"
    grid.save(path)
    return path


def _yolo_bars(fidelity: list[dict[str, Any]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    for j, model in enumerate(MODELS):
        rows = [r for r in fidelity if r["model"] == model]
        xs = [i + (j - 0.5) * width for i in range(len(rows))]
        ax.bar(xs, [100 * r["yolo_map"] for r in rows], width, label=MODELS[model])
    ax.set_xticks(range(len(STRATEGIES)), STRATEGIES)
    ax.set_ylabel("YOLO score mAP (%)")
    ax.set_title("YOLO score of generated validation layouts")
    ax.legend(frameon=False)
    fig.tight_layout()
    path = out / "yolo_score.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def collect(work: Path, settings: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    """Everything RESULTS.md and the results notebook show, from a finished work folder."""
    scores = json.loads((work / "scores.json").read_text())
    detector = json.loads((work / "detector" / "metrics.json").read_text())["validations"][-1]["metrics"]
    trainability = json.loads((work / "trainability" / "trainability.json").read_text())
    fidelity = []
    for model in MODELS:
        for strategy in STRATEGIES:
            s = scores[f"{model}_{strategy}"]
            fidelity.append(
                {"model": model, "strategy": strategy}
                | {
                    k: s[k]
                    for k in ("fid", "yolo_map", "yolo_map50", "yolo_map75", "miou", "hit50", "confidence")
                }
                | {"objects": s["objects"], "images": s["images"]}
            )
    real = scores["real"]
    claims = {}
    iou = _paired(scores, "no_pa_origin", "pa_origin", "iou")
    diff, se = _mean_se(iou)
    map_pa, map_no = scores["pa_origin"]["yolo_map"], scores["no_pa_origin"]["yolo_map"]
    claims["pa_loss_raises_yolo_score"] = {
        "yolo_map_with": map_pa,
        "yolo_map_without": map_no,
        "iou_difference_mean": diff,
        "iou_difference_se": se,
        "objects": len(iou),
        "verdict": _verdict(diff, se, claimed_positive=True),
    }
    confidence = {}
    for model in MODELS:
        paired = _paired(scores, f"{model}_easy", f"{model}_hard", "confidence")
        mean, se = _mean_se(paired)
        confidence[model] = {
            "easy": scores[f"{model}_easy"]["confidence"],
            "hard": scores[f"{model}_hard"]["confidence"],
            "difference_mean": mean,
            "difference_se": se,
            "objects": len(paired),
            "share_lower": sum(d < 0 for d in paired) / max(len(paired), 1),
            "verdict": _verdict(mean, se, claimed_positive=False),
        }
    claims["hard_lowers_confidence"] = confidence
    d = trainability["summary"]["difference"]["val/map"]
    n = d["n"]
    se = d["std"] / math.sqrt(n) if n and n > 1 else 0.0
    claims["synthetic_helps_low_data"] = {
        "real": trainability["summary"]["real"]["val/map"],
        "real+synthetic": trainability["summary"]["real+synthetic"]["val/map"],
        "difference": d,
        "verdict": _verdict(d["mean"], se, claimed_positive=True),
    }
    return {
        "settings": settings,
        "timings_s": timings,
        "detector": detector,
        "real": {k: real[k] for k in ("yolo_map", "yolo_map50", "yolo_map75", "miou", "hit50", "confidence")},
        "fidelity": fidelity,
        "claims": claims,
        "trainability": trainability,
    }


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def markdown(results: dict[str, Any], figures: dict[str, str]) -> str:
    s, claims = results["settings"], results["claims"]
    minutes = sum(results["timings_s"].values()) / 60
    lines = [
        "# The shapes benchmark: results",
        "",
        "DetDiffusion's three claims, in miniature, on 2 CPU cores. Made by",
        f"`python experiments/shapes/benchmark.py{' --quick' if s['quick'] else ''}` in {minutes:.0f} minutes"
        " (steps and their times in `results.json`).",
        "",
        "**Read every number here as a miniature:** 64 px shapes (5 classes), a 32 px pixel-space",
        "DetDiffusion trained from scratch for "
        f"{s['diffusion_steps']} steps, **with the spatial layout conditioning option** (per-class box maps",
        "as extra UNet input channels): token-only conditioning does not learn object position on a CPU",
        "budget (`../shared/CALIBRATION.md`), and every claim needs objects in their boxes. Prompts still",
        "carry classes, location tokens and P.A. attributes; the P.A. head and loss are DetDiffusion's.",
        "The detector that scores images and labels attributes is the library's `fasterrcnn_small`",
        f"trained {s['detector_steps']} steps on the real images (validation mAP "
        f"{_pct(results['detector']['val/map'])}); FID uses its backbone features (Inception never saw",
        "shapes), so FIDs compare only with each other. One training seed per diffusion model; the",
        "spreads of claims (a) and (b) are over layout objects (same layouts, same noise for both sides),",
        f"of claim (c) over {len(s['seeds'])} detector seeds.",
        "",
        "## Fidelity (paper Table 1 layout)",
        "",
        f"Generated from the first {s['layouts']} validation layouts, one image each, "
        f"{s['sampling_steps']} DPM-Solver steps, guidance {s['guidance']}.",
        "",
        "| model | strategy | FID ↓ | YOLO mAP ↑ | AP50 ↑ | AP75 ↑ | mIoU ↑ | hit@0.5 ↑ |",
        "|---|---|---|---|---|---|---|---|",
        "| real images | – | – | "
        + " | ".join(
            _pct(results["real"][k]) for k in ("yolo_map", "yolo_map50", "yolo_map75", "miou", "hit50")
        )
        + " |",
    ]
    for r in results["fidelity"]:
        fid = "–" if r["fid"] is None else f"{r['fid']:.2f}"
        cells = " | ".join(_pct(r[k]) for k in ("yolo_map", "yolo_map50", "yolo_map75", "miou", "hit50"))
        lines.append(f"| {MODELS[r['model']]} | {r['strategy']} | {fid} | {cells} |")
    a = claims["pa_loss_raises_yolo_score"]
    lines += [
        "",
        "## Ablation: the P.A. loss (paper Table 4 layout)",
        "",
        "| P.A. attributes | P.A. loss | YOLO mAP (origin) | mean IoU of an object's best detection |",
        "|---|---|---|---|",
        f"| ✓ | | {_pct(a['yolo_map_without'])} | {_pct(results['fidelity'][3]['miou'])} |",
        f"| ✓ | ✓ | {_pct(a['yolo_map_with'])} | {_pct(results['fidelity'][0]['miou'])} |",
        "",
        f"**Claim (a), the P.A. loss raises the YOLO score: {a['verdict']}.** Paired over {a['objects']}"
        f" layout objects, the best-detection IoU changes by {a['iou_difference_mean']:+.3f} ± "
        f"{a['iou_difference_se']:.3f} (s.e.) with the loss; YOLO mAP {_pct(a['yolo_map_without'])} → "
        f"{_pct(a['yolo_map_with'])}. One training seed each: a seed-to-seed spread of the models is not"
        " measured.",
        "",
        "## Easy vs hard: the detector's confidence (paper Section 4.4)",
        "",
        "The same layouts and noise, every object set `[easy]` or `[hard]`; confidence = the score of the",
        "best same-class detection at IoU ≥ 0.5 (0 when none), averaged over objects.",
        "",
        "| model | easy | hard | hard − easy (± s.e.) | objects less confident under hard | claim (b) |",
        "|---|---|---|---|---|---|",
    ]
    for model, c in claims["hard_lowers_confidence"].items():
        lines.append(
            f"| {MODELS[model]} | {c['easy']:.3f} | {c['hard']:.3f} | {c['difference_mean']:+.3f} ± "
            f"{c['difference_se']:.3f} | {100 * c['share_lower']:.0f}% | {c['verdict']} |"
        )
    t = results["trainability"]
    c = claims["synthetic_helps_low_data"]
    lines += [
        "",
        "## Trainability (paper Table 3 layout)",
        "",
        f"`fasterrcnn_small` trained {s['trainability_steps']} steps on {s['subset']} real images (a"
        f" different subset per seed), alone and with {s['synthetic_layouts']} images generated from"
        " training layouts by the model with the P.A. loss (`origin`), concatenated; validated on the real"
        " validation images. Mean ± std over seeds "
        f"{', '.join(str(x) for x in s['seeds'])}; the difference is paired by seed.",
        "",
        _trainability_table(t),
        "",
        f"**Claim (c), real + synthetic beats real alone in the low-data regime: {c['verdict']}.**",
        "",
        "## Figures",
        "",
    ]
    for title, path in figures.items():
        lines += [f"**{title}**", "", f"![{title}]({path})", ""]
    return "\n".join(lines)


def _trainability_table(t: dict[str, Any]) -> str:
    from detdiffusion.evaluation.trainability import TrainabilityReport, TrainabilityRun

    report = TrainabilityReport(t["settings"], [TrainabilityRun(**r) for r in t["runs"]])
    return report.format()


def write_report(work: Path, results_dir: Path, settings: dict[str, Any], timings: dict[str, float]) -> Path:
    """Write ``results.json``, the figures and ``RESULTS.md`` under ``results_dir``."""
    figures_dir = results_dir / "results"
    figures_dir.mkdir(parents=True, exist_ok=True)
    results = collect(work, settings, timings)
    (figures_dir / "results.json").write_text(json.dumps(results, indent=1))
    figures = {
        "Loss curves": _curves(work, figures_dir),
        "Samples, with P.A. loss (rows: real, origin, easy, hard; boxes drawn)": _samples(
            work, figures_dir, "pa"
        ),
        "Samples, without P.A. loss": _samples(work, figures_dir, "no_pa"),
        "YOLO score": _yolo_bars(results["fidelity"], figures_dir),
    }
    shutil.copy(work / "trainability" / "trainability.png", figures_dir / "trainability.png")
    figures["Trainability (bars: mean ± std; dots: seeds)"] = figures_dir / "trainability.png"
    relative = {k: str(Path(v).relative_to(results_dir)) for k, v in figures.items()}
    # A hand-written reading of the committed run, kept beside its numbers (delete it when they change).
    discussion = figures_dir / "discussion.md"
    text = markdown(results, relative) + ("\n\n" + discussion.read_text() if discussion.is_file() else "\n")
    path = results_dir / "RESULTS.md"
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="the benchmark's work folder")
    parser.add_argument("--results", type=Path, required=True, help="where RESULTS.md and results/ go")
    args = parser.parse_args()
    settings = json.loads((args.results / "results" / "results.json").read_text())["settings"]
    timings = json.loads((args.work / "timings.json").read_text())
    print(write_report(args.work, args.results, settings, timings))


if __name__ == "__main__":
    main()
