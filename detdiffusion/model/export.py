"""Export to a diffusers folder and back: ``save_pretrained`` / ``from_pretrained``.

The folder is a plain ``StableDiffusionPipeline`` (its extended tokenizer and text encoder
included), so diffusers alone generates from layout prompt strings. DetDiffusion's own
parts sit beside it: the head weights and ``detdiffusion.json`` with the layout settings.
A pixel-space model (no VAE, the CPU miniature) is not a Stable Diffusion pipeline: its
folder has the same parts without ``vae/`` and ``model_index.json``. A spatially conditioned
model's UNet takes box maps as extra input channels (``unet/config.json`` counts them in
``in_channels``); ``detdiffusion.json``'s ``spatial_conditioning`` lists the category id of
each, in channel order, and diffusers' own pipeline cannot drive such a UNet.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from detdiffusion import __version__
from detdiffusion.heads import PerceptionHead
from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.prompt import ATTRIBUTE_TOKENS, PromptTemplate

if TYPE_CHECKING:
    from detdiffusion.model.module import DetDiffusionModule

log = logging.getLogger(__name__)

LAYOUT_FILE = "detdiffusion.json"
HEAD_FILE = "head.safetensors"
FORMAT_VERSION = 1
# Where the weights and vocabulary come from: the folder itself, on the way back.
_SOURCES = ("pretrained_model_name_or_path", "unet", "vae", "text_encoder", "noise_scheduler", "tokenizer")
_STRUCTURED = (
    "grid",
    "template",
    "head",
    "optimizer",
    "long_prompts",
    "num_classes",
    "categories",
    "class_names",
    "spatial_conditioning",
)


def head_spec(head: PerceptionHead) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a head, the form LightningCLI configs use."""
    cls = type(head)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": head.init_args()}


def build_head(spec: dict[str, Any]) -> PerceptionHead:
    """A head from its ``{"class_path", "init_args"}``."""
    cls = _import(spec["class_path"])
    if not (isinstance(cls, type) and issubclass(cls, PerceptionHead)):
        raise ValueError(f"{spec['class_path']!r} is not a PerceptionHead class")
    return cls(**spec.get("init_args", {}))


