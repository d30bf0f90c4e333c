"""Training-step cost: ``DetDiffusionModule``'s step against a plain diffusers text-to-image step.

Measures, in one run, on the same components, batch, batch size and precision:

1. seconds per training step of a plain step in the order of diffusers'
   ``examples/text_to_image/train_text_to_image.py``: VAE encode (no grad,
   ``latent_dist.sample() * scaling_factor``; skipped in pixel space), ``randn_like`` noise,
   ``randint`` timesteps, ``noise_scheduler.add_noise``, the text encoder on the prompt's
   77-token windows (reshaped as ``DetDiffusionModule.encode_prompts`` does), the UNet, MSE
   against ε or v (the scheduler's ``prediction_type``), backward, ``AdamW.step``,
   ``zero_grad``;
2. seconds per step of DetDiffusion: ``module._losses(batch)["loss"]`` (the same recipe plus
   the perception head on the UNet up-block features and the P.A. loss), backward,
   ``AdamW.step`` over the groups of ``configure_optimizers`` (UNet, text encoder, head),
   ``zero_grad``;
3. images/s, CPU time per step (``time.process_time``: all this process's threads; a
   cross-check that load from other processes hardly moves), FLOPs per step
   (``torch.utils.flop_counter.FlopCounterMode``: matmuls, convolutions, attention, forward and
   backward), on CUDA the MFU (those FLOPs / median step time / ``--peak-tflops``), AdamW
   state, peak memory, and the ratios detdiffusion/plain (goal: <= 1.05).

Fairness: the plain step runs on a head-less ``DetDiffusionModule`` built with the same seed
(so no feature hooks, identical UNet, VAE and text-encoder weights: checked). Both train the
UNet and text encoder with the module's learning rates. Every step of either variant is
seeded alike, so both see the same noise and timesteps. The batch is one real batch of
``LayoutDataModule`` on the built-in shapes, tokenized with the module's layout tokenizer (as
a datamodule in a Trainer adopts it), reused every step. After ``--warmup`` steps of each,
the variants alternate step by step, the order rotating each round (plain, detdiffusion,
detdiffusion, plain, ...), so drift in machine load hits both alike; figures are medians over
``--steps`` steps of each. On a shared CPU, other processes only ever add wall-clock time: the
ratios of the fastest steps and of CPU time are printed as cross-checks of the median's.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during one step after the timed
ones, above what was allocated before it (activations, gradients, temporaries; the weights and
AdamW state, which has its own row, are already there). On CPU, before the timing, each
variant runs in a fresh child process that builds the same model and batch, resets the
kernel's peak-RSS mark (``/proc/self/clear_refs``), runs ``--memory-steps`` steps from a fresh
optimizer and reports the peak RSS above the RSS before them (activations, gradients, AdamW
state, temporaries, allocator slack). A step in this process would not do: freed memory stays
resident with the allocator, so a later step's peak hides under an earlier one's.

``--breakdown`` adds a third variant, the head-less module's own ``_losses`` (the recipe
without the head), and times the head's pieces in isolation (forward; forward + P.A. loss +
backward; the P.A. loss alone; AdamW over the head's parameters), to say where the extra time
goes.

Configurations (``--config``): ``tiny`` = the components of ``tests/conf/detdiffusion.yaml``
(latent space with a tiny VAE); ``shapes`` = ``experiments/shapes/detdiffusion.yaml``'s model
(pixel space, 32 px); ``sd15`` = Stable Diffusion 1.5 sized, randomly initialised UNet, VAE
and CLIP-L text encoder (for a GPU; 512 px). ``--pretrained`` loads a local diffusers SD folder
instead (other settings as ``sd15``).

Run from the repository root::

    python experiments/benchmarks/train_step.py --config tiny
    python experiments/benchmarks/train_step.py --config shapes --breakdown --json shapes.json
    python experiments/benchmarks/train_step.py --config shapes --head semantic
    python experiments/benchmarks/train_step.py --config sd15 --device cuda --precision bf16
    python experiments/benchmarks/train_step.py --config sd15 --precision bf16 --mask-size 64 --breakdown
    python experiments/benchmarks/train_step.py --pretrained ~/sd-v1-5 --precision bf16 --batch-size 16

Progress goes to stderr; stdout holds the results table.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

from detdiffusion.benchmarking import machine_info, write_results
from detdiffusion.data.datamodule import LayoutDataModule
from detdiffusion.data.dataset import TransformConfig
from detdiffusion.data.shapes import ShapesConfig
from detdiffusion.heads import HeadInputs, InstanceHead, PerceptionHead, SemanticHead
from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.prompt import PromptTemplate
from detdiffusion.losses import perception_loss
from detdiffusion.model.module import DetDiffusionModule

log = logging.getLogger("train_step")

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    "tiny": ROOT / "tests" / "conf" / "detdiffusion.yaml",
    "shapes": ROOT / "experiments" / "shapes" / "detdiffusion.yaml",
}
GOAL_RATIO = 1.05
H100_BF16_DENSE_TFLOPS = 989.0
MIB = 2**20

# Stable Diffusion 1.x's shapes; everything not given is the diffusers default, which is SD 1.x's
# (UNet: 320/640/1280/1280, 2 layers a block, 8 heads; the text encoder is CLIP ViT-L/14's).
SD15_MODEL: dict[str, Any] = {
    "unet": {"sample_size": 64, "cross_attention_dim": 768},
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 512,
    },
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
    },
    "noise_scheduler": {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
    },
}
SD15_HEAD_DIM = 64  # InstanceHead's default
SD15_SIZE, SD15_BATCH = 512, 8


@dataclass
class Setup:
    """What to build: the module's arguments (head aside), the head, and the data."""

    label: str
    model: dict[str, Any]
    head_dim: int
    shapes: ShapesConfig
    size: int
    batch_size: int
    mask_size: int | None = None
    tokenizer: str | None = None


