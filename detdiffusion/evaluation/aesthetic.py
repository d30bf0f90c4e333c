"""Gen2Det's image-level filter of synthetic data: keep images that look at least as good as real ones.

Each image gets LAION's aesthetic score (an MLP on its L2-normalised CLIP ViT-L/14 embedding, the
improved-aesthetic-predictor); images scoring below a threshold, by default the mean score of the real
training images, are dropped with their annotations before a detector trains on the rest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from detdiffusion.data.coco import KEEP_ALL, ImageRecord, read_coco
from detdiffusion.data.transforms import load_rgb
from detdiffusion.files import write_json_atomic

__all__ = ["AestheticMLP", "AestheticScorer", "ImageFilterReport", "filter_images"]

log = logging.getLogger(__name__)

_CLIP_SOURCE = (
    "open_clip's ViT-L-14 'openai' weights, e.g. open_clip_pytorch_model.bin from the Hugging Face repo "
    "timm/vit_large_patch14_clip_224.openai (OpenAI's TorchScript ViT-L-14.pt does not load with "
    "weights_only=True)"
)
_MLP_SOURCE = (
    "LAION's improved aesthetic predictor, sac+logos+ava1-l14-linearMSE.pth from "
    "https://github.com/christophschuhmann/improved-aesthetic-predictor"
)


class AestheticMLP(nn.Module):
    """The improved-aesthetic-predictor head; its layout matches the released state dicts' keys."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def _existing(path: str | Path, argument: str, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{argument} {path} not found: it should be {what}; pass its path as {argument}"
        )
    return path


