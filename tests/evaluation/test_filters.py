"""Gen2Det's instance filter: keep synthetic objects a real-trained detector finds."""

import json
from pathlib import Path

import pytest
import torch

from detdiffusion.detectors.attributes import detected
from detdiffusion.evaluation.filters import filter_instances
from tests.detectors.fakes import EmptyDetector, GroundTruthDetector


def _stand_in(shapes_dir: Path) -> tuple[Path, Path]:
    from detdiffusion.data.shapes import shapes_paths

    val = shapes_paths(shapes_dir)["val"]
    return val.annotations, val.images


def test_found_objects_stay_and_missed_ones_go(shapes_dir: Path, tmp_path: Path) -> None:
    annotations, images = _stand_in(shapes_dir)
    source = json.loads(annotations.read_text())
    things = {c["id"] for c in source["categories"] if c["isthing"]}
    n_things = sum(a["category_id"] in things for a in source["annotations"])

    kept = filter_instances(
        annotations, tmp_path / "all.json", GroundTruthDetector(str(annotations)), images, progress=False
    )
    assert kept.dropped == 0 and kept.judged == n_things
    assert json.loads((tmp_path / "all.json").read_text())["annotations"] == source["annotations"]

    gone = filter_instances(
        annotations, tmp_path / "none.json", EmptyDetector(sorted(things)), images, progress=False
    )
    assert gone.dropped == n_things
    left = json.loads((tmp_path / "none.json").read_text())
    assert all(a["category_id"] not in things for a in left["annotations"])  # stuff is not judged
    assert left["info"]["instance_filter"]["dropped"] == n_things
    assert json.loads(annotations.read_text()) == source  # the input is untouched

    low = filter_instances(
        annotations,
        tmp_path / "low.json",
        GroundTruthDetector(str(annotations), score=0.05),
        images,
        progress=False,
    )
    assert low.dropped == n_things  # found, but scoring under 0.1


def test_thresholds_are_inclusive() -> None:
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    # IoU exactly 0.3: a 10x3 box inside the 10x10 one.
    dets = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 3.0]]),
        "scores": torch.tensor([0.1]),
        "labels": torch.tensor([1]),
    }
    assert detected(gt, torch.tensor([1]), dets, 0.1, 0.3, strict=False).tolist() == [True]
    assert detected(gt, torch.tensor([1]), dets, 0.1, 0.3, strict=True).tolist() == [False]
    assert detected(gt, torch.tensor([2]), dets, 0.1, 0.3, strict=False).tolist() == [False]  # other class


def test_refuses_to_overwrite_its_input(shapes_dir: Path) -> None:
    annotations, images = _stand_in(shapes_dir)
    with pytest.raises(ValueError, match="is the input file"):
        filter_instances(annotations, annotations, EmptyDetector([1]), images, progress=False)


def test_filter_instances_command(shapes_dir: Path, tmp_path: Path, capsys) -> None:
    from detdiffusion.cli import main

    annotations, images = _stand_in(shapes_dir)
    config = tmp_path / "detector.yaml"
    config.write_text(
        "class_path: tests.detectors.fakes.EmptyDetector\ninit_args: {detectable: [1, 2, 3, 4, 5]}\n"
    )
    out = tmp_path / "filtered.json"
    main(
        [
            "filter-instances",
            f"--annotations={annotations}",
            f"--images={images}",
            f"--detector={config}",
            f"--out={out}",
        ]
    )
    printed = capsys.readouterr().out
    assert "kept 0 of" in printed and str(out) in printed
    assert json.loads(out.read_text())["info"]["instance_filter"]["min_iou"] == 0.3
    with pytest.raises(SystemExit, match=r"error: --out .* is the input file"):
        main(
            [
                "filter-instances",
                f"--annotations={annotations}",
                f"--detector={config}",
                f"--out={annotations}",
            ]
        )