def read_setup(args: argparse.Namespace) -> Setup:
    """The model and data settings of ``--config`` (parsed from its YAML) or ``--pretrained``."""
    if args.pretrained is not None or args.config == "sd15":
        size = args.image_size or SD15_SIZE
        batch = args.batch_size or SD15_BATCH
        if args.pretrained is not None:
            model = {"pretrained_model_name_or_path": str(args.pretrained)}
            label, tokenizer = f"pretrained {args.pretrained}", str(args.pretrained)
        else:
            model, label, tokenizer = SD15_MODEL, "sd15 (random init)", None
        shapes = ShapesConfig(num_train=batch, num_val=0, size=size, seed=args.seed)
        return Setup(label, dict(model), SD15_HEAD_DIM, shapes, size, batch, args.mask_size, tokenizer)
    config = yaml.safe_load(CONFIGS[args.config].read_text())
    model = dict(config["model"]["init_args"])
    head = model.pop("head", None) or {}
    head_dim = head.get("init_args", {}).get("dim", SD15_HEAD_DIM)
    if "grid" in model:
        model["grid"] = LocationGrid(**model["grid"])
    if "template" in model:
        model["template"] = PromptTemplate(**model["template"])
    data = config["data"]["init_args"]
    size = args.image_size or data["transform"]["size"]
    batch = args.batch_size or data["batch_size"]
    # The YAML's shapes settings, with as many training images as one batch takes.
    shapes = ShapesConfig(**data["shapes"])
    shapes = replace(shapes, num_train=batch, num_val=0, size=max(size, shapes.size))
    mask_size = args.mask_size or data["transform"].get("mask_size")
    label = f"{args.config} ({CONFIGS[args.config].relative_to(ROOT)})"
    return Setup(label, model, head_dim, shapes, size, batch, mask_size)


def make_head(kind: str, dim: int) -> PerceptionHead | None:
    if kind == "none":
        return None
    return InstanceHead(dim=dim) if kind == "instance" else SemanticHead(dim=dim)


