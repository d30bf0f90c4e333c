"""The ``detdiffusion`` command: LightningCLI trainer commands and the data commands."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from detdiffusion.data.coco import FilterConfig, read_coco
from detdiffusion.data.shapes import (
    SHAPES_FILTERS,
    ShapesConfig,
    default_shapes_dir,
    generate_shapes,
    shapes_paths,
)
from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.prompt import PromptBuilder, PromptTemplate
from detdiffusion.layout.types import LongPromptPolicy


def _shapes_parser() -> ArgumentParser:
    p = ArgumentParser(description="Write the built-in shapes dataset (COCO format, PNG images, masks).")
    p.add_argument("--out", type=Path, required=True, help="Output folder.")
    p.add_argument("--train", type=int, default=ShapesConfig.num_train, help="Training images.")
    p.add_argument("--val", type=int, default=ShapesConfig.num_val, help="Validation images.")
    p.add_argument("--size", type=int, default=ShapesConfig.size, help="Image side in pixels.")
    p.add_argument(
        "--seed", type=int, default=ShapesConfig.seed, help="Seed; the same seed writes the same files."
    )
    p.add_argument(
        "--min_objects", type=int, default=ShapesConfig.min_objects, help="Fewest shapes an image."
    )
    p.add_argument("--max_objects", type=int, default=ShapesConfig.max_objects, help="Most shapes an image.")
    return p


def _inspect_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Print what a COCO-format dataset holds and what the prompts cost in tokens; "
        "draw sample layouts. Without --annotations, the built-in shapes dataset (cached)."
    )
    p.add_argument("--annotations", type=Path | None, default=None, help="COCO instances JSON.")
    p.add_argument("--images", type=Path | None, default=None, help="Image folder of the annotations.")
    p.add_argument("--stuff", type=Path | None, default=None, help="COCO-Stuff JSON of the same images.")
    p.add_argument("--out", type=Path | None, default=None, help="Folder for samples.png and summary.json.")
    p.add_argument(
        "--filters",
        type=FilterConfig | None,
        default=None,
        help="Filters (default: LostGAN's; none for shapes).",
    )
    p.add_argument(
        "--tokenizer",
        type=str | None,
        default=None,
        help="Local SD or tokenizer folder (default: SD 1.x CLIP).",
    )
    p.add_argument("--grid", type=LocationGrid, default=LocationGrid(16, 16), help="Location token grid.")
    p.add_argument("--template", type=PromptTemplate, default=PromptTemplate(), help="Prompt template.")
    p.add_argument(
        "--long_prompts", type=LongPromptPolicy, default="long", help="Policy for prompts over 77 tokens."
    )
    p.add_argument("--num_samples", type=int, default=16, help="Images in samples.png.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the sample picks.")
    return p


def _attributes_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Label every annotation easy / hard / background with a detector (DetDiffusion's "
        "perception-aware attributes) and write a copy of the COCO JSON with an 'attribute' per annotation."
    )
    p.add_argument("--annotations", type=Path, required=True, help="COCO JSON to label (left untouched).")
    p.add_argument("--images", type=Path, required=True, help="Image folder of the annotations.")
    p.add_argument(
        "--detector",
        type=Path,
        required=True,
        help="YAML/JSON file with the detector's class_path and init_args (a detdiffusion Detector).",
    )
    p.add_argument("--out", type=Path, required=True, help="Labelled COCO JSON to write.")
    p.add_argument(
        "--stuff", type=Path | None, default=None, help="COCO-Stuff JSON: its categories are background."
    )
    p.add_argument("--gamma", type=float, default=0.5, help="Keep predictions scoring strictly above this.")
    p.add_argument("--beta", type=float, default=0.5, help="Easy: a kept same-class IoU strictly above this.")
    p.add_argument("--batch_size", type=int, default=8, help="Images per detector call.")
    p.add_argument(
        "--plot", type=Path | None, default=None, help="Bar plot PNG (default: <out stem>_attributes.png)."
    )
    return p


def _filter_instances_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Gen2Det's instance filter: drop the synthetic objects a detector trained on real data "
        "does not find (no detection of their class with score >= --min_score and IoU >= --min_iou)."
    )
    p.add_argument("--annotations", type=Path, required=True, help="Synthetic COCO JSON (left untouched).")
    p.add_argument("--images", type=Path | None, default=None, help="Its image folder (default: its folder).")
    p.add_argument(
        "--detector",
        type=Path,
        required=True,
        help="YAML/JSON file with the detector's class_path and init_args.",
    )
    p.add_argument("--out", type=Path, required=True, help="Filtered COCO JSON to write.")
    p.add_argument("--min_score", type=float, default=0.1, help="Detections below this score do not count.")
    p.add_argument("--min_iou", type=float, default=0.3, help="Least IoU of a same-class detection.")
    p.add_argument("--batch_size", type=int | None, default=None, help="Images per detector call.")
    return p


def _filter_images_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Gen2Det's image filter: keep the synthetic images whose aesthetic score (CLIP ViT-L/14 "
        "+ LAION's MLP) is at least a threshold, by default the real images' mean score."
    )
    p.add_argument("--annotations", type=Path, required=True, help="Synthetic COCO JSON (left untouched).")
    p.add_argument("--images", type=Path | None, default=None, help="Its image folder (default: its folder).")
    p.add_argument("--out", type=Path, required=True, help="Filtered COCO JSON to write.")
    p.add_argument(
        "--clip_weights", type=Path, required=True, help="Local open_clip weights of --clip_model."
    )
    p.add_argument("--mlp_weights", type=Path, required=True, help="Local aesthetic MLP weights.")
    p.add_argument("--clip_model", type=str, default="ViT-L-14", help="open_clip model name.")
    p.add_argument("--threshold", type=float | None, default=None, help="Keep images scoring at least this.")
    p.add_argument(
        "--real_annotations",
        type=Path | None,
        default=None,
        help="Real COCO JSON: its mean is the threshold.",
    )
    p.add_argument("--real_images", type=Path | None, default=None, help="Its image folder.")
    p.add_argument("--batch_size", type=int, default=32, help="Images per CLIP call.")
    return p


def _trainability_parser() -> ArgumentParser:
    p = ArgumentParser(
        description="Train a detector on real data and on real + synthetic data over several seeds and "
        "report validation mAP, mean ± std (trainability.json, .md, .png)."
    )
    p.add_argument("--config", type=Path, required=True, help="The detector's fit config (a DetectorModule).")
    p.add_argument(
        "--synthetic", type=Path, required=True, help="Synthetic COCO JSON (detdiffusion predict's)."
    )
    p.add_argument(
        "--synthetic_images", type=Path | None, default=None, help="Its image folder (default: its folder)."
    )
    p.add_argument("--out", type=Path, required=True, help="Folder of the runs and the report.")
    p.add_argument("--seeds", type=list[int], default=[0, 1, 2], help="One run of each variant per seed.")
    p.add_argument(
        "--fit_args",
        type=list[str],
        default=[],
        help='Extra fit arguments, e.g. ["--trainer.max_steps=100"].',
    )
    return p


def _load_detector(path: Path):
    """The ``Detector`` a ``{class_path, init_args}`` file describes, and that spec as JSON."""
    import argparse
    import json

    import yaml
    from jsonargparse import ArgumentParser as Parser

    from detdiffusion.detectors.base import Detector

    if not path.is_file():
        raise FileNotFoundError(f"--detector {path}: file not found")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"--detector {path}: not valid YAML/JSON ({e})") from None
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"--detector {path}: expected a mapping with 'class_path' (and 'init_args')")
    parser = Parser(exit_on_error=False)
    parser.add_argument("--detector", type=Detector, required=True)
    try:
        detector = parser.instantiate(parser.parse_object({"detector": spec})).detector
    except argparse.ArgumentError as e:
        raise ValueError(f"--detector {path}: {e}") from None
    return detector, json.dumps(spec, sort_keys=True, default=str)


def _run_shapes(cfg) -> None:
    config = ShapesConfig(
        num_train=cfg.train,
        num_val=cfg.val,
        size=cfg.size,
        seed=cfg.seed,
        min_objects=cfg.min_objects,
        max_objects=cfg.max_objects,
    )
    out = generate_shapes(cfg.out, config)
    for split, paths in shapes_paths(out).items():
        print(f"{split}: --annotations {paths.annotations} --images {paths.images}")


def _run_inspect(cfg) -> None:
    # Imported here: torch and transformers take seconds to import, and `shapes` needs neither.
    from detdiffusion.data.inspect import sample_grid, summarize, write_inspection
    from detdiffusion.layout.encoding import LayoutTokenizer
    from detdiffusion.layout.tokenizer import load_tokenizer

    annotations, images, stuff, filters = cfg.annotations, cfg.images, cfg.stuff, cfg.filters
    if (annotations is None) != (images is None):
        raise SystemExit("error: --annotations and --images go together")
    if annotations is None:
        shapes = ShapesConfig()
        paths = shapes_paths(generate_shapes(default_shapes_dir(shapes), shapes))["train"]
        annotations, images, filters = paths.annotations, paths.images, filters or SHAPES_FILTERS
    tokenizer = LayoutTokenizer(
        load_tokenizer(cfg.tokenizer), PromptBuilder(cfg.grid, cfg.template), cfg.long_prompts
    )
    coco = read_coco(annotations, images, stuff, filters or FilterConfig())
    print(f"{annotations}: {len(coco):,} images, {coco.report.annotations_out:,} objects kept")
    summary = summarize(coco, tokenizer)
    print(summary.format())
    if cfg.out is not None:
        paths = write_inspection(summary, sample_grid(coco, tokenizer, cfg.num_samples, cfg.seed), cfg.out)
        print(f"wrote {paths['samples']} and {paths['summary']}")


def _run_attributes(cfg) -> None:
    # Imported here: torch and torchvision take seconds to import, and `shapes` needs neither.
    from detdiffusion.detectors.attributes import label_attributes

    detector, spec = _load_detector(cfg.detector)
    report = label_attributes(
        cfg.annotations,
        cfg.images,
        detector,
        cfg.out,
        gamma=cfg.gamma,
        beta=cfg.beta,
        batch_size=cfg.batch_size,
        stuff=cfg.stuff,
        description=spec,
    )
    print(report.format())
    plot = report.plot(cfg.plot or cfg.out.with_name(f"{cfg.out.stem}_attributes.png"))
    print(f"wrote {cfg.out} and {plot}")


def _run_filter_instances(cfg) -> None:
    from detdiffusion.evaluation.filters import filter_instances

    detector, _ = _load_detector(cfg.detector)
    report = filter_instances(
        cfg.annotations, cfg.out, detector, cfg.images, cfg.min_score, cfg.min_iou, cfg.batch_size
    )
    print(
        f"kept {report.judged - report.dropped:,} of {report.judged:,} judged objects in {report.images:,} "
        f"images; dropped per class: {report.dropped_per_class}\nwrote {cfg.out}"
    )


def _run_filter_images(cfg) -> None:
    from detdiffusion.evaluation.aesthetic import AestheticScorer, filter_images

    scorer = AestheticScorer(cfg.clip_weights, cfg.mlp_weights, cfg.clip_model, batch_size=cfg.batch_size)
    report = filter_images(
        cfg.annotations,
        cfg.out,
        scorer,
        cfg.images,
        threshold=cfg.threshold,
        real_annotations=cfg.real_annotations,
        real_images=cfg.real_images,
    )
    print(f"{report.format()}\nwrote {cfg.out}")


def _run_trainability(cfg) -> None:
    from detdiffusion.evaluation.trainability import RunFailed, run_trainability

    try:
        report = run_trainability(
            cfg.config, cfg.out, cfg.synthetic, cfg.synthetic_images, cfg.seeds, cfg.fit_args
        )
    except RunFailed as e:  # the run's own log says why; its tail is in the message
        raise SystemExit(f"error: {e}") from None
    print(f"{report.format()}\nwrote {cfg.out}/trainability.json, .md and .png")


DATA_COMMANDS = {
    "shapes": (_shapes_parser, _run_shapes),
    "inspect-data": (_inspect_parser, _run_inspect),
    "attributes": (_attributes_parser, _run_attributes),
    "filter-instances": (_filter_instances_parser, _run_filter_instances),
    "filter-images": (_filter_images_parser, _run_filter_images),
    "trainability": (_trainability_parser, _run_trainability),
}
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")

USAGE = """usage: detdiffusion COMMAND [options]