def plain_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters with objects written as their configs, so a checkpoint loads with
    ``torch.load(weights_only=True)`` (the default) and ``coerce_hparams`` rebuilds them."""
    out = dict(hparams)
    for key, value in hparams.items():
        if isinstance(value, PerceptionHead):
            out[key] = head_spec(value)
        elif isinstance(value, (LocationGrid, PromptTemplate)):
            out[key] = dataclasses.asdict(value)
        elif isinstance(value, type):
            out[key] = {"class_path": f"{value.__module__}.{value.__qualname__}"}
        elif isinstance(value, functools.partial) and isinstance(value.func, type) and not value.args:
            out[key] = {
                "class_path": f"{value.func.__module__}.{value.func.__qualname__}",
                "init_args": dict(value.keywords),
            }
    return out


def _import(class_path: str) -> Any:
    module_name, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def coerce_hparams(
    grid: LocationGrid | dict,
    template: PromptTemplate | dict,
    head: PerceptionHead | dict | None,
    optimizer: Any,
) -> tuple[LocationGrid, PromptTemplate, PerceptionHead | None, Any]:
    """The objects ``plain_hparams`` wrote as configs (a checkpoint's hyperparameters)."""
    if isinstance(grid, dict):
        grid = LocationGrid(**grid)
    if isinstance(template, dict):
        template = PromptTemplate(**template)
    if isinstance(head, dict):
        head = build_head(head)
    if isinstance(optimizer, dict):
        optimizer = functools.partial(_import(optimizer["class_path"]), **optimizer.get("init_args", {}))
    return grid, template, head, optimizer


def save_pretrained(module: DetDiffusionModule, path: str | Path, ema: bool = True) -> Path:
    """Write ``module`` to ``path`` atomically (a previous export there is replaced).

    Args:
        module: the model.
        path: output folder; refused if it exists and holds something other than an export.
        ema: export the EMA UNet where the model keeps one (what diffusers' training scripts do).
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not (path / LAYOUT_FILE).is_file():
        raise FileExistsError(f"{path} exists and is not a DetDiffusion export; not overwriting it")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    use_ema = ema and module.ema_unet is not None
    unet = module.ema_unet if use_ema else module.unet
    tokenizer = module.layout_tokenizer.tokenizer
    if module.vae is not None:
        scheduler = copy.deepcopy(module.noise_scheduler)
        pipeline = StableDiffusionPipeline(
            vae=module.vae,
            text_encoder=module.text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        changed = sorted(k for k, v in module.noise_scheduler.config.items() if scheduler.config.get(k) != v)
        if changed:
            # StableDiffusionPipeline rewrites old SD configs (steps_offset, clip_sample).
            log.warning("StableDiffusionPipeline changed the exported scheduler's %s", ", ".join(changed))
        pipeline.save_pretrained(tmp)
    else:
        for name, part in (
            ("unet", unet),
            ("text_encoder", module.text_encoder),
            ("tokenizer", tokenizer),
            ("scheduler", module.noise_scheduler),
        ):
            part.save_pretrained(tmp / name)
    if module.head is not None:
        weights = {k: v.detach().cpu().contiguous() for k, v in module.head.state_dict().items()}
        save_file(weights, tmp / HEAD_FILE)
    (tmp / LAYOUT_FILE).write_text(json.dumps(export_settings(module, use_ema), indent=2) + "\n")
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    return path


def export_settings(module: DetDiffusionModule, ema: bool) -> dict[str, Any]:
    """What ``detdiffusion.json`` holds: layout vocabulary, head, and the plain hyperparameters."""
    builder = module.layout_tokenizer.builder
    location_ids = module.layout_tokenizer.tokenizer.convert_tokens_to_ids(builder.grid.tokens[:1])
    plain = {}
    for key, value in module.hparams.items():
        if key in _SOURCES or key in _STRUCTURED:
            continue
        try:
            json.dumps(value)
        except TypeError:
            continue
        plain[key] = value
    return {
        "format": "detdiffusion",
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "pixel_space": module.vae is None,
        "ema_unet": ema,
        "grid": dataclasses.asdict(builder.grid),
        "template": dataclasses.asdict(builder.template),
        "prompt_class_names": dict(builder.class_names or {}),
        "attribute_tokens": {a.value: t for a, t in ATTRIBUTE_TOKENS.items()},
        "first_location_token_id": location_ids[0],
        "vocab_size": len(module.layout_tokenizer.tokenizer),
        "long_prompts": module.layout_tokenizer.policy,
        "head": None if module.head is None else head_spec(module.head),
        "num_classes": module.hparams.num_classes,
        "categories": module.hparams.categories,
        # Category id of each box-map channel of the UNet input, after the latents (None: off).
        "spatial_conditioning": None if module.spatial_ids is None else list(module.spatial_ids),
        "hparams": plain,
    }


def read_settings(path: str | Path) -> dict[str, Any]:
    """``detdiffusion.json`` of an export, checked."""
    file = Path(path) / LAYOUT_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {path} is not a DetDiffusion export (save_pretrained)")
    settings = json.loads(file.read_text())
    if settings.get("format") != "detdiffusion" or settings.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{file}: expected format 'detdiffusion' version {FORMAT_VERSION}, got "
            f"{settings.get('format')!r} version {settings.get('format_version')!r}"
        )
    return settings


def from_pretrained(cls: type[DetDiffusionModule], path: str | Path, **overrides: Any) -> DetDiffusionModule:
    """The module ``save_pretrained`` wrote to ``path``; ``overrides`` replace saved arguments."""
    path = Path(path)
    settings = read_settings(path)
    kwargs: dict[str, Any] = dict(settings["hparams"])
    kwargs.update(
        grid=LocationGrid(**settings["grid"]),
        template=PromptTemplate(**settings["template"]),
        long_prompts=settings["long_prompts"],
        head=None if settings["head"] is None else build_head(settings["head"]),
        num_classes=settings["num_classes"],
        class_names=settings["prompt_class_names"] or None,
        categories=settings["categories"],
        spatial_conditioning=settings.get("spatial_conditioning"),  # absent from earlier exports
    )
    kwargs.update(overrides)
    module = cls(pretrained_model_name_or_path=str(path), **kwargs)
    if module.head is not None and "head" not in overrides:
        if not module.head.built:
            raise ValueError(f"{path}: the head was exported unbuilt (num_classes unknown); nothing to load")
        module.head.load_state_dict(load_file(path / HEAD_FILE))
    return module
