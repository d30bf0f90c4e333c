"""Loss curves of a ``detdiffusion fit`` run from its TensorBoard logs, as one PNG.

    python experiments/shapes/plot_fit.py outputs/shapes/detdiffusion/lightning_logs/version_0 \
        --out experiments/shapes/figures/fit_curves.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

PANELS = (("train/loss_ldm", "val/loss_ldm"), ("train/loss_pa", "val/loss_pa"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log_dir", type=Path, help="a run's log folder (holds events.out.tfevents.*)")
    parser.add_argument("--out", type=Path, required=True, help="output PNG")
    args = parser.parse_args(argv)
    events = EventAccumulator(str(args.log_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    if not tags & {t for panel in PANELS for t in panel}:
        raise SystemExit(f"error: {args.log_dir} has no train/loss_ldm or train/loss_pa scalars")
    fig, axes = plt.subplots(1, len(PANELS), figsize=(10, 3.5))
    for ax, panel in zip(axes, PANELS, strict=True):
        for tag in panel:
            if tag in tags:
                points = events.Scalars(tag)
                style = "o-" if tag.startswith("val/") else "-"
                ax.plot([p.step for p in points], [p.value for p in points], style, label=tag, lw=1)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(args.out)


if __name__ == "__main__":
    main()