def build(setup: Setup, head: str, seed: int, device: torch.device) -> tuple[DetDiffusionModule, dict]:
    """The module (seeded, so every call gives the same weights) and one real training batch on ``device``."""
    dm = LayoutDataModule(
        shapes=setup.shapes,
        tokenizer=setup.tokenizer,
        transform=TransformConfig(size=setup.size, mask_size=setup.mask_size),
        batch_size=setup.batch_size,
        num_workers=0,
        seed=seed,
    )
    dm.prepare_data()
    split = dm.read_split("train")
    assert split is not None  # the shapes always have a training split
    torch.manual_seed(seed)
    module = DetDiffusionModule(
        **setup.model, head=make_head(head, setup.head_dim), num_classes=len(split.categories)
    )
    dm.layout_tokenizer = module.layout_tokenizer  # what LayoutDataModule does in a Trainer
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return module.to(device).train(), batch


def plain_loss(module: DetDiffusionModule, batch: dict[str, Any]) -> torch.Tensor:
    """diffusers' train_text_to_image.py loss, on the module's UNet, VAE, text encoder and scheduler."""
    pixels = batch["pixel_values"]
    if module.vae is None:
        latents = pixels
    else:
        with torch.no_grad():
            latents = module.vae.encode(pixels.to(module.vae.dtype)).latent_dist.sample()
            latents = latents * module.vae.config.scaling_factor
    noise = torch.randn_like(latents)
    b = latents.shape[0]
    scheduler = module.noise_scheduler
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    ids = batch["input_ids"].reshape(-1, module.layout_tokenizer.window)  # (B·W, 77)
    text = module.text_encoder(ids, return_dict=False)[0]
    text = text.reshape(b, -1, text.shape[-1])  # (B, W·77, D)
    pred = module.unet(noisy, timesteps, text, return_dict=False)[0]
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    elif scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {scheduler.config.prediction_type!r}")
    return F.mse_loss(pred.float(), target.float(), reduction="mean")


def detdiffusion_loss(module: DetDiffusionModule, batch: dict[str, Any]) -> torch.Tensor:
    return module._losses(batch)["loss"]


@dataclass
class Variant:
    """One training step: a loss of a module's batch, and the optimizer of its parameters."""

    loss: Callable[[DetDiffusionModule, dict[str, Any]], torch.Tensor]
    module: DetDiffusionModule
    optimizer: torch.optim.Optimizer


