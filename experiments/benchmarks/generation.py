"""Generation throughput: ``LayoutDiffusionPipeline`` against a plain ``StableDiffusionPipeline``.

Part 1, in one process, on the same weights, scheduler, steps, guidance, batch and per-image
generators: images/s of

- plain: diffusers' ``StableDiffusionPipeline`` given each layout's prompt string (it tokenizes
  and encodes the text itself; safety checker off), ``output_type="pt"``;
- ours: ``LayoutDiffusionPipeline`` given the layouts (prompt building, layout tokenization,
  windows, the same loop), ``output_type="pt"``.

After a warm-up call of each, the two alternate call by call, the order rotating each round, and
figures are medians over ``--rounds`` calls of each; the ratio ours/plain is the goal (>= 0.98).

Part 2 (``--ddp``): ``detdiffusion predict`` with 1 rank and with 2 DDP ranks on the CPU (2
threads vs 1 thread each), from a one-step checkpoint of the tiny model, on the same layouts;
images/s as the writer reports it (all ranks, generation only: start-up and imports excluded).

Configurations: ``tiny`` = ``tests/conf/detdiffusion.yaml``'s model (latent space, 32 px); ``sd15``
= Stable Diffusion 1.5 sized, randomly initialised (for a GPU: 512², 25 steps, batch 8).

Run from the repository root::

    python experiments/benchmarks/generation.py --config tiny --ddp
    python experiments/benchmarks/generation.py --config sd15 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from diffusers import StableDiffusionPipeline

from detdiffusion.benchmarking import machine_info, write_results
from detdiffusion.generation import LayoutDiffusionPipeline
from detdiffusion.layout.grid import LocationGrid
from detdiffusion.layout.types import Layout, LayoutObject
from detdiffusion.model.module import DetDiffusionModule

log = logging.getLogger("generation")

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "conf" / "detdiffusion.yaml"
GOAL_RATIO = 0.98
CLASSES = ("circle", "square", "triangle", "diamond", "star")


def _sd15_model() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("train_step", Path(__file__).with_name("train_step.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return dict(module.SD15_MODEL)


def build(config: str, device: torch.device, dtype: torch.dtype) -> DetDiffusionModule:
    if config == "tiny":
        init = yaml.safe_load(TINY.read_text())["model"]["init_args"]
        init.pop("head")
        init["grid"] = LocationGrid(**init["grid"])
    else:
        init = _sd15_model()
    torch.manual_seed(0)
    return DetDiffusionModule(**init).eval().to(device, dtype)


def layouts(n: int, objects: int, seed: int) -> list[Layout]:
    """``n`` random layouts of ``objects`` shapes each (one 77-token window, so plain SD reads them whole)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        objs = []
        for _ in range(objects):
            x0, y0 = rng.uniform(0, 0.6, 2)
            w, h = rng.uniform(0.1, 0.4, 2)
            objs.append(LayoutObject(str(rng.choice(CLASSES)), (x0, y0, x0 + w, y0 + h), "easy"))
        out.append(Layout(tuple(objs), 512, 512, image_id=i))
    return out


