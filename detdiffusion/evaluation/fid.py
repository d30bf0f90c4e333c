"""FID with fixed, recorded preprocessing and cached real-set statistics.

torchmetrics' ``FrechetInceptionDistance`` computes the distance; this wrapper pins what FID
scores are notoriously sensitive to and records it:

- images arrive as float RGB in [0, 1] and are quantised to 8 bits as a PNG would store them
  (round, not truncate), so generated tensors and the same images read back from PNG score alike;
- Inception: torch-fidelity's InceptionV3 (the TF-ported FID network, resized to 299² inside)
  from a **local** weights file, since nothing can be downloaded at run time; or any feature
  extractor module, fed 8-bit images resized to ``image_size``² (bilinear, antialiased).

Real-set statistics (feature sum, outer-product sum, count) are saved with that record and the
extractor's identity and reused when both match.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from detdiffusion.files import file_sha256

__all__ = ["FID", "INCEPTION_WEIGHTS_URL", "DetectorFeatures"]

#: torch-fidelity's FID Inception weights (fetch once on a machine with internet).
INCEPTION_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"

_REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


class _Resized(nn.Module):
    """8-bit images → float [0, 1] at ``size``² → the wrapped extractor's ``(N, D)`` features."""

    def __init__(self, extractor: nn.Module, size: int) -> None:
        super().__init__()
        self.extractor = extractor
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        x = F.interpolate(
            x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
        )
        return self.extractor(x).flatten(1)


class DetectorFeatures(nn.Module):
    """A torchvision R-CNN's backbone as an FID feature extractor: each FPN level average-pooled.

    For domains Inception never saw (the shapes): a detector trained on the real images knows
    what matters there. Its scores are comparable only among themselves: say which extractor
    made them (``FID(feature_extractor=DetectorFeatures(m), extractor_name=...)``).

    Args:
        model: a ``GeneralizedRCNN`` (``TorchvisionDetector(...).model``); it is frozen, in eval.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(model.transform.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(model.transform.image_std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` in [0, 1] → ``(N, levels · channels)``."""
        features = self.backbone((images - self.mean) / self.std)
        return torch.cat([f.mean(dim=(2, 3)) for f in features.values()], dim=1)


class FID(FrechetInceptionDistance):
    """Fréchet distance between real and generated image features.

    Args:
        inception_weights: torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` on disk
            (see ``INCEPTION_WEIGHTS_URL``); used when no ``feature_extractor`` is given.
        feature_extractor: any module mapping ``(N, 3, S, S)`` float images in [0, 1] to ``(N, D)``
            features (e.g. a small network trained on the shapes); its results are only comparable
            with the same extractor, and are labelled with ``extractor_name``.
        extractor_name: how to record a custom extractor (default: its class name).
        image_size: ``S``, the side custom extractors see.
        kwargs: ``FrechetInceptionDistance`` / ``Metric`` arguments.

    ``update(images, real)`` takes ``(N, 3, H, W)`` floats in [0, 1] (or uint8). Real features
    are kept across ``reset`` (``reset_real_features=False``): compute them once, or load them.
    """

    def __init__(
        self,
        inception_weights: str | Path | None = None,
        feature_extractor: nn.Module | None = None,
        extractor_name: str | None = None,
        image_size: int = 299,
        **kwargs: Any,
    ) -> None:
        if feature_extractor is None:
            if inception_weights is None or not Path(inception_weights).expanduser().is_file():
                where = (
                    "no path was given"
                    if inception_weights is None
                    else f"{inception_weights} does not exist"
                )
                raise FileNotFoundError(
                    f"FID needs the Inception weights file, and {where}. On a machine with internet, "
                    f"download {INCEPTION_WEIGHTS_URL}, copy it here (e.g. ~/.cache/detdiffusion/"
                    "weights-inception-2015-12-05-6726825d.pth) and pass its path as inception_weights "
                    "(--fid.inception_weights in configs); or pass feature_extractor=<module>."
                )
            path = Path(inception_weights).expanduser()
            super().__init__(
                feature=2048, reset_real_features=False, feature_extractor_weights_path=str(path), **kwargs
            )
            digest = file_sha256(path)[:16]
            self.extractor = f"torch-fidelity inception-v3-compat pool3 (weights sha256 {digest})"
            self.preprocessing = "8-bit RGB (rounded, as PNG) → torch-fidelity's bilinear resize to 299x299"
        else:
            super().__init__(
                feature=_Resized(feature_extractor, image_size), reset_real_features=False, **kwargs
            )
            self.extractor = extractor_name or type(feature_extractor).__name__
            self.preprocessing = (
                f"8-bit RGB (rounded, as PNG) → bilinear antialiased resize to {image_size}x{image_size}"
            )

    def update(self, images: torch.Tensor, real: bool) -> None:
        if images.dtype != torch.uint8:
            images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
        super().update(images, real)

    # -- real-set statistics ---------------------------------------------------------------------

    @property
    def record(self) -> dict[str, str]:
        """What a score depends on besides the images: the extractor and the preprocessing."""
        return {"extractor": self.extractor, "preprocessing": self.preprocessing}

    def save_real_statistics(self, path: str | Path) -> Path:
        """Write the real features' sums and count with ``record`` (atomically)."""
        path = Path(path).expanduser()
        if int(self.real_features_num_samples) < 2:
            raise ValueError("fewer than 2 real images have been added: nothing to save")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"record": self.record, **{k: getattr(self, k).cpu() for k in _REAL_STATES}}, tmp)
        os.replace(tmp, path)
        return path

    def load_real_statistics(self, path: str | Path, rank: int = 0) -> bool:
        """Load saved real statistics; False (nothing loaded) when ``path`` does not exist.

        Another extractor or preprocessing is an error. Under DDP states are summed across
        ranks, so only ``rank`` 0 loads them (pass the process's rank); the others keep zeros.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            return False
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["record"] != self.record:
            raise ValueError(
                f"{path}: real statistics of another setting ({saved['record']}); this metric uses "
                f"{self.record}. Delete the file or give another path."
            )
        for key in _REAL_STATES:
            value = saved[key] if rank == 0 else torch.zeros_like(saved[key])
            setattr(self, key, value.to(getattr(self, key).device, getattr(self, key).dtype))
        return True