class Stepper:
    """Runs forward (under autocast), backward and the optimizer step, as Lightning's loop would."""

    def __init__(self, device: torch.device, precision: str) -> None:
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def loss(self, variant: Variant, batch: dict[str, Any]) -> torch.Tensor:
        with self.autocast():
            return variant.loss(variant.module, batch)

    def step(self, variant: Variant, batch: dict[str, Any]) -> torch.Tensor:
        loss = self.loss(variant, batch)
        self.scaler.scale(loss).backward()
        self.scaler.step(variant.optimizer)
        self.scaler.update()
        variant.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def time_variants(
    variants: dict[str, Variant], batch: dict, stepper: Stepper, warmup: int, steps: int, seed: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds and the loss of each step of each variant, alternating, after ``warmup``."""
    names = list(variants)
    for i in range(warmup):
        for name in names:
            torch.manual_seed(seed + i)
            stepper.step(variants[name], batch)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    losses: dict[str, list[float]] = {n: [] for n in names}
    for i in range(steps):
        # Rotate the order each round (for two variants: A B, B A, A B, ...), so every variant follows
        # itself (warm caches) and the others (cold) equally often, and drift hits all alike.
        k = i % len(names)
        for name in names[k:] + names[:k]:
            torch.manual_seed(seed + warmup + i)  # the same noise and timesteps for every variant
            stepper.sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            loss = stepper.step(variants[name], batch)
            stepper.sync()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
            losses[name].append(loss.item())
        if (i + 1) % max(1, steps // 5) == 0:
            log.info(
                "step %d/%d: %s", i + 1, steps, ", ".join(f"{n} {wall[n][-1] * 1e3:.1f} ms" for n in names)
            )
    return wall, cpu, losses


def count_flops(variant: Variant, batch: dict, stepper: Stepper) -> int:
    """Matmul, convolution and attention FLOPs of one forward + backward (the optimizer step aside)."""
    with FlopCounterMode(display=False) as counter:
        stepper.loss(variant, batch).backward()
    variant.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def adamw_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.nbytes for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor))


def _proc_status_kib(field_name: str) -> int:
    match = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field_name}")
    return int(match.group(1))


def peak_rss_of_steps(variant: Variant, batch: dict, stepper: Stepper, steps: int, seed: int) -> float:
    """Peak RSS (bytes) during ``steps`` steps from a fresh optimizer, above the RSS before them."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    base = _proc_status_kib("VmRSS")
    for i in range(steps):
        torch.manual_seed(seed + i)
        stepper.step(variant, batch)
    return (_proc_status_kib("VmHWM") - base) * 1024.0


def peak_cuda_of_step(variant: Variant, batch: dict, stepper: Stepper, seed: int) -> float:
    """Peak allocated CUDA bytes during one (warm) step above what was allocated before it."""
    torch.cuda.synchronize(stepper.device)
    torch.cuda.reset_peak_memory_stats(stepper.device)
    base = torch.cuda.memory_allocated(stepper.device)
    torch.manual_seed(seed)
    stepper.step(variant, batch)
    torch.cuda.synchronize(stepper.device)
    return float(torch.cuda.max_memory_allocated(stepper.device) - base)


def make_variant(
    name: str, setup: Setup, args: argparse.Namespace, device: torch.device
) -> tuple[Variant, dict]:
    """``plain``: a head-less module and the plain loss; ``detdiffusion``: the module with its head."""
    head = "none" if name == "plain" else args.head
    module, batch = build(setup, head, args.seed, device)
    loss = plain_loss if name == "plain" else detdiffusion_loss
    return Variant(loss, module, torch.optim.AdamW(module.param_groups())), batch


def memory_child(args: argparse.Namespace, setup: Setup, device: torch.device) -> dict[str, Any]:
    """What a ``--memory-child`` process reports: its variant's peak RSS of ``--memory-steps`` steps."""
    variant, batch = make_variant(args.memory_child, setup, args, device)
    peak = peak_rss_of_steps(variant, batch, Stepper(device, args.precision), args.memory_steps, args.seed)
    return {"variant": args.memory_child, "peak_bytes": peak, "image_ids": batch["image_ids"].tolist()}


def rss_in_children(argv: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Runs each variant's ``--memory-child`` in a fresh process of this script, one after another."""
    results = {}
    for name in names:
        log.info("peak RSS of %s in a child process", name)
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-child", name]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory child {name} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def time_median(fn: Callable[[], Any], stepper: Stepper, repeats: int) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        stepper.sync()
        start = time.perf_counter()
        fn()
        stepper.sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def head_breakdown(variant: Variant, batch: dict, stepper: Stepper, repeats: int) -> dict[str, float]:
    """Median seconds of the head's pieces in isolation, on features of one real UNet forward."""
    module = variant.module
    assert module.head is not None and module.taps is not None
    with torch.no_grad(), stepper.autocast():
        latents = module.encode_images(batch["pixel_values"])
        timesteps = torch.randint(0, module.noise_scheduler.config.num_train_timesteps, (latents.shape[0],))
        timesteps = timesteps.to(latents.device)
        noisy = module.noise_scheduler.add_noise(latents, torch.randn_like(latents), timesteps)
        text = module.encode_prompts(batch["input_ids"])
        module.unet(noisy, timesteps, text)
        features = [f.detach().requires_grad_() for f in module.taps.pop()]
    text = text.detach().requires_grad_()
    head_params = list(module.head.parameters())

    def head_forward() -> Any:
        with stepper.autocast():
            inputs = HeadInputs(
                text, batch["object_index"], batch["labels"], batch["object_mask"], batch["masks"]
            )
            return module.head(features, inputs)

    def pa_loss(out: Any) -> torch.Tensor:
        return perception_loss(
            out.logits.float(),
            out.targets,
            out.valid,
            timesteps,
            module.alphas_cumprod,
            use_timestep_weight=module.hparams.pa_timestep_weight,
            use_dice=module.hparams.pa_dice,
        )

    def head_forward_backward() -> None:
        (module.hparams.pa_weight * pa_loss(head_forward())).backward()
        for t in [*features, text, *head_params]:
            t.grad = None

    out = head_forward()
    logits = out.logits.detach().float().requires_grad_()

    def pa_only() -> None:
        pa_loss(replace(out, logits=logits)).backward()
        logits.grad = None

    figures = {
        "head forward": time_median(head_forward, stepper, repeats),
        "head forward + P.A. loss + backward": time_median(head_forward_backward, stepper, repeats),
        "P.A. loss forward + backward": time_median(pa_only, stepper, repeats),
    }
    (module.hparams.pa_weight * pa_loss(head_forward())).backward()  # gradients for the AdamW step
    head_group = variant.optimizer.param_groups[-1]  # DetDiffusionModule.param_groups puts the head last
    head_optimizer = torch.optim.AdamW(
        head_params, lr=head_group["lr"], weight_decay=head_group["weight_decay"]
    )
    figures["AdamW step, head parameters"] = time_median(head_optimizer.step, stepper, repeats)
    return figures


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--config", choices=["tiny", "shapes", "sd15"], default="tiny", help="model and data sizes"
    )
    p.add_argument("--pretrained", type=Path, help="local diffusers SD folder (instead of --config)")
    p.add_argument("--batch-size", type=int, help="images per step; None: the config's")
    p.add_argument("--image-size", type=int, help="image side in pixels; None: the config's")
    p.add_argument(
        "--mask-size",
        type=int,
        help="side of the batch's object masks; None: the config's (the image side)",
    )
    p.add_argument("--steps", type=int, default=20, help="timed steps of each variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each variant first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument(
        "--precision", choices=["32", "bf16", "16"], default="32", help="autocast dtype (32: none)"
    )
    p.add_argument(
        "--head", choices=["instance", "semantic", "none"], default="instance", help="perception head"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads. On this project's 2-core machine a second thread made the tiny step "
        "5x slower and 3x noisier whenever another process held a core",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, data and noise")
    p.add_argument(
        "--memory",
        choices=["auto", "off"],
        default="auto",
        help="peak memory (CUDA in-process, CPU in children)",
    )
    p.add_argument(
        "--memory-steps",
        type=int,
        default=2,
        help="CPU: steps from a fresh optimizer that the peak RSS covers",
    )
    p.add_argument(
        "--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="device peak for MFU (CUDA only)"
    )
    p.add_argument(
        "--breakdown", action="store_true", help="also time the head-less recipe and the head's pieces"
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    p.add_argument("--memory-child", choices=["plain", "detdiffusion"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("batch_size", "image_size", "mask_size", "steps", "threads", "memory_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.pretrained is not None and not args.pretrained.expanduser().is_dir():
        p.error(f"--pretrained {args.pretrained} is not a folder")
    return args


#: (label, key, unit, format) of each per-variant figure, in print order.
FIGURES = (
    ("step, median", "step_ms", "ms", ".1f"),
    ("step, min", "step_ms_min", "ms", ".1f"),
    ("step, max", "step_ms_max", "ms", ".1f"),
    ("throughput", "images_per_s", "images/s", ".2f"),
    ("CPU time per step", "cpu_ms", "ms", ".1f"),
    ("FLOPs per step (fwd + bwd)", "gflop", "GFLOP", ".3f"),
    ("MFU", "mfu", "%", ".2f"),
    ("peak memory", "peak_mib", "MiB", ".1f"),
    ("AdamW state", "adamw_mib", "MiB", ".2f"),
)
#: figures whose ratio detdiffusion/plain is printed (throughput: plain/detdiffusion, so > 1 is slower too).
RATIOS = ("step_ms", "step_ms_min", "cpu_ms", "gflop", "peak_mib", "adamw_mib")


def print_report(setup_line: str, figures: dict[str, dict[str, float]], memory: str, command: str) -> dict:
    """The results table (a column per variant, then detdiffusion/plain); returns the ratios."""
    names = list(figures)
    plain, det = figures["plain"], figures["detdiffusion"]
    ratios = {k: det[k] / plain[k] for k in RATIOS if k in plain and k in det and plain[k] > 0}
    print(f"\nTraining step: {setup_line}\n")
    print(f"{'figure':<28}" + "".join(f"{n:>17}" for n in names) + f"{'det/plain':>11}  unit")
    for label, key, unit, fmt in FIGURES:
        if not any(key in figures[n] for n in names):
            continue
        cells = "".join(f"{figures[n][key]:>17{fmt}}" if key in figures[n] else f"{'':>17}" for n in names)
        ratio = f"{ratios[key]:>11.3f}" if key in ratios else f"{'':>11}"
        print(f"{label:<28}{cells}{ratio}  {unit}")
    verdict = "meets" if ratios["step_ms"] <= GOAL_RATIO else "misses"
    print(f"\nstep time detdiffusion/plain: {ratios['step_ms']:.3f} ({verdict} the goal <= {GOAL_RATIO})")
    print(f"peak memory: {memory}")
    print(f"[{command}]")
    return ratios


def print_breakdown(figures: dict[str, dict[str, float]], pieces: dict[str, float], steps: int) -> None:
    """Where detdiffusion's extra step time goes: the recipe without the head, then the head's pieces."""
    extra = figures["detdiffusion"]["step_ms"] - figures["plain"]["step_ms"]
    recipe = figures["module, no head"]["step_ms"] - figures["plain"]["step_ms"]
    head = pieces["head forward + P.A. loss + backward"] + pieces["AdamW step, head parameters"]
    print(f"\nWhere the extra {extra:.2f} ms a step goes (ms; pieces: medians of {steps} calls):\n")
    print(f"{'module recipe, no head (module, no head − plain)':<52}{recipe:>10.2f}")
    for label, ms in pieces.items():
        print(f"{label:<52}{ms:>10.2f}")
    print(f"{'rest (extra − recipe − head fwd/bwd − head AdamW)':<52}{extra - recipe - head:>10.2f}")


def measure_memory(
    args: argparse.Namespace, argv: Sequence[str], variants: dict[str, Variant], batch: dict, stepper: Stepper
) -> tuple[dict[str, float], str]:
    """Peak bytes of each variant's step and what they measure (see the module docstring)."""
    if args.memory == "off":
        return {}, "not measured (--memory off)"
    if stepper.device.type == "cuda":
        peaks = {n: peak_cuda_of_step(v, batch, stepper, args.seed) for n, v in variants.items()}
        return peaks, (
            "torch.cuda.max_memory_allocated during one warm step above what was allocated before it "
            "(activations, gradients, temporaries; AdamW state is its own row)"
        )
    peaks = {}
    for name, child in rss_in_children(
        [a for a in argv if a != "--breakdown"], ["plain", "detdiffusion"]
    ).items():
        if child["image_ids"] != batch["image_ids"].tolist():
            raise RuntimeError(f"the memory child of {name} got another batch")
        peaks[name] = child["peak_bytes"]
    return peaks, (
        f"peak RSS of a fresh child process per variant during its first {args.memory_steps} steps, above "
        "its RSS after building model and batch (activations, gradients, AdamW state, temporaries, "
        "allocator slack)"
    )


def describe(setup: Setup, args: argparse.Namespace, module: DetDiffusionModule, batch: dict) -> str:
    if module.vae is None:
        space = "pixel space"
    else:
        downsample = 2 ** (len(module.vae.config.block_out_channels) - 1)
        space = f"latent space ({setup.size // downsample} px latents)"
    windows = batch["input_ids"].shape[1] // module.layout_tokenizer.window
    head = "no head" if module.head is None else f"{type(module.head).__name__}(dim={module.head.dim})"
    objects = batch["object_mask"].sum(1).float().mean().item()
    params = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in trainable_params(module).items())
    return (
        f"{setup.label}, {space}, {head}, batch {setup.batch_size} × {setup.size} px "
        f"({objects:.1f} objects, {windows} prompt window(s) an image, masks {batch['masks'].shape[-1]} px), "
        f"precision {args.precision}, "
        f"{args.device}; trainable params {params}; {args.warmup} warm-up + {args.steps} timed steps each"
    )


def trainable_params(module: DetDiffusionModule) -> dict[str, int]:
    parts = {"unet": module.unet, "text_encoder": module.text_encoder, "head": module.head}
    return {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in parts.items() if m}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = shlex.join(["python", os.path.relpath(__file__), *argv])
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    setup = read_setup(args)
    if args.memory_child is not None:
        result = memory_child(args, setup, device)
        print(json.dumps(result))
        return result
    load_start = os.getloadavg()[0]
    stepper = Stepper(device, args.precision)

    log.info("building %s twice: without a head (plain) and with the %s head", setup.label, args.head)
    plain, batch = make_variant("plain", setup, args, device)
    detdiff, other_batch = make_variant("detdiffusion", setup, args, device)
    if not torch.equal(batch["pixel_values"], other_batch["pixel_values"]):
        raise RuntimeError("the two builds gave different batches")
    for part in ("unet", "text_encoder"):
        theirs = getattr(detdiff.module, part).state_dict()
        if not all(torch.equal(v, theirs[k]) for k, v in getattr(plain.module, part).state_dict().items()):
            raise RuntimeError(f"the two builds gave different {part} weights")
    variants = {"plain": plain, "detdiffusion": detdiff}
    if args.breakdown and detdiff.module.head is not None:
        variants["module, no head"] = Variant(detdiffusion_loss, plain.module, plain.optimizer)
    if device.type == "cpu":  # children first: nothing else of this run is busy meanwhile
        peaks, memory = measure_memory(args, argv, variants, batch, stepper)

    log.info("%d warm-up and %d timed steps of each variant on %s", args.warmup, args.steps, device)
    wall, cpu, losses = time_variants(variants, batch, stepper, args.warmup, args.steps, args.seed)
    for name, values in losses.items():
        if not all(math.isfinite(v) for v in values):
            raise FloatingPointError(f"{name}: non-finite loss {values}")
    if device.type != "cpu":
        peaks, memory = measure_memory(args, argv, variants, batch, stepper)

    figures: dict[str, dict[str, float]] = {}
    for name, variant in variants.items():
        flops = count_flops(variant, batch, stepper)
        step = statistics.median(wall[name])
        figures[name] = {
            "step_ms": step * 1e3,
            "step_ms_min": min(wall[name]) * 1e3,
            "step_ms_max": max(wall[name]) * 1e3,
            "images_per_s": setup.batch_size / step,
            "cpu_ms": statistics.median(cpu[name]) * 1e3,
            "gflop": flops / 1e9,
            "adamw_mib": adamw_state_bytes(variant.optimizer) / MIB,
        }
        if device.type == "cuda":
            figures[name]["mfu"] = 100 * flops / step / (args.peak_tflops * 1e12)
        if name in peaks:
            figures[name]["peak_mib"] = peaks[name] / MIB
    pieces = {}
    if "module, no head" in variants:
        log.info("timing the head's pieces")
        pieces = {k: v * 1e3 for k, v in head_breakdown(detdiff, batch, stepper, args.steps).items()}
    load_end = os.getloadavg()[0]

    machine = (
        f"{os.cpu_count()} CPUs, torch threads {args.threads}, load average {load_start:.2f} at start, "
        f"{load_end:.2f} at end"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
    )
    setup_line = f"{describe(setup, args, detdiff.module, batch)}; {machine}"
    ratios = print_report(setup_line, figures, memory, command)
    if pieces:
        print_breakdown(figures, pieces, args.steps)

    results = {
        "command": command,
        "setup": setup_line,
        "config": setup.label,
        "head": args.head,
        "batch_size": setup.batch_size,
        "image_size": setup.size,
        "precision": args.precision,
        "device": str(device),
        "steps": args.steps,
        "warmup": args.warmup,
        "trainable_params": trainable_params(detdiff.module),
        "figures": figures,
        "ratios": ratios,
        "goal_ratio": GOAL_RATIO,
        "memory": memory,
        "breakdown_ms": pieces,
        "step_seconds": wall,
        "losses": losses,
        "machine": machine_info(args.threads, load_start, load_end, device),
    }
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    main()