def time_alternating(
    fns: dict[str, Callable[[], Any]], rounds: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Median seconds per call of each, the calls alternating with the order rotating each round."""
    names = list(fns)
    for name in names:  # warm-up
        fns[name]()
    sync()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def compare_pipelines(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    module = build(args.config, device, dtype)
    ours = LayoutDiffusionPipeline.from_module(module)
    ours.set_progress_bar_config(disable=True)
    plain = StableDiffusionPipeline(
        vae=module.vae,
        text_encoder=module.text_encoder,
        tokenizer=module.layout_tokenizer.tokenizer,
        unet=module.unet,
        scheduler=type(ours.scheduler).from_config(ours.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    plain.set_progress_bar_config(disable=True)
    batch = layouts(args.batch_size, args.objects, args.seed)
    encoded = [module.layout_tokenizer.encode(lay) for lay in batch]
    if any(len(e.input_ids) > module.layout_tokenizer.window for e in encoded):
        # Plain SD would truncate them: the two would not generate the same images.
        raise SystemExit(
            f"--objects {args.objects}: some prompts take more than one 77-token window; use fewer"
        )
    prompts = [e.prompt for e in encoded]
    scale = 2 ** (len(module.vae.config.block_out_channels) - 1)
    size = args.image_size or scale * module.unet.config.sample_size
    seeds = list(range(len(batch)))

    def generators() -> list[torch.Generator]:
        return [torch.Generator(device).manual_seed(s) for s in seeds]

    common = {
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "height": size,
        "width": size,
    }

    def run_plain() -> torch.Tensor:
        return plain(prompts, generator=generators(), output_type="pt", **common).images

    def run_ours() -> torch.Tensor:
        return ours(batch, seeds=seeds, output_type="pt", progress=False, **common).images

    with torch.inference_mode():
        difference = (run_plain().float().cpu() - run_ours().float().cpu()).abs().max().item()
        sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
        seconds = time_alternating({"plain": run_plain, "ours": run_ours}, args.rounds, sync)
    images_per_s = {k: len(batch) / v for k, v in seconds.items()}
    return {
        "config": args.config,
        "image_size": size,
        "batch_size": len(batch),
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "precision": args.precision,
        "scheduler": type(ours.scheduler).__name__,
        "images_per_s": images_per_s,
        "ratio_ours_over_plain": images_per_s["ours"] / images_per_s["plain"],
        "max_abs_difference": difference,
    }


def predict_rate(checkpoint: Path, out: Path, devices: int, limit: int, batch_size: int) -> float:
    """images/s that ``detdiffusion predict`` reports for ``limit`` layouts × 2 samples."""
    threads = str(max(1, (os.cpu_count() or 2) // devices))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        *(sys.executable, "-m", "detdiffusion", "predict"),
        *("--config", str(ROOT / "tests" / "conf" / "generate.yaml"), f"--ckpt_path={checkpoint}"),
        f"--data.output_dir={out}",
        f"--data.limit={limit}",
        f"--data.batch_size={batch_size}",
        f"--trainer.devices={devices}",
        "--data.init_args.sampling.num_inference_steps=10",
        "--data.init_args.shapes.num_val=" + str(limit),
    ]
    if devices > 1:
        command.append("--trainer.strategy=ddp")
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    match = re.search(
        r"generated (\d+) images on (\d+) ranks in [\d.]+ s \(([\d.]+) images/s\)", result.stderr
    )
    if match is None:
        raise RuntimeError(f"no throughput line in the predict log:\n{result.stderr[-2000:]}")
    return float(match.group(3))


def compare_ranks(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        subprocess.run(
            [
                *(sys.executable, "-m", "detdiffusion", "fit", "--config", str(TINY)),
                f"--trainer.default_root_dir={root}",
                "--trainer.max_steps=1",
                "--trainer.enable_checkpointing=true",
                "--trainer.limit_val_batches=0",
            ],
            env=env,
            capture_output=True,
            check=True,
        )
        (checkpoint,) = root.glob("**/*.ckpt")
        rates = {
            f"{n} rank{'s' if n > 1 else ''}": predict_rate(
                checkpoint, root / f"out{n}", n, args.ddp_layouts, 8
            )
            for n in (1, 2)
        }
    return {
        "images_per_s": rates,
        "ratio_2_over_1": rates["2 ranks"] / rates["1 rank"],
        "layouts": args.ddp_layouts,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["tiny", "sd15"], default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=None, help="pixels (default: the model's)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--objects", type=int, default=3, help="objects a layout (prompts must fit one window)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--ddp", action="store_true", help="also time detdiffusion predict on 1 vs 2 CPU ranks")
    p.add_argument("--ddp-layouts", type=int, default=16, help="layouts (× 2 samples) for --ddp")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_start = os.getloadavg()[0]
    results: dict[str, Any] = {"pipeline": compare_pipelines(args, device)}
    if args.ddp:
        results["ddp"] = compare_ranks(args)
    results["machine"] = machine_info(torch.get_num_threads(), load_start, os.getloadavg()[0], device)
    r = results["pipeline"]
    print(
        f"{r['config']} {r['image_size']} px, batch {r['batch_size']}, {r['steps']} steps, {r['precision']}, "
        f"{r['scheduler']}: plain {r['images_per_s']['plain']:.3f} images/s, "
        f"ours {r['images_per_s']['ours']:.3f} images/s, "
        f"ratio ours/plain {r['ratio_ours_over_plain']:.3f} (goal >= {GOAL_RATIO}); "
        f"max |difference| {r['max_abs_difference']:.2e}"
    )
    if args.ddp:
        d = results["ddp"]
        print(
            f"detdiffusion predict on CPU: 1 rank {d['images_per_s']['1 rank']:.2f} images/s, 2 ranks "
            f"{d['images_per_s']['2 ranks']:.2f} images/s, ratio {d['ratio_2_over_1']:.2f}"
        )
    write_results(args.json, results)
    return results


if __name__ == "__main__":
    main()
