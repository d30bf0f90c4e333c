"""Data loading throughput: the library's training loader against a plain decode-and-resize loader.

Measures, in one run and over the same images:

1. samples/s of ``LayoutDataModule(...).train_dataloader()`` after ``setup("fit")`` (decode,
   geometry, masks, prompt, tokenization, ``collate_layouts``);
2. samples/s of a plain loader: a ``Dataset`` that only decodes with the library's decoder
   (``load_rgb``), resizes and crops with the same ``plan_geometry(...).image(...)`` path (so
   the same pixels come out), scales to [-1, 1] with ``to_model_range`` like the library, and
   is collated by PyTorch's default collate;
3. their ratio library/plain (the project's goal is >= 0.8);
4. CPU ms per sample of each dataset's ``__getitem__`` + its collate, run in this process
   (``time.process_time``), and the ratio plain/library of those: a cross-check of 3 that load
   from other processes on a shared machine hardly moves (the wall-clock figures do move);
5. prompts/s of ``PromptBuilder.build`` (strings only), of the CLIP tokenizer call alone on
   the built prompts, and of ``LayoutTokenizer.encode`` (build + tokenize + windows), over
   the dataset's layouts, in this process.

Fairness: both loaders read the same images in the same order (the library's ``EpochSampler``
with the same seed), with the same batch size, workers, pin-memory and persistent-worker
settings. The dataset holds exactly ``(--warmup-batches + --batches) * --batch-size`` images,
so one repeat is one whole epoch and no loader leaves work in flight that would slow the
other. Each loader first runs one untimed epoch (worker start-up, page cache, lazy imports);
then the repeats alternate between the loaders (library first, then plain first, ...). In
each timed epoch the first ``--warmup-batches`` batches (pipeline fill) are not timed; the
clock (``time.perf_counter``) runs from there to the epoch's last batch. Figures are the
median over ``--repeats``.

Data: by default a shapes dataset (``--image-size`` px, the library's ``SHAPES_FILTERS``)
generated once into the library's cache (``$DETDIFFUSION_CACHE`` or ``--cache-dir``); with
``--annotations/--images``, the first images of a COCO-format dataset that pass the default
``FilterConfig()`` filters (written as a subset JSON into a temporary folder).

Run from the repository root::

    python experiments/benchmarks/data_throughput.py                        # shapes, 512 px → 256 px
    python experiments/benchmarks/data_throughput.py --mask-size 32         # masks at latent size
    python experiments/benchmarks/data_throughput.py --size 64 --image-size 64
    python experiments/benchmarks/data_throughput.py --annotations instances_train2017.json \\
        --images train2017 --size 512 --json coco.json
    python experiments/benchmarks/data_throughput.py --profile 200          # + cProfile of a worker's work

Progress and the data report go to stderr; stdout holds the results table.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from detdiffusion.benchmarking import machine_info, write_results
from detdiffusion.data.coco import FilterConfig, ImageRecord, read_coco
from detdiffusion.data.datamodule import LayoutDataModule
from detdiffusion.data.dataset import EpochSampler, LayoutDataset, TransformConfig, record_layout
from detdiffusion.data.shapes import SHAPES_FILTERS, ShapesConfig, cache_dir
from detdiffusion.data.transforms import ResizeMode, load_rgb, plan_geometry, to_model_range
from detdiffusion.layout.encoding import LayoutTokenizer
from detdiffusion.layout.types import Layout

log = logging.getLogger("data_throughput")

GOAL_RATIO = 0.8


class PlainImages(Dataset):
    """Decode, resize the shorter side and crop (or squash), scale to [-1, 1]; nothing else.

    Takes the same ``(index, epoch)`` keys as ``LayoutDataset`` so it can share its sampler.
    """

    def __init__(self, records: Sequence[ImageRecord], size: int, resize: ResizeMode) -> None:
        self.records, self.size, self.resize = records, size, resize

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        record = self.records[key[0] if isinstance(key, tuple) else key]
        image = load_rgb(record.path, record.id)
        geometry = plan_geometry(record.width, record.height, self.size, self.resize)
        pixels = to_model_range(geometry.image(torch.from_numpy(image).permute(2, 0, 1)))
        return {"pixel_values": pixels, "image_id": record.id}


def epoch_samples_per_s(loader: DataLoader, warmup_batches: int) -> float:
    """samples/s of one epoch of ``loader``, timed from its ``warmup_batches``-th batch to its last."""
    batches = iter(loader)
    for _ in range(warmup_batches):
        next(batches)
    samples = 0
    start = time.perf_counter()
    for batch in batches:
        samples += len(batch["pixel_values"])
    return samples / (time.perf_counter() - start)


def items_per_s(fn: Callable[[Any], Any], items: Sequence[Any], repeats: int) -> list[float]:
    """Calls/s of ``fn`` over ``items``, per repeat, after one untimed pass."""
    for item in items:
        fn(item)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        rates.append(len(items) / (time.perf_counter() - start))
    return rates


def cpu_ms_per_sample(
    dataset: Dataset, collate: Callable[[list[Any]], Any], batch_size: int, repeats: int
) -> list[float]:
    """CPU ms per sample of ``dataset[key]`` + ``collate`` in this process, per repeat (epoch = repeat).

    ``time.process_time`` counts only this process's CPU time, so unlike the loaders' samples/s
    it barely moves when other processes compete for the cores.
    """
    rates = []
    for epoch in range(repeats):
        keys = [(i, epoch) for i in range(len(dataset))]
        start = time.process_time()
        for b in range(0, len(keys), batch_size):
            collate([dataset[k] for k in keys[b : b + batch_size]])
        rates.append((time.process_time() - start) * 1e3 / len(keys))
    return rates


def coco_subset(
    annotations: Path, images: Path, stuff: Path | None, count: int, out_dir: Path
) -> tuple[Path, Path | None]:
    """Instances (and stuff) JSON of the first ``count`` images that pass ``FilterConfig()``."""
    coco = read_coco(annotations, images, stuff, FilterConfig())
    if len(coco) < count:
        raise SystemExit(
            f"--annotations {annotations}: {len(coco)} images pass the default filters, the run needs "
            f"{count} = (--warmup-batches + --batches) × --batch-size"
        )
    keep = {r.id for r in coco.images[:count]}

    def subset(source: Path, name: str) -> Path:
        data = json.loads(source.read_text())
        data["images"] = [im for im in data["images"] if im["id"] in keep]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
        (out_dir / name).write_text(json.dumps(data))
        return out_dir / name

    return subset(annotations, "instances.json"), None if stuff is None else subset(stuff, "stuff.json")


def profile_worker(
    dataset: LayoutDataset, collate: Callable[[list[Any]], Any], samples: int, batch_size: int
) -> str:
    """cProfile of what one loader worker does (``__getitem__`` and collate), top 25 by cumulative time."""
    profiler = cProfile.Profile()
    keys = [(i % len(dataset), 0) for i in range(samples)]
    profiler.enable()
    for b in range(0, len(keys), batch_size):
        collate([dataset[k] for k in keys[b : b + batch_size]])
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
    return out.getvalue()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--size", type=int, default=256, help="loader output side in pixels")
    p.add_argument(
        "--image-size",
        type=int,
        default=512,
        help="side of the generated shapes (like COCO: larger than --size)",
    )
    p.add_argument(
        "--mask-size",
        type=int,
        default=None,
        help="side of the batch masks (default: --size; SD training: --size/8)",
    )
    p.add_argument("--annotations", type=Path, help="COCO instances JSON (instead of the shapes)")
    p.add_argument("--images", type=Path, help="image folder of --annotations")
    p.add_argument("--stuff-annotations", type=Path, help="optional COCO-Stuff JSON of the same images")
    p.add_argument("--tokenizer", help="local SD or tokenizer folder; default: SD 1.x CLIP built offline")
    p.add_argument("--batch-size", type=int, default=16, help="samples per batch, both loaders")
    p.add_argument("--num-workers", type=int, default=2, help="loader worker processes, both loaders")
    p.add_argument("--batches", type=int, default=50, help="batches timed per repeat")
    p.add_argument("--warmup-batches", type=int, default=4, help="untimed batches at the start of each epoch")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per loader; the median is reported")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of this process (workers always use 1). Per-sample tensors are small: "
        "intra-op threads only add overhead, and stall when another process holds a core",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the shapes, shuffling and augmentation")
    p.add_argument("--cache-dir", type=Path, help="where shapes are generated (default: $DETDIFFUSION_CACHE)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    p.add_argument(
        "--profile", type=int, default=0, metavar="N", help="also profile a worker's work on N samples"
    )
    args = p.parse_args(argv)
    for name in ("batch_size", "batches", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("num_workers", "warmup_batches", "profile"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if (args.annotations is None) != (args.images is None):
        p.error("--annotations and --images go together")
    if args.stuff_annotations is not None and args.annotations is None:
        p.error("--stuff-annotations needs --annotations and --images")
    return args


def make_datamodule(args: argparse.Namespace, count: int, tmp: Path) -> tuple[LayoutDataModule, str]:
    """The data module over exactly ``count`` training images, set up for fit, and a label of the data."""
    common: dict[str, Any] = {
        "tokenizer": args.tokenizer,
        "transform": TransformConfig(size=args.size, mask_size=args.mask_size),
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "seed": args.seed,
    }
    if args.annotations is None:
        shapes = ShapesConfig(num_train=count, num_val=0, size=args.image_size, seed=args.seed)
        log.info("shapes: %d images of %d px under %s", count, args.image_size, cache_dir())
        dm = LayoutDataModule(shapes=shapes, filters=SHAPES_FILTERS, **common)
        data = f"shapes {args.image_size} px"
    else:
        ann, stuff = coco_subset(args.annotations, args.images, args.stuff_annotations, count, tmp)
        dm = LayoutDataModule(
            train_annotations=str(ann),
            train_images=str(args.images),
            train_stuff_annotations=None if stuff is None else str(stuff),
            filters=FilterConfig(),
            **common,
        )
        data = f"COCO {args.annotations.name}"
    dm.setup("fit")
    if dm.train_dataset is None or len(dm.train_dataset) != count:
        raise RuntimeError(f"the training split should hold {count} images after setup('fit')")
    return dm, data


def time_loaders(loaders: dict[str, DataLoader], warmup_batches: int, repeats: int) -> dict[str, list[float]]:
    """samples/s of each loader per repeat: one untimed epoch each, then alternating timed epochs."""
    for name, loader in loaders.items():
        start = time.perf_counter()
        epoch_samples_per_s(loader, 0)
        log.info("warm-up epoch, %s loader: %.1f s", name, time.perf_counter() - start)
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for r in range(repeats):
        # Alternate which loader goes first, so drift in machine load hits both alike.
        for name in list(loaders) if r % 2 == 0 else list(loaders)[::-1]:
            rates[name].append(epoch_samples_per_s(loaders[name], warmup_batches))
        log.info("repeat %d/%d: %s", r + 1, repeats, ", ".join(f"{n} {v[-1]:.1f}" for n, v in rates.items()))
    return rates


def time_prompts(encoder: LayoutTokenizer, layouts: Sequence[Layout], repeats: int) -> dict[str, list[float]]:
    """prompts/s of prompt building, of the tokenizer call alone, and of the whole ``encode``."""
    log.info("timing prompt building and tokenization over %d layouts", len(layouts))
    prompts = [encoder.builder.build(layout) for layout in layouts]

    def tokenize(prompt: str) -> Any:  # the call LayoutTokenizer._tokenize makes
        return encoder.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)

    return {
        "build": items_per_s(encoder.builder.build, layouts, repeats),
        "tokenize": items_per_s(tokenize, prompts, repeats),
        "encode": items_per_s(encoder.encode, layouts, repeats),
    }


#: (label, key, unit) of each figure, in print order.
FIGURES = (
    ("library loader", "library", "samples/s"),
    ("plain loader", "plain", "samples/s"),
    ("library, CPU per sample", "library_cpu", "ms/sample"),
    ("plain, CPU per sample", "plain_cpu", "ms/sample"),
    ("PromptBuilder.build", "build", "prompts/s"),
    ("CLIP tokenizer call", "tokenize", "prompts/s"),
    ("LayoutTokenizer.encode", "encode", "prompts/s"),
)


def print_report(setup: str, rates: dict[str, list[float]], command: str) -> dict[str, float]:
    """The results table, then one line per figure with the command; returns the two ratios."""
    median = {key: statistics.median(v) for key, v in rates.items()}
    ratios = {
        "ratio library/plain": median["library"] / median["plain"],
        "ratio library/plain, CPU time": median["plain_cpu"] / median["library_cpu"],
    }
    print(f"\nData throughput: {setup}\n")
    print(f"{'figure':<30}{'median':>11}{'min':>11}{'max':>11}  unit")
    for label, key, unit in FIGURES:
        print(f"{label:<30}{median[key]:>11.2f}{min(rates[key]):>11.2f}{max(rates[key]):>11.2f}  {unit}")
    for label, ratio in ratios.items():
        verdict = "meets" if ratio >= GOAL_RATIO else "below"
        print(f"{label:<30}{ratio:>11.3f}{'':>22}  ({verdict} the goal >= {GOAL_RATIO})")
    print()
    for label, key, unit in FIGURES:
        print(f"{label}: {median[key]:.2f} {unit}  [{command}]")
    for label, ratio in ratios.items():
        print(f"{label}: {ratio:.3f}  [{command}]")
    return ratios


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    command = shlex.join(["python", os.path.relpath(__file__), *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    if args.cache_dir is not None:
        os.environ["DETDIFFUSION_CACHE"] = str(args.cache_dir)
    count = (args.warmup_batches + args.batches) * args.batch_size
    load_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="data_throughput-") as tmp:
        dm, data = make_datamodule(args, count, Path(tmp))
        dataset = dm.train_dataset
        layouts = [record_layout(r, dataset.coco.categories, dataset.names) for r in dataset.coco.images]
        assert dataset is not None  # make_datamodule checked it
        library = dm.train_dataloader()
        plain = DataLoader(
            PlainImages(dataset.coco.images, args.size, dataset.transform.resize),
            batch_size=args.batch_size,
            sampler=EpochSampler(count, shuffle=True, seed=args.seed),  # the library's order
            num_workers=args.num_workers,
            persistent_workers=library.persistent_workers,
            pin_memory=library.pin_memory,
        )
        rates = time_loaders({"library": library, "plain": plain}, args.warmup_batches, args.repeats)
        log.info("timing __getitem__ + collate in this process (CPU time)")
        rates["library_cpu"] = cpu_ms_per_sample(dataset, library.collate_fn, args.batch_size, args.repeats)
        rates["plain_cpu"] = cpu_ms_per_sample(plain.dataset, default_collate, args.batch_size, args.repeats)
        rates |= time_prompts(dm.layout_tokenizer, layouts, args.repeats)
        profile = (
            profile_worker(dataset, library.collate_fn, args.profile, args.batch_size) if args.profile else ""
        )

    tokenizer = dm.layout_tokenizer
    objects = statistics.mean(len(layout) for layout in layouts)
    tokens = statistics.mean(tokenizer.budget(layout).tokens for layout in layouts)
    load_end = os.getloadavg()[0]
    setup = (
        f"{data} → {args.size} px, {count} images ({objects:.1f} objects, {tokens:.0f} prompt tokens an "
        f"image), batch {args.batch_size}, {args.num_workers} workers, {args.batches} timed batches × "
        f"{args.repeats} repeats; {os.cpu_count()} CPUs, torch threads {args.threads}, load average "
        f"{load_start:.2f} at start, {load_end:.2f} at end"
    )
    ratios = print_report(setup, rates, command)
    if profile:
        print(f"\nProfile of a worker's work (__getitem__ + collate_layouts), {args.profile} samples:\n")
        print(profile)

    results = {
        "command": command,
        "data": data,
        "images": count,
        "objects_per_image": objects,
        "prompt_tokens_per_image": tokens,
        "size": args.size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "batches": args.batches,
        "warmup_batches": args.warmup_batches,
        "repeats": args.repeats,
        "rates": rates,
        "units": {key: unit for _, key, unit in FIGURES},
        "median": {key: statistics.median(v) for key, v in rates.items()},
        "ratio": ratios["ratio library/plain"],
        "ratio_cpu_time": ratios["ratio library/plain, CPU time"],
        "goal_ratio": GOAL_RATIO,
        "machine": machine_info(args.threads, load_start, load_end),
    }
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    main()
