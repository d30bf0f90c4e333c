"""``detdiffusion predict``: a synthetic COCO dataset from a checkpoint, resumable, one per settings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detdiffusion.cli import main
from detdiffusion.generation import image_seed

GENERATE = Path(__file__).parents[1] / "conf" / "generate.yaml"


def predict(checkpoint: Path, out: Path, *args: str) -> dict:
    main(
        ["predict", "--config", str(GENERATE), f"--ckpt_path={checkpoint}", f"--data.output_dir={out}", *args]
    )
    return json.loads((out / "annotations.json").read_text())


def test_the_shipped_config_runs(checkpoint: Path, tmp_path: Path) -> None:
    shipped = Path(__file__).parents[2] / "experiments" / "shapes" / "generate.yaml"
    main(
        [
            "predict",
            "--config",
            str(shipped),
            f"--ckpt_path={checkpoint}",
            f"--data.output_dir={tmp_path / 'syn'}",
            "--data.init_args.shapes.num_train=4",
            "--data.init_args.shapes.num_val=4",
            "--data.limit=2",
            "--data.init_args.sampling.num_inference_steps=2",
        ]
    )
    coco = json.loads((tmp_path / "syn" / "annotations.json").read_text())
    assert len(coco["images"]) == 4 and coco["info"]["sampling"]["scheduler"] == "DPMSolverMultistepScheduler"


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_writes_a_coco_dataset_of_the_layouts(checkpoint: Path, tmp_path: Path) -> None:
    coco = predict(checkpoint, tmp_path / "syn", "--data.limit=3", "--data.strategy=hard")
    source = json.loads(Path(coco["info"]["layouts"]["path"]).read_text())
    assert len(coco["images"]) == 6  # 3 layouts × 2 samples
    assert [(i["source_image_id"], i["sample_index"]) for i in coco["images"]] == [
        (s["id"], k) for s in source["images"][:3] for k in (0, 1)
    ]
    for image in coco["images"]:
        assert image["is_synthetic"] and image["strategy"] == "hard"
        assert image["seed"] == image_seed(0, image["source_image_id"], image["sample_index"])
        assert (
            Image.open(tmp_path / "syn" / image["file_name"]).size
            == (32, 32)
            == (image["width"], image["height"])
        )
    # Every thing object of the layout, as drawn: pixel boxes of the 32 px image from the 32 px layout.
    things = {c["id"] for c in source["categories"] if c.get("isthing", 1)}
    by_source = {}
    for a in source["annotations"]:
        by_source.setdefault(a["image_id"], []).append(a)
    first = coco["images"][0]
    mine = [a for a in coco["annotations"] if a["image_id"] == first["id"]]
    theirs = by_source[first["source_image_id"]]
    assert [a["source_annotation_id"] for a in mine] == [a["id"] for a in theirs]
    for a, s in zip(mine, theirs, strict=True):
        assert a["category_id"] == s["category_id"]
        np.testing.assert_allclose(a["bbox"], s["bbox"], atol=1e-3)
        assert a["attribute"] == ("hard" if s["category_id"] in things else "background")
    assert coco["info"]["sampling"]["num_inference_steps"] == 2
    assert coco["info"]["model"]["checkpoint"] == str(checkpoint.resolve())


def test_a_killed_run_resumes_to_exactly_the_plan(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "syn"
    first = predict(checkpoint, out, "--data.limit=3")
    names = [i["file_name"] for i in first["images"]]
    before = {n: _pixels(out / n) for n in names}
    # A run killed mid-way: no merged JSON, two images gone, a torn record line at the end.
    (out / "annotations.json").unlink()
    (out / names[1]).unlink()
    (out / names[4]).unlink()
    shard = out / "records" / "rank0.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # sample 1 of layout 3: torn

    again = predict(checkpoint, out, "--data.limit=3", "--data.batch_size=1")
    assert again == first
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(Path(n).name for n in names)
    records = [json.loads(line) for line in shard.read_text().splitlines()]
    assert len(records) == len({(r["layout_id"], r["sample_index"]) for r in records}) + 2  # re-written ones
    for n in names:  # seeded per image: the same pixels whatever the batch
        assert np.abs(_pixels(out / n).astype(int) - before[n]).max() <= 1, n


def test_a_rerun_with_nothing_left_only_merges(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "syn"
    first = predict(checkpoint, out, "--data.limit=2")
    (out / "annotations.json").unlink()  # killed after the last image, before the merge
    assert predict(checkpoint, out, "--data.limit=2") == first
    assert (out / "records" / "rank0.jsonl").read_text().count("\n") == 4  # nothing generated again


def test_a_folder_of_another_run_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "syn"
    predict(checkpoint, out, "--data.limit=1")
    with pytest.raises(
        ValueError, match=r"holds another generation run's files \(strategy: 'origin' there, 'easy' here\)"
    ):
        predict(checkpoint, out, "--data.limit=1", "--data.strategy=easy")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"is not empty and has no generation\.json"):
        predict(checkpoint, other, "--data.limit=1")


def _layouts(tmp_path: Path, bbox: list[float], name: str = "circle") -> Path:
    path = tmp_path / "layouts.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 41, "file_name": "a.png", "width": 32, "height": 32}],
                "annotations": [{"id": 7, "image_id": 41, "category_id": 1, "bbox": bbox}],
                "categories": [{"id": 1, "name": name}],
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("bbox", "name", "message"),
    [
        (
            [20, 20, 20, 5],
            "circle",
            r"annotation id 7: layout \(image id\) 41: bbox \[20, 20, 20, 5\] .* outside the 32x32",
        ),
        ([5, 5, -2, 4], "circle", r"annotation id 7: layout \(image id\) 41: bbox"),
        (
            [5, 5, 4, 4],
            "zebra",
            r"layout \(image id\) 41, annotation id 7: class 'zebra' is not one the model",
        ),
    ],
)
def test_bad_layouts_name_the_layout(checkpoint: Path, tmp_path: Path, bbox, name, message) -> None:
    layouts = _layouts(tmp_path, bbox, name)
    with pytest.raises(ValueError, match=message):
        predict(checkpoint, tmp_path / "syn", f"--data.layouts={layouts}", "--data.shapes=null")


def test_hand_made_layouts_without_images_and_empty_layouts(checkpoint: Path, tmp_path: Path) -> None:
    layouts = _layouts(tmp_path, [4, 4, 10, 12])
    data = json.loads(layouts.read_text())
    data["images"].append({"id": 42, "file_name": "b.png", "width": 64, "height": 48})  # no objects
    layouts.write_text(json.dumps(data))
    coco = predict(
        checkpoint,
        tmp_path / "syn",
        f"--data.layouts={layouts}",
        "--data.shapes=null",
        "--data.resize_to_source=true",
    )
    assert [(i["source_image_id"], i["width"], i["height"]) for i in coco["images"]] == [
        (41, 32, 32),
        (41, 32, 32),
        (42, 64, 48),
        (42, 64, 48),
    ]
    assert Image.open(tmp_path / "syn" / coco["images"][2]["file_name"]).size == (64, 48)
    assert [a["bbox"] for a in coco["annotations"]] == [[4.0, 4.0, 10.0, 12.0]] * 2


def test_unknown_strategy_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--data\.strategy must be one of origin, easy, hard, got 'medium'"):
        predict(checkpoint, tmp_path / "syn", "--data.strategy=medium")


def _predict_ddp(checkpoint: Path, out: Path) -> dict:
    # DDP starts rank 1 by re-running the command line: the CLI must be the process's own.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "detdiffusion",
        "predict",
        "--config",
        str(GENERATE),
        f"--ckpt_path={checkpoint}",
    ]
    command += [f"--data.output_dir={out}", "--data.limit=5", "--trainer.devices=2", "--trainer.strategy=ddp"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, "\n".join(x for x in result.stderr.splitlines() if "[rank0]" not in x)[
        -4000:
    ]
    return json.loads((out / "annotations.json").read_text())


@pytest.mark.slow
def test_two_ranks_split_the_work_and_resume(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "syn"
    coco = _predict_ddp(checkpoint, out)
    assert len(coco["images"]) == 10 == len({i["file_name"] for i in coco["images"]})
    shards = sorted((out / "records").glob("rank*.jsonl"))
    assert [s.name for s in shards] == ["rank0.jsonl", "rank1.jsonl"]
    assert sum(s.read_text().count("\n") for s in shards) == 10  # no image made twice
    single = predict(checkpoint, tmp_path / "one", "--data.limit=5")
    assert [a["bbox"] for a in single["annotations"]] == [a["bbox"] for a in coco["annotations"]]
    for a, b in zip(single["images"], coco["images"], strict=True):
        pixels = np.abs(
            _pixels(tmp_path / "one" / a["file_name"]).astype(int) - _pixels(out / b["file_name"])
        )
        assert pixels.max() <= 1, a["file_name"]
    (out / "annotations.json").unlink()
    (out / coco["images"][3]["file_name"]).unlink()
    assert _predict_ddp(checkpoint, out) == coco
