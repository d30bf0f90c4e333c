"""CocoResultsDetector: COCO detection results JSON in, dataset-id detections out, bad files named."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from detdiffusion.data.coco import read_coco
from detdiffusion.data.shapes import SHAPES_FILTERS, shapes_paths
from detdiffusion.detectors import CocoResultsDetector, detect_dataset

#: Known detections: image id → (xyxy box, results category id, score), highest score first.
KNOWN = {
    1: [((10.0, 20.0, 30.0, 60.0), 1, 0.9), ((0.5, 1.5, 8.0, 9.0), 2, 0.4)],
    2: [((5.0, 5.0, 6.0, 6.0), 2, 0.75)],
}


def _write(tmp_path: Path, entries: Any, name: str = "results.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(entries))
    return path


def _results(known: dict = KNOWN) -> list[dict[str, Any]]:
    entries = []
    for image_id, dets in known.items():
        for (x0, y0, x1, y1), category_id, score in reversed(dets):  # file order is not score order
            entries.append(
                {
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": score,
                }
            )
    return entries


def _dummy(n: int) -> list[torch.Tensor]:
    return [torch.zeros(3, 4, 4)] * n


def test_round_trip_with_category_map(tmp_path: Path) -> None:
    detector = CocoResultsDetector(_write(tmp_path, _results()), category_map={1: 10, 2: 20, 3: 30})

    out = detector.detect(_dummy(3), [1, 2, 3])

    assert detector.detectable == {10, 20, 30}
    for image_id, detections in zip([1, 2], out, strict=False):
        expected = KNOWN[image_id]
        torch.testing.assert_close(detections["boxes"], torch.tensor([d[0] for d in expected]))
        torch.testing.assert_close(detections["scores"], torch.tensor([d[2] for d in expected]))
        assert detections["labels"].tolist() == [d[1] * 10 for d in expected]
        assert detections["labels"].dtype == torch.int64
    # Image 3 has no entries: no detections, with the right shapes and dtypes.
    assert out[2]["boxes"].shape == (0, 4) and out[2]["boxes"].dtype == torch.float32
    assert out[2]["scores"].shape == (0,) and out[2]["labels"].dtype == torch.int64


def test_identity_map_and_detectable(tmp_path: Path) -> None:
    path = _write(tmp_path, _results())

    assert CocoResultsDetector(path).detectable == {1, 2}
    assert CocoResultsDetector(path, detectable=[1, 2, 5]).detectable == {1, 2, 5}
    assert CocoResultsDetector(path).detect(_dummy(1), [2])[0]["labels"].tolist() == [2]
    with pytest.raises(ValueError, match=r"category ids 2 are not in detectable"):
        CocoResultsDetector(path, detectable=[1])


def test_returned_tensors_are_copies(tmp_path: Path) -> None:
    detector = CocoResultsDetector(_write(tmp_path, _results()))
    detector.detect(_dummy(1), [1])[0]["boxes"].zero_()
    assert detector.detect(_dummy(1), [1])[0]["boxes"].sum() > 0


def test_unknown_image_ids_are_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, _results())

    with pytest.raises(
        ValueError, match=rf"{re.escape(str(path))}: 1 image ids are not in the dataset \(2\)"
    ):
        CocoResultsDetector(path, image_ids={1, 3})
    detector = CocoResultsDetector(path, image_ids=[1, 2, 3])
    assert len(detector.detect(_dummy(1), [3])[0]["labels"]) == 0
    with pytest.raises(ValueError, match="image id 4 is not among the image_ids"):
        detector.detect(_dummy(1), [4])


def test_unknown_category_ids_are_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, _results())

    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: category ids 2 are not in category_map"):
        CocoResultsDetector(path, category_map={1: 10})
    detector = CocoResultsDetector(path, category_map={1: 10}, drop_categories=[2])
    assert detector.detect(_dummy(1), [1])[0]["labels"].tolist() == [10]
    assert len(detector.detect(_dummy(1), [2])[0]["labels"]) == 0


GOOD = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "score": 0.5}


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({k: v for k, v in GOOD.items() if k != "score"}, "missing key"),
        ({**GOOD, "bbox": [0, 0, 2]}, "bbox must be 4 finite numbers"),
        ({**GOOD, "bbox": [0, 0, "2", 2]}, "bbox must be 4 finite numbers"),
        ({**GOOD, "bbox": [0, 0, -1, 2]}, "bbox width and height must be >= 0"),
        ({**GOOD, "score": "high"}, "score must be a finite number"),
        ({**GOOD, "image_id": 1.5}, "image_id must be an integer"),
        ({**GOOD, "category_id": True}, "category_id must be an integer"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_malformed_entries(tmp_path: Path, entry: Any, match: str) -> None:
    path = _write(tmp_path, [GOOD, entry])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: entry 1: {match}"):
        CocoResultsDetector(path)


def test_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected a JSON list"):
        CocoResultsDetector(_write(tmp_path, {"annotations": []}))
    bad = tmp_path / "truncated.json"
    bad.write_text('[{"image_id": 1')
    with pytest.raises(ValueError, match=r"truncated\.json: not valid JSON"):
        CocoResultsDetector(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        CocoResultsDetector(tmp_path / "missing.json")


def test_empty_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="detdiffusion.detectors.results"):
        detector = CocoResultsDetector(_write(tmp_path, []), image_ids={1})

    assert "holds no detections" in caplog.text
    assert detector.detectable == frozenset()
    assert detector.detect(_dummy(1), [1])[0]["boxes"].shape == (0, 4)


def test_detect_dataset_reads_by_id(shapes_dir: Path, tmp_path: Path) -> None:
    paths = shapes_paths(shapes_dir)["val"]
    coco = read_coco(paths.annotations, paths.images, filters=SHAPES_FILTERS)
    record = coco.images[0]
    box = record.annotations[0].box
    entry = {
        "image_id": record.id,
        "category_id": record.annotations[0].category_id,
        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
        "score": 0.9,
    }
    detector = CocoResultsDetector(_write(tmp_path, [entry]), image_ids={r.id for r in coco.images})

    results = detect_dataset(detector, coco, batch_size=3, progress=False)

    assert list(results) == [r.id for r in coco.images]
    torch.testing.assert_close(results[record.id]["boxes"], torch.tensor([box], dtype=torch.float32))
    assert sum(len(d["labels"]) for d in results.values()) == 1
