"""FID with a tiny feature extractor: same set ≈ 0, shifted set larger, cached real statistics."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from detdiffusion.evaluation import FID


class TinyFeatures(nn.Module):
    """A fixed random conv net: 16 features an image."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 5, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _images(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 24, 24, generator=g) * 0.6 + 0.2 + shift).clamp(0, 1)


def _fid() -> FID:
    return FID(feature_extractor=TinyFeatures(), image_size=32)


def test_same_set_is_near_zero_and_a_shifted_set_is_far() -> None:
    real = _images(64, 0)
    same = _fid()
    same.update(real, real=True)
    same.update(real, real=False)
    assert abs(float(same.compute())) < 1e-3
    near = _fid()
    near.update(real, real=True)
    near.update(_images(64, 1), real=False)  # another draw of the same distribution
    far = _fid()
    far.update(real, real=True)
    far.update(_images(64, 1, shift=0.2), real=False)
    assert float(far.compute()) > 10 * float(near.compute()) > 0


def test_float_images_score_as_their_png(tmp_path: Path) -> None:
    # Quantised to 8 bits by rounding: a tensor and the same image saved as PNG and read back agree.
    images = _images(8, 2)
    png = []
    for i, im in enumerate(images):
        path = tmp_path / f"{i}.png"
        Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()).save(path)
        png.append(torch.from_numpy(np.asarray(Image.open(path))).permute(2, 0, 1))
    a, b = _fid(), _fid()
    a.update(images, real=True)
    b.update(torch.stack(png), real=True)
    torch.testing.assert_close(a.real_features_sum, b.real_features_sum)


def test_real_statistics_are_cached_and_checked(tmp_path: Path) -> None:
    first = _fid()
    first.update(_images(32, 0), real=True)
    path = first.save_real_statistics(tmp_path / "real.pt")
    first.update(_images(32, 1, 0.1), real=False)

    second = _fid()
    assert second.load_real_statistics(path)
    second.update(_images(32, 1, 0.1), real=False)
    torch.testing.assert_close(second.compute(), first.compute())
    assert not _fid().load_real_statistics(tmp_path / "missing.pt")

    other = FID(feature_extractor=TinyFeatures(), image_size=48)
    with pytest.raises(ValueError, match="real statistics of another setting"):
        other.load_real_statistics(path)


def test_missing_inception_weights_say_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"weights-inception-2015-12-05-6726825d\.pth.*inception_weights"
    ):
        FID(inception_weights=tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="no path was given"):
        FID()