class AestheticScorer:
    """LAION's aesthetic score of images: ``mlp(normalize(clip.encode_image(x)))``, about 1-10.

    Args:
        clip_weights: the open_clip CLIP checkpoint of ``clip_model`` (a local file).
        mlp_weights: the aesthetic MLP's state dict (``sac+logos+ava1-l14-linearMSE.pth``).
        clip_model: the open_clip architecture name.
        device: where to run (None: CUDA if available).
        batch_size: images per forward pass.
        quick_gelu: use QuickGELU, as OpenAI's CLIP was trained with; open_clip's "ViT-L-14" config
            has plain GELU and, given a file rather than the "openai" tag, does not warn about it.
    """

    def __init__(
        self,
        clip_weights: str | Path,
        mlp_weights: str | Path,
        clip_model: str = "ViT-L-14",
        device: str | torch.device | None = None,
        batch_size: int = 32,
        quick_gelu: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.clip_weights = _existing(clip_weights, "clip_weights", _CLIP_SOURCE)
        self.mlp_weights = _existing(mlp_weights, "mlp_weights", _MLP_SOURCE)
        self.clip_model, self.batch_size, self.quick_gelu = clip_model, batch_size, quick_gelu
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

        # The cheap checks first, before reading a 1.7 GB CLIP checkpoint.
        state = torch.load(self.mlp_weights, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "layers.0.weight" not in state:
            raise ValueError(
                f"mlp_weights {self.mlp_weights}: not an aesthetic MLP state dict (no layers.0.weight)"
            )
        mlp_dim = state["layers.0.weight"].shape[1]
        config = open_clip.get_model_config(clip_model)
        if config is None:
            raise ValueError(
                f"clip_model {clip_model!r} is not an open_clip architecture: see open_clip.list_models()"
            )
        if mlp_dim != config["embed_dim"]:
            raise ValueError(
                f"mlp_weights {self.mlp_weights} takes {mlp_dim}-d embeddings but clip_model {clip_model} "
                f"gives {config['embed_dim']}-d ones"
            )
        self.mlp = AestheticMLP(mlp_dim)
        try:
            self.mlp.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"mlp_weights {self.mlp_weights}: {e}") from None
        try:
            # An absolute path, so a file that happens to be named like a tag is never downloaded.
            clip, _, self.preprocess = open_clip.create_model_and_transforms(
                clip_model,
                pretrained=str(self.clip_weights.resolve()),
                force_quick_gelu=quick_gelu,
                weights_only=True,
            )
        except RuntimeError as e:
            raise ValueError(
                f"clip_weights {self.clip_weights} does not load into open_clip {clip_model}: {e}"
            ) from e
        # Only the image tower is needed; the text tower stays off the device.
        self.visual = clip.visual.to(self.device).eval().requires_grad_(False)
        self.mlp.to(self.device).eval().requires_grad_(False)

    @property
    def description(self) -> dict[str, str | bool]:
        """What scored, for the record (file names, not paths, so outputs do not depend on where they lie)."""
        return {
            "clip_model": self.clip_model,
            "clip_weights": self.clip_weights.name,
            "mlp_weights": self.mlp_weights.name,
            "quick_gelu": self.quick_gelu,
        }

    def __repr__(self) -> str:
        return f"AestheticScorer({', '.join(f'{k}={v!r}' for k, v in self.description.items())})"

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(N,)`` float32 scores on the CPU, ``batch_size`` images a forward pass."""
        scores = [torch.empty(0)]
        for i in range(0, len(images), self.batch_size):
            chunk = images[i : i + self.batch_size]
            batch = torch.stack([self.preprocess(im) for im in chunk]).to(self.device)  # (B, 3, S, S)
            embeddings = F.normalize(self.visual(batch), dim=-1)  # (B, D), as LAION trained the MLP
            scores.append(self.mlp(embeddings).squeeze(-1).cpu())
        return torch.cat(scores)


@dataclass
class ImageFilterReport:
    """What ``filter_images`` did."""

    threshold: float
    threshold_source: str
    """"given", or the real set whose mean score it is."""
    images: int = 0
    kept: int = 0
    dropped: int = 0
    mean_score: float = 0.0
    """Over all synthetic images."""

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def format(self) -> str:
        """A summary for people."""
        return (
            f"Aesthetic filter: kept {self.kept:,} of {self.images:,} images ({self.dropped:,} dropped) "
            f"scoring >= {self.threshold:.4f} ({self.threshold_source}); mean score {self.mean_score:.4f}"
        )


def _score_records(
    scorer: AestheticScorer, records: Sequence[ImageRecord], progress: bool, desc: str
) -> torch.Tensor:
    scores = [torch.empty(0)]
    with tqdm(total=len(records), desc=desc, unit="img", disable=not progress) as bar:
        for i in range(0, len(records), scorer.batch_size):
            chunk = records[i : i + scorer.batch_size]
            scores.append(scorer.score([Image.fromarray(load_rgb(r.path, r.id)) for r in chunk]))
            bar.update(len(chunk))
    return torch.cat(scores)


def filter_images(
    annotations: str | Path,
    out: str | Path,
    scorer: AestheticScorer,
    images: str | Path | None = None,
    threshold: float | None = None,
    real_annotations: str | Path | None = None,
    real_images: str | Path | None = None,
    progress: bool = True,
) -> ImageFilterReport:
    """Write ``annotations`` without the synthetic images scoring under the threshold, nor their objects.

    Give either ``threshold`` or ``real_annotations``, whose images' mean score is then the threshold.

    Args:
        annotations: a synthetic COCO JSON (``detdiffusion predict``'s ``annotations.json``).
        out: the filtered JSON (written atomically; the input is untouched). Kept images get their
            ``aesthetic_score``; ``info["image_filter"]`` records how they were chosen.
        scorer: the aesthetic scorer.
        images: the image folder (None: the JSON's folder).
        threshold: images scoring at least this are kept.
        real_annotations: a real COCO JSON (e.g. the detector's training set).
        real_images: its image folder (None: that JSON's folder).
        progress: show a progress bar.
    """
    annotations, out = Path(annotations).expanduser(), Path(out).expanduser()
    if annotations.resolve() == out.resolve():
        raise ValueError(f"--out {out} is the input file: write the filtered dataset elsewhere")
    if (threshold is None) == (real_annotations is None):
        raise ValueError(
            "give exactly one of threshold and real_annotations (whose mean score becomes the threshold), "
            f"got threshold={threshold} and real_annotations={real_annotations}"
        )
    if real_images is not None and real_annotations is None:
        raise ValueError(f"real_images {real_images} given without real_annotations")

    if real_annotations is not None:
        real_annotations = Path(real_annotations).expanduser()
        real = read_coco(real_annotations, real_images or real_annotations.parent, filters=KEEP_ALL)
        if not real.images:
            raise ValueError(f"real_annotations {real_annotations} has no images to take a mean score of")
        threshold = _score_records(scorer, real.images, progress, desc="scoring real").double().mean().item()
        source = f"mean of {len(real.images)} real images of {real_annotations.name}"
        log.info(
            "mean aesthetic score of the %d real images of %s: %.4f",
            len(real.images),
            real_annotations,
            threshold,
        )
    else:
        threshold, source = float(threshold), "given"

    coco = read_coco(annotations, images or annotations.parent, filters=KEEP_ALL)
    if not coco.images:
        raise ValueError(f"{annotations} has no images to filter")
    scores = _score_records(scorer, coco.images, progress, desc="scoring").tolist()
    kept = {r.id: s for r, s in zip(coco.images, scores, strict=True) if s >= threshold}
    report = ImageFilterReport(
        threshold=threshold,
        threshold_source=source,
        images=len(scores),
        kept=len(kept),
        dropped=len(scores) - len(kept),
        mean_score=sum(scores) / len(scores),
    )

    data = json.loads(annotations.read_text())
    data["images"] = [{**im, "aesthetic_score": kept[im["id"]]} for im in data["images"] if im["id"] in kept]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
    data.setdefault("info", {})["image_filter"] = {
        "scorer": scorer.description,
        "source": annotations.name,
        **report.as_dict(),
    }
    write_json_atomic(data, out)
    log.info(
        "kept %d of %d synthetic images (threshold %.4f, %s); wrote %s",
        report.kept,
        report.images,
        threshold,
        source,
        out,
    )
    return report
