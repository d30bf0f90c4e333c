"""Attribute-extraction throughput: ``label_attributes`` end to end against the detector's forward alone.

Measures, in one run and over the same images:

1. images/s of ``label_attributes`` (``detdiffusion.detectors.attributes``) end to end: reading
   the COCO JSON (``read_coco``, files checked), decoding each image, ``detector.detect`` per
   batch, ``assign_attributes`` per image, the counts, and writing the labelled JSON (into a
   temporary folder), progress bar off;
2. images/s of the raw detector forward alone: ``detector.detect`` over the same images,
   already decoded in memory as ``(3, H, W)`` float tensors in [0, 1], in batches of the
   same size, under ``torch.inference_mode`` as ``label_attributes`` calls it;
3. their ratio label_attributes/detect (the goal is >= 0.9);
4. to explain the gap, the seconds that each piece of the overhead takes on its own over all
   images: ``assign_attributes`` given precomputed detections (with the tensors
   ``label_attributes`` builds for it; at ``--gamma``, and at γ = 0, where every detection
   goes into the IoU matching: a randomly initialised detector scores below 0.5, a trained one
   does not), decoding the PNGs (``load_rgb`` → float tensor), and the rest (JSON reading and
   writing, ``read_coco``, bookkeeping) as the end-to-end time less the forward, assignment
   and decoding, repeat by repeat.

Fairness: the same detector object serves both variants, with the same batch size. Each
variant first runs once untimed (lazy initialisation, page cache, allocator); then the
repeats alternate between them (label_attributes first, then detect first, ...), so drift in
machine load hits both alike. Figures are medians over ``--repeats``; min and max are printed.

Data: a shapes dataset (``--images`` training images of ``--size`` px, no validation split),
generated once into the library's cache (``$DETDIFFUSION_CACHE`` or ``--cache-dir``). Every
annotation is labelled, stuff bands included (background: the detector knows only the thing
classes). Detector: a randomly initialised ``TorchvisionDetector`` (``--architecture``,
``min_size = max_size = --size``, on the CPU), labels mapped to the shapes' thing ids;
``--score-threshold`` 0.05 so that it returns detections.

Run from the repository root::

    python experiments/benchmarks/attributes.py
    python experiments/benchmarks/attributes.py --images 400 --size 128 --json attributes.json
    python experiments/benchmarks/attributes.py --architecture fasterrcnn_resnet50_fpn --images 40
    python experiments/benchmarks/attributes.py --threads 2 --batch-size 16

Progress goes to stderr; stdout holds the results table.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from detdiffusion.benchmarking import machine_info, write_results
from detdiffusion.data.coco import FilterConfig, ImageRecord, read_coco
from detdiffusion.data.shapes import (
    THING_CLASSES,
    ShapesConfig,
    cache_dir,
    default_shapes_dir,
    generate_shapes,
    shapes_paths,
)
from detdiffusion.data.transforms import load_rgb
from detdiffusion.detectors.attributes import label_attributes, record_attributes
from detdiffusion.detectors.base import Detections
from detdiffusion.detectors.torchvision import Architecture, TorchvisionDetector

log = logging.getLogger("attributes")

GOAL_RATIO = 0.9

#: Every valid annotation, as ``label_attributes`` reads the file.
KEEP_ALL = FilterConfig(
    min_object_area=0.0, drop_crowd=False, drop_categories=(), min_objects=0, max_objects=None
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--images", type=int, default=200, help="shapes images (the training split)")
    p.add_argument(
        "--size", type=int, default=64, help="image side in pixels; also the detector's min/max size"
    )
    p.add_argument(
        "--architecture",
        default="fasterrcnn_mobilenet_v3_large_fpn",
        choices=Architecture.__args__,
        help="torchvision detection builder (randomly initialised)",
    )
    p.add_argument(
        "--score-threshold", type=float, default=0.05, help="the detector's own post-processing threshold"
    )
    p.add_argument("--gamma", type=float, default=0.5, help="label_attributes' score threshold γ")
    p.add_argument("--beta", type=float, default=0.5, help="label_attributes' IoU threshold β")
    p.add_argument("--batch-size", type=int, default=8, help="images per detect call, both variants")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant; the median is reported")
    p.add_argument("--threads", type=int, default=1, help="torch threads (torch.set_num_threads)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shapes and of the detector's weights")
    p.add_argument("--cache-dir", type=Path, help="where shapes are generated (default: $DETDIFFUSION_CACHE)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = p.parse_args(argv)
    for name in ("images", "batch_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.size < 16:
        p.error(f"--size must be >= 16, got {args.size}")
    for name in ("score_threshold", "gamma", "beta"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            p.error(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    return args


def decode(record: ImageRecord) -> torch.Tensor:
    """``(3, H, W)`` float in [0, 1], as ``label_attributes`` decodes an image."""
    return torch.from_numpy(load_rgb(record.path, record.id)).permute(2, 0, 1).float().div_(255.0)


def detect_all(detector: TorchvisionDetector, images: list[torch.Tensor], ids: list[int], batch_size: int):
    """``detector.detect`` over in-memory images, ``batch_size`` a call, as ``label_attributes`` batches."""
    out: list[Detections] = []
    for i in range(0, len(images), batch_size):
        with torch.inference_mode():
            out += detector.detect(images[i : i + batch_size], ids[i : i + batch_size])
    return out


def assign_all(
    records: list[ImageRecord],
    detections: list[Detections],
    detectable: frozenset[int],
    is_stuff_class: dict[int, bool],
    gamma: float,
    beta: float,
) -> int:
    """``assign_attributes`` over every image, given the tensors ``label_attributes`` builds; objects done."""
    count = 0
    for record, dets in zip(records, detections, strict=True):
        labels = record_attributes(record, dets, detectable, is_stuff_class, gamma, beta)
        count += len(labels)
    return count


def seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


#: (label, key, unit) of each figure, in print order.
FIGURES = (
    ("label_attributes", "label_attributes", "images/s"),
    ("detector.detect alone", "detect", "images/s"),
    ("  end to end", "label_attributes_ms", "ms, all images"),
    ("  detect", "detect_ms", "ms, all images"),
    ("  assign_attributes alone", "assign_ms", "ms, all images"),
    ("  same, γ=0 (all detections)", "assign_all_ms", "ms, all images"),
    ("  decoding alone", "decode_ms", "ms, all images"),
    ("  rest (JSON, read_coco, ...)", "rest_ms", "ms, all images"),
)


def print_report(setup: str, rates: dict[str, list[float]], command: str) -> float:
    """The results table, then one line per figure with the command; returns the ratio."""
    median = {key: statistics.median(v) for key, v in rates.items()}
    ratio = median["label_attributes"] / median["detect"]
    print(f"\nAttribute extraction: {setup}\n")
    print(f"{'figure':<32}{'median':>11}{'min':>11}{'max':>11}  unit")
    for label, key, unit in FIGURES:
        print(f"{label:<32}{median[key]:>11.3f}{min(rates[key]):>11.3f}{max(rates[key]):>11.3f}  {unit}")
    verdict = "meets" if ratio >= GOAL_RATIO else "below"
    print(
        f"{'ratio label_attributes/detect':<32}{ratio:>11.3f}{'':>22}  ({verdict} the goal >= {GOAL_RATIO})"
    )
    print()
    for label, key, unit in FIGURES:
        print(f"{label.strip()}: {median[key]:.3f} {unit}  [{command}]")
    print(f"ratio label_attributes/detect: {ratio:.3f}  [{command}]")
    return ratio


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    command = shlex.join(["python", os.path.relpath(__file__), *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    if args.cache_dir is not None:
        os.environ["DETDIFFUSION_CACHE"] = str(args.cache_dir)
    load_start = os.getloadavg()[0]

    config = ShapesConfig(num_train=args.images, num_val=0, size=args.size, seed=args.seed)
    log.info("shapes: %d images of %d px under %s", args.images, args.size, cache_dir())
    paths = shapes_paths(generate_shapes(default_shapes_dir(config), config, progress=False))["train"]
    coco = read_coco(paths.annotations, paths.images, filters=KEEP_ALL)
    records = [r for r in coco.images if r.annotations]  # the images label_attributes shows the detector
    ids = [r.id for r in records]
    is_stuff_class = {cid: c.is_stuff for cid, c in coco.categories.items()}

    torch.manual_seed(args.seed)
    detector = TorchvisionDetector(
        args.architecture,
        category_ids=list(range(1, len(THING_CLASSES) + 1)),  # the shapes' thing ids
        score_threshold=args.score_threshold,
        batch_size=args.batch_size,
        device="cpu",
        min_size=args.size,
        max_size=args.size,
    )
    detectable = frozenset(detector.detectable)
    images = [decode(r) for r in records]

    with tempfile.TemporaryDirectory(prefix="attributes-") as tmp:
        out = Path(tmp) / "instances_attributes.json"

        def run_label() -> Any:
            return label_attributes(
                paths.annotations,
                paths.images,
                detector,
                out,
                gamma=args.gamma,
                beta=args.beta,
                batch_size=args.batch_size,
                progress=False,
            )

        def run_detect() -> list[Detections]:
            return detect_all(detector, images, ids, args.batch_size)

        variants = {"label_attributes": run_label, "detect": run_detect}
        for name, fn in variants.items():
            log.info("warm-up, %s: %.2f s", name, seconds(fn))
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.repeats):
            # Alternate which variant goes first, so drift in machine load hits both alike.
            for name in list(variants) if r % 2 == 0 else list(variants)[::-1]:
                times[name].append(seconds(variants[name]))
            log.info(
                "repeat %d/%d: %s",
                r + 1,
                args.repeats,
                ", ".join(f"{n} {v[-1]:.2f} s" for n, v in times.items()),
            )
        report = run_label()
        detections = run_detect()

    log.info("timing assign_attributes and decoding alone")

    def assign_ms(gamma: float) -> list[float]:
        run = lambda: assign_all(records, detections, detectable, is_stuff_class, gamma, args.beta)  # noqa: E731
        return [1e3 * seconds(run) for _ in range(args.repeats)]

    n = len(records)
    ms = {name: [1e3 * t for t in v] for name, v in times.items()}
    rates = {
        "label_attributes": [n / t for t in times["label_attributes"]],
        "detect": [n / t for t in times["detect"]],
        "label_attributes_ms": ms["label_attributes"],
        "detect_ms": ms["detect"],
        "assign_ms": assign_ms(args.gamma),
        "assign_all_ms": assign_ms(0.0),
        "decode_ms": [1e3 * seconds(lambda: [decode(r) for r in records]) for _ in range(args.repeats)],
    }
    # Repeat by repeat: end to end less the forward, assignment and decoding (noise may make it negative).
    rates["rest_ms"] = [
        e - d - a - c
        for e, d, a, c in zip(
            ms["label_attributes"], ms["detect"], rates["assign_ms"], rates["decode_ms"], strict=True
        )
    ]
    found = statistics.mean(len(d["scores"]) for d in detections)
    kept = statistics.mean(int((d["scores"] > args.gamma).sum()) for d in detections)
    objects = report.annotations / max(n, 1)
    load_end = os.getloadavg()[0]
    setup = (
        f"shapes {args.size} px, {n} images ({objects:.1f} objects an image, stuff included), "
        f"{args.architecture} (random init, min/max size {args.size}), {found:.1f} detections an image "
        f"(score > {args.score_threshold:g}; {kept:.1f} > γ={args.gamma:g}), batch {args.batch_size}, "
        f"{args.repeats} repeats; {os.cpu_count()} CPUs, torch threads {args.threads}, load average "
        f"{load_start:.2f} at start, {load_end:.2f} at end"
    )
    ratio = print_report(setup, rates, command)

    results = {
        "command": command,
        "images": n,
        "size": args.size,
        "architecture": args.architecture,
        "score_threshold": args.score_threshold,
        "gamma": args.gamma,
        "beta": args.beta,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "objects_per_image": objects,
        "detections_per_image": found,
        "detections_above_gamma_per_image": kept,
        "attributes": report.totals(),
        "rates": rates,
        "units": {key: unit for _, key, unit in FIGURES},
        "median": {key: statistics.median(v) for key, v in rates.items()},
        "ratio": ratio,
        "goal_ratio": GOAL_RATIO,
        "machine": machine_info(args.threads, load_start, load_end),
    }
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    main()
