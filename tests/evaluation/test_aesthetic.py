"""Gen2Det's image filter: keep synthetic images whose aesthetic score reaches a threshold."""

import json
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from detdiffusion.data.shapes import shapes_paths
from detdiffusion.evaluation.aesthetic import AestheticMLP, AestheticScorer, filter_images

_TINY = "detdiffusion-test-tiny-vit"
_TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random tiny CLIP registered with open_clip and a random aesthetic MLP on its 16-d embeddings."""
    root = tmp_path_factory.mktemp("aesthetic")
    (root / f"{_TINY}.json").write_text(json.dumps(_TINY_CONFIG))
    open_clip.add_model_config(root / f"{_TINY}.json")
    torch.manual_seed(0)
    clip = open_clip.create_model(_TINY, force_quick_gelu=True)
    torch.save(clip.state_dict(), root / "clip.pt")
    torch.save(AestheticMLP(16).state_dict(), root / "mlp.pth")
    return root / "clip.pt", root / "mlp.pth"


@pytest.fixture(scope="module")
def scorer(weights: tuple[Path, Path]) -> AestheticScorer:
    return AestheticScorer(*weights, clip_model=_TINY, device="cpu", batch_size=64)


def _split(shapes_dir: Path, split: str) -> tuple[Path, Path, list[Image.Image]]:
    paths = shapes_paths(shapes_dir)[split]
    data = json.loads(paths.annotations.read_text())
    pictures = [Image.open(paths.images / im["file_name"]).convert("RGB") for im in data["images"]]
    return paths.annotations, paths.images, pictures


def test_scores_are_one_float_per_image_and_deterministic(scorer: AestheticScorer, shapes_dir: Path) -> None:
    *_, pictures = _split(shapes_dir, "val")
    scores = scorer.score(pictures)
    assert scores.shape == (len(pictures),) and scores.dtype == torch.float32
    assert torch.equal(scores, scorer.score(pictures))
    assert len(set(scores.tolist())) == len(pictures)  # the images are told apart
    assert scorer.score([]).shape == (0,)
    assert scorer.description == {
        "clip_model": _TINY,
        "clip_weights": "clip.pt",
        "mlp_weights": "mlp.pth",
        "quick_gelu": True,
    }


def test_keeps_images_scoring_at_least_the_threshold(
    scorer: AestheticScorer, shapes_dir: Path, tmp_path: Path
) -> None:
    annotations, images, pictures = _split(shapes_dir, "val")
    source = json.loads(annotations.read_text())
    scores = dict(zip([im["id"] for im in source["images"]], scorer.score(pictures).tolist(), strict=True))
    threshold = sorted(scores.values())[len(scores) // 2]  # an image scoring exactly this stays
    keep = {i for i, s in scores.items() if s >= threshold}

    report = filter_images(annotations, tmp_path / "out.json", scorer, images, threshold, progress=False)
    assert (report.images, report.kept, report.dropped) == (len(scores), len(keep), len(scores) - len(keep))
    assert report.mean_score == pytest.approx(sum(scores.values()) / len(scores))
    out = json.loads((tmp_path / "out.json").read_text())
    assert {im["id"]: im["aesthetic_score"] for im in out["images"]} == {i: scores[i] for i in keep}
    assert out["annotations"] == [a for a in source["annotations"] if a["image_id"] in keep]
    assert out["info"]["image_filter"]["threshold_source"] == "given"
    assert out["info"]["image_filter"]["scorer"] == scorer.description
    assert json.loads(annotations.read_text()) == source  # the input is untouched
    assert "kept" in report.format()


def test_threshold_from_the_real_mean(scorer: AestheticScorer, shapes_dir: Path, tmp_path: Path) -> None:
    annotations, images, _ = _split(shapes_dir, "val")
    real_annotations, real_images, real_pictures = _split(shapes_dir, "train")
    report = filter_images(
        annotations,
        tmp_path / "out.json",
        scorer,
        images,
        real_annotations=real_annotations,
        real_images=real_images,
        progress=False,
    )
    assert report.threshold == pytest.approx(scorer.score(real_pictures).double().mean().item())
    assert real_annotations.name in report.threshold_source
    assert (
        json.loads((tmp_path / "out.json").read_text())["info"]["image_filter"]["threshold"]
        == report.threshold
    )


def test_refuses_bad_arguments(scorer: AestheticScorer, shapes_dir: Path, tmp_path: Path) -> None:
    annotations, images, _ = _split(shapes_dir, "val")
    real_annotations, real_images, _ = _split(shapes_dir, "train")
    with pytest.raises(ValueError, match="is the input file"):
        filter_images(annotations, annotations, scorer, images, 5.0, progress=False)
    with pytest.raises(ValueError, match="exactly one of threshold and real_annotations"):
        filter_images(annotations, tmp_path / "out.json", scorer, images, progress=False)
    with pytest.raises(ValueError, match="exactly one of threshold and real_annotations"):
        filter_images(
            annotations,
            tmp_path / "out.json",
            scorer,
            images,
            5.0,
            real_annotations,
            real_images,
            progress=False,
        )
    assert not (tmp_path / "out.json").exists()


def test_missing_or_mismatched_weights(weights: tuple[Path, Path], tmp_path: Path) -> None:
    clip, mlp = weights
    with pytest.raises(FileNotFoundError, match="pass its path as clip_weights"):
        AestheticScorer(tmp_path / "nope.pt", mlp, clip_model=_TINY)
    with pytest.raises(
        FileNotFoundError, match=r"sac\+logos\+ava1-l14-linearMSE\.pth.*pass its path as mlp_weights"
    ):
        AestheticScorer(clip, tmp_path / "nope.pth", clip_model=_TINY)
    torch.save(AestheticMLP(768).state_dict(), tmp_path / "l14.pth")
    with pytest.raises(ValueError, match=r"l14\.pth takes 768-d embeddings but clip_model .* gives 16-d"):
        AestheticScorer(clip, tmp_path / "l14.pth", clip_model=_TINY)


def test_filter_images_command(weights: tuple[Path, Path], shapes_dir: Path, tmp_path: Path, capsys) -> None:
    from detdiffusion.cli import main

    annotations, images, _ = _split(shapes_dir, "val")
    clip, mlp = weights
    args = [
        "filter-images",
        f"--annotations={annotations}",
        f"--images={images}",
        f"--out={tmp_path / 'o.json'}",
    ]
    main(
        [*args, f"--clip_weights={clip}", f"--mlp_weights={mlp}", f"--clip_model={_TINY}", "--threshold=-1e9"]
    )
    assert "kept 8 of 8 images" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"error: .*mlp_weights"):
        main([*args, f"--clip_weights={clip}", f"--mlp_weights={tmp_path / 'no.pth'}", "--threshold=0"])