Trainer commands (LightningCLI; --help on each, --print_config, --config FILE.yaml):
  fit        train a model            detdiffusion fit --config experiments/shapes/detdiffusion.yaml
  validate   validation loop
  test       test loop
  predict    prediction loop

Data commands:
  shapes        write the built-in shapes dataset (COCO format)
  inspect-data  what a dataset holds, prompt token budgets, sample pictures
  attributes    label objects easy / hard / background with a detector (P.A. attributes)

Evaluation commands:
  filter-instances  drop synthetic objects a real-trained detector does not find (Gen2Det)
  filter-images     keep synthetic images scoring at least the real mean aesthetic score (Gen2Det)
  trainability      detector mAP on real vs real + synthetic data, several seeds, mean ± std
"""


def _logged_config_callback():
    """LightningCLI's ``SaveConfigCallback`` that also gives W&B the whole config (trainer and seed
    included; Lightning hands loggers only the model's and data's hyperparameters)."""
    import yaml
    from lightning.pytorch.cli import SaveConfigCallback
    from lightning.pytorch.loggers import WandbLogger

    class LoggedConfig(SaveConfigCallback):
        def save_config(self, trainer, pl_module, stage: str) -> None:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_hyperparams({"config": config})

    return LoggedConfig


def lightning_cli(args: list[str] | None = None) -> None:
    """LightningCLI over any LightningModule and LightningDataModule, picked by ``class_path``.

    ``args`` None reads ``sys.argv`` (LightningCLI warns when given both ``args`` and a command line).
    """
    # Imported here: Lightning and diffusers take seconds to import; the data commands need neither.
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    # Lightning's logger has its own handler; propagating to the root's too printed every line twice.
    logging.getLogger("lightning").propagate = False
    command = (sys.argv[1:] if args is None else args)[:1]
    LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        # predict writes a dataset whose generation.json records its settings; a config.yaml in the
        # log folder (the working directory, without a logger) would only litter.
        save_config_callback=None if command == ["predict"] else _logged_config_callback(),
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of ``detdiffusion`` and ``python -m detdiffusion``; ``args`` for notebooks and tests."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] in TRAINER_COMMANDS:
        lightning_cli(None if args is None else argv)
        return
    if argv[0] not in DATA_COMMANDS:
        raise SystemExit(f"error: unknown command {argv[0]!r}\n\n{USAGE}")
    make, run = DATA_COMMANDS[argv[0]]
    parser = make()
    parser.prog = f"detdiffusion {argv[0]}"
    cfg = parser.instantiate(parser.parse_args(argv[1:]))
    try:
        run(cfg)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        # A user's data or setting mistake: the message names the file and id; no traceback.
        raise SystemExit(f"error: {e}") from None
