import json
import subprocess
import sys

import pytest

from detdiffusion.cli import main


def test_shapes_command_writes_a_coco_dataset(tmp_path, capsys) -> None:
    main(
        ["shapes", "--out", str(tmp_path / "ds"), "--train", "6", "--val", "2", "--size", "32", "--seed", "3"]
    )
    data = json.loads((tmp_path / "ds" / "annotations" / "instances_train.json").read_text())
    assert len(data["images"]) == 6 and data["annotations"]
    assert {c["isthing"] for c in data["categories"]} == {0, 1}
    assert "--annotations" in capsys.readouterr().out


def test_inspect_data_prints_counts_and_draws_samples(shapes_dir, tmp_path, capsys) -> None:
    ann = shapes_dir / "annotations" / "instances_train.json"
    main(
        [
            "inspect-data",
            "--annotations",
            str(ann),
            "--images",
            str(shapes_dir / "train"),
            "--out",
            str(tmp_path / "out"),
            "--filters.min_objects",
            "1",
            "--filters.max_objects",
            "null",
            "--grid.h_bins",
            "8",
            "--grid.w_bins",
            "8",
            "--num_samples",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert "Objects per class" in out and "Prompt tokens" in out and "Prompts over 77 tokens: 0" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["filter_report"]["images_in"] == 24
    assert summary["objects_per_class"]["sky"]["kind"] == "stuff"
    assert summary["objects_per_class"]["circle"]["kind"] == "thing"
    assert summary["tokens_per_object"]["min"] == 6  # "(circle, <l><l>)," with no attribute
    from PIL import Image

    assert Image.open(tmp_path / "out" / "samples.png").size[0] > 256


def test_inspect_data_defaults_to_the_shapes(capsys) -> None:
    main(["inspect-data"])
    assert "images, " in capsys.readouterr().out


def test_user_data_mistakes_exit_with_a_message_not_a_traceback(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    (tmp_path / "img").mkdir()
    with pytest.raises(SystemExit, match=r"error: .*bad\.json: not valid JSON at line 1"):
        main(["inspect-data", "--annotations", str(bad), "--images", str(tmp_path / "img")])
    with pytest.raises(SystemExit, match="go together"):
        main(["inspect-data", "--annotations", str(bad)])


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "detdiffusion", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "shapes" in result.stdout and "inspect-data" in result.stdout
