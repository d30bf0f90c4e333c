"""The shapes benchmark: DetDiffusion's three claims in miniature, on a CPU, from one command.

    python experiments/shapes/benchmark.py            # the full run (about 45 min on 2 cores)
    python experiments/shapes/benchmark.py --quick    # every step on tiny settings (a few minutes)

Steps, each a ``detdiffusion`` command logged to ``<out>/logs/<step>.log`` and skipped on a rerun
once done (delete ``<out>/done/<step>`` to redo one):

1. the shapes dataset;  2. the shapes detector;  3. P.A. attributes of train and val;
4. DetDiffusion with and without the P.A. loss (same data, steps and seed);
5. generation from the validation layouts with ``origin``, ``easy`` and ``hard``, and a synthetic
   training set from the training layouts;  6. YOLO score, placement, detector confidence and FID
   (on the detector's backbone features: Inception never saw shapes);
7. trainability: the detector on a small real subset alone and with the synthetic set, over seeds;
8. ``RESULTS.md``, ``results.json`` and figures (``experiments/shapes/`` for the full run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
log = logging.getLogger("benchmark")

MODELS = {"pa": "with P.A. loss", "no_pa": "without P.A. loss"}
STRATEGIES = ("origin", "easy", "hard")


@dataclass(frozen=True)
class Settings:
    train: int = 2000
    val: int = 200
    size: int = 64
    detector_steps: int = 600
    diffusion_steps: int = 800
    layouts: int = 150  # validation layouts generated per strategy
    synthetic_layouts: int = 400  # training layouts of the synthetic set (trainability)
    sampling_steps: int = 25
    guidance: float = 3.0
    subset: int = 100  # real images of the low-data detector runs
    trainability_steps: int = 200
    seeds: tuple[int, ...] = (0, 1, 2)
    validate_every: int = 400


QUICK = Settings(
    train=48,
    val=16,
    detector_steps=4,
    diffusion_steps=4,
    layouts=8,
    synthetic_layouts=8,
    sampling_steps=2,
    subset=16,
    trainability_steps=4,
    seeds=(0, 1),
    validate_every=4,
)


class Benchmark:
    def __init__(self, out: Path, settings: Settings, quick: bool) -> None:
        self.out, self.s, self.quick = out, settings, quick
        self.timings: dict[str, float] = {}
        timings = out / "timings.json"
        if timings.is_file():
            self.timings = json.loads(timings.read_text())

    # -- running ---------------------------------------------------------------------------------

    def step(self, name: str, *commands: list[str]) -> None:
        """Run ``commands`` (``detdiffusion`` argument lists) unless the step is done."""
        done = self.out / "done" / name
        if done.exists():
            log.info("%s: done before", name)
            return
        log.info("%s ...", name)
        start = time.perf_counter()
        log_file = self.out / "logs" / f"{name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("w") as f:
            for args in commands:
                command = [sys.executable, "-m", "detdiffusion", *args]
                f.write("$ " + " ".join(command) + "\n")
                f.flush()
                if subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=False).returncode:
                    tail = "".join(log_file.read_text().splitlines(keepends=True)[-20:])
                    raise SystemExit(f"error: step {name} failed; {log_file}:\n{tail}")
        self.finish(name, start)

    def finish(self, name: str, start: float) -> None:
        self.timings[name] = round(time.perf_counter() - start, 1)
        (self.out / "timings.json").write_text(json.dumps(self.timings, indent=1))
        (self.out / "done").mkdir(exist_ok=True)
        (self.out / "done" / name).touch()
        log.info("%s: %.0f s", name, self.timings[name])

    # -- paths -----------------------------------------------------------------------------------

    def split(self, split: str, labelled: bool = False) -> tuple[Path, Path]:
        """``(annotations, images)`` of a split; ``labelled``: with P.A. attributes."""
        images = self.out / "data" / split
        if labelled:
            return self.out / "attributes" / f"{split}.json", images
        return self.out / "data" / "annotations" / f"instances_{split}.json", images

    def data_args(self, labelled: bool = False) -> list[str]:
        (ta, ti), (va, vi) = self.split("train", labelled), self.split("val", labelled)
        return [
            f"--data.train_annotations={ta}",
            f"--data.train_images={ti}",
            f"--data.val_annotations={va}",
            f"--data.val_images={vi}",
        ]

    @staticmethod
    def checkpoint(root: Path) -> Path:
        (ckpt,) = root.glob("lightning_logs/version_0/checkpoints/last.ckpt")
        return ckpt

    # -- the steps -------------------------------------------------------------------------------

    def run(self) -> None:
        s = self.s
        data = [
            "shapes",
            f"--out={self.out / 'data'}",
            f"--train={s.train}",
            f"--val={s.val}",
            f"--size={s.size}",
        ]
        self.step("1_data", data)

        detector_steps = [
            "fit",
            f"--config={HERE / 'detector.yaml'}",
            f"--trainer.default_root_dir={self.out / 'detector'}",
            f"--trainer.max_steps={s.detector_steps}",
            f"--trainer.val_check_interval={s.detector_steps}",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks+=detdiffusion.callbacks.MetricsFile",
            f"--trainer.callbacks.path={self.out / 'detector' / 'metrics.json'}",
            *self.data_args(),
        ]
        self.step("2_detector", detector_steps)
        detector_spec = self.out / "detector.yaml"
        detector_spec.write_text(
            "class_path: detdiffusion.detectors.TorchvisionDetector\n"
            "init_args: {architecture: fasterrcnn_small, category_ids: [1, 2, 3, 4, 5], min_size: 64, "
            f"max_size: 64, weights: {self.checkpoint(self.out / 'detector')}}}\n"
        )

        attributes = []
        for split in ("train", "val"):
            annotations, images = self.split(split)
            out = self.split(split, labelled=True)[0]
            files = [f"--annotations={annotations}", f"--images={images}", f"--out={out}"]
            attributes.append(["attributes", *files, f"--detector={detector_spec}"])
        self.step("3_attributes", *attributes)

        for model in MODELS:
            fit = [
                "fit",
                f"--config={HERE / 'benchmark.yaml'}",
                f"--trainer.default_root_dir={self.out / 'diffusion' / model}",
                f"--trainer.max_steps={s.diffusion_steps}",
                f"--trainer.val_check_interval={min(s.validate_every, s.diffusion_steps)}",
                *self.data_args(labelled=True),
                *(["--model.head=null"] if model == "no_pa" else []),
            ]
            self.step(f"4_diffusion_{model}", fit)

        val_layouts = self.split("val", labelled=True)[0]
        for model in MODELS:
            ckpt = self.checkpoint(self.out / "diffusion" / model)
            runs = [
                self.predict(
                    ckpt, val_layouts, self.out / "generated" / f"{model}_{strategy}", strategy, s.layouts
                )
                for strategy in STRATEGIES
            ]
            self.step(f"5_generate_{model}", *runs)
        train_layouts = self.split("train", labelled=True)[0]
        synthetic = self.out / "generated" / "pa_train"
        ckpt = self.checkpoint(self.out / "diffusion" / "pa")
        self.step(
            "5_generate_synthetic",
            self.predict(ckpt, train_layouts, synthetic, "origin", s.synthetic_layouts),
        )

        if not (self.out / "done" / "6_score").exists():
            start = time.perf_counter()
            self.score()
            self.finish("6_score", start)

        if not (self.out / "done" / "7_trainability").exists():
            from detdiffusion.evaluation.trainability import run_trainability

            start = time.perf_counter()
            run_trainability(
                HERE / "trainability.yaml",
                self.out / "trainability",
                synthetic / "annotations.json",
                seeds=s.seeds,
                fit_args=[
                    *self.data_args(),
                    f"--data.train_subset={s.subset}",
                    f"--trainer.max_steps={s.trainability_steps}",
                    f"--trainer.val_check_interval={s.trainability_steps}",
                ],
            )
            self.finish("7_trainability", start)

        from report import write_report  # experiments/shapes/report.py

        results_dir = self.out if self.quick else HERE
        write_report(self.out, results_dir, asdict(self.s) | {"quick": self.quick}, self.timings)

    def predict(self, ckpt: Path, layouts: Path, out: Path, strategy: str, limit: int) -> list[str]:
        return [
            "predict",
            f"--config={HERE / 'generate.yaml'}",
            f"--ckpt_path={ckpt}",
            "--data.shapes=null",
            f"--data.layouts={layouts}",
            f"--data.output_dir={out}",
            f"--data.strategy={strategy}",
            "--data.samples_per_layout=1",
            f"--data.limit={limit}",
            "--data.resize_to_source=true",
            f"--data.sampling.num_inference_steps={self.s.sampling_steps}",
            f"--data.sampling.guidance_scale={self.s.guidance}",
            "--trainer.enable_progress_bar=false",
        ]

    def score(self) -> None:
        """YOLO score, placement and confidence of every generated set; FID on detector features."""
        import torch

        from detdiffusion.data.coco import read_coco
        from detdiffusion.detectors.running import load_image
        from detdiffusion.detectors.training import DetectorModule
        from detdiffusion.evaluation.fid import FID, DetectorFeatures
        from detdiffusion.evaluation.generated import score_generated

        detector = DetectorModule.load_from_checkpoint(self.checkpoint(self.out / "detector")).to_detector(
            "cpu"
        )
        fid = FID(
            feature_extractor=DetectorFeatures(detector.model),
            extractor_name="shapes detector backbone",
            image_size=64,
        )
        annotations, images = self.split("val")
        real = read_coco(annotations, images).images[: self.s.layouts]
        with torch.inference_mode():
            for i in range(0, len(real), 32):
                fid.update(torch.stack([load_image(r) for r in real[i : i + 32]]), real=True)
        scores = {}
        for model in MODELS:
            for strategy in STRATEGIES:
                name = f"{model}_{strategy}"
                result = score_generated(
                    self.out / "generated" / name / "annotations.json", detector, fid=fid
                )
                scores[name] = result.as_dict(per_object=True)
        real_score = score_generated(annotations, detector, images)  # the detector on the real images
        scores["real"] = real_score.as_dict()
        (self.out / "scores.json").write_text(json.dumps(scores))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks every step runs")
    parser.add_argument(
        "--out", type=Path, default=None, help="work folder (default outputs/shapes_benchmark[_quick])"
    )
    parser.add_argument("--fresh", action="store_true", help="delete the work folder first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = args.out or Path("outputs") / ("shapes_benchmark_quick" if args.quick else "shapes_benchmark")
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    Benchmark(out.resolve(), QUICK if args.quick else Settings(), args.quick).run()


if __name__ == "__main__":
    main()
