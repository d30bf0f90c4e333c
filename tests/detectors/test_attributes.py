import hashlib
import json
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from detdiffusion.cli import main
from detdiffusion.data.coco import read_coco
from detdiffusion.data.shapes import SHAPES_FILTERS, shapes_paths
from detdiffusion.detectors.attributes import INFO_KEY, assign_attributes, label_attributes
from detdiffusion.layout.types import Attribute
from tests.detectors.fakes import EmptyDetector, GroundTruthDetector

EASY, HARD, BACKGROUND = Attribute.EASY, Attribute.HARD, Attribute.BACKGROUND


def _dets(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


GT_BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0], [0.0, 0.0, 64.0, 64.0]])
GT_LABELS = torch.tensor([1, 2, 101])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- assign_attributes --------------------------------------------------------------------------


def test_ground_truth_detections_make_things_easy_and_stuff_background() -> None:
    dets = _dets(GT_BOXES[:2].tolist(), [1.0, 1.0], [1, 2])
    stuff = torch.tensor([False, False, True])
    assert assign_attributes(GT_BOXES, GT_LABELS, dets, {1, 2}, stuff) == [EASY, EASY, BACKGROUND]


def test_no_detections_make_detectable_classes_hard() -> None:
    dets = _dets([], [], [])
    assert assign_attributes(GT_BOXES, GT_LABELS, dets, {1, 2}) == [HARD, HARD, BACKGROUND]


def test_stuff_is_background_even_when_detected_and_detectable() -> None:
    dets = _dets(GT_BOXES.tolist(), [1.0] * 3, [1, 2, 101])
    stuff = torch.tensor([False, False, True])
    assert assign_attributes(GT_BOXES, GT_LABELS, dets, {1, 2, 101}, stuff) == [EASY, EASY, BACKGROUND]
    assert assign_attributes(GT_BOXES, GT_LABELS, dets, {1, 2, 101}) == [EASY, EASY, EASY]


def test_classes_the_detector_cannot_detect_are_background() -> None:
    dets = _dets(GT_BOXES.tolist(), [1.0] * 3, [1, 2, 101])
    assert assign_attributes(GT_BOXES, GT_LABELS, dets, {1}) == [EASY, BACKGROUND, BACKGROUND]


def test_a_prediction_of_another_class_does_not_match() -> None:
    dets = _dets([[0, 0, 10, 10]], [1.0], [2])
    assert assign_attributes(GT_BOXES[:1], GT_LABELS[:1], dets, {1, 2}) == [HARD]


@pytest.mark.parametrize(
    ("score", "expected"),
    [(0.5, HARD), (0.50001, EASY), (0.49, HARD)],
    ids=["score_equal_gamma_dropped", "just_above", "below"],
)
def test_score_threshold_is_strict(score, expected) -> None:
    dets = _dets([[0, 0, 10, 10]], [score], [1])
    assert assign_attributes(GT_BOXES[:1], GT_LABELS[:1], dets, {1}, gamma=0.5) == [expected]


@pytest.mark.parametrize(
    ("y1", "expected"),
    [(5.0, HARD), (5.001, EASY), (4.9, HARD)],
    ids=["iou_equal_beta_no_match", "just_above", "below"],
)
def test_iou_threshold_is_strict(y1, expected) -> None:
    dets = _dets([[0, 0, 10, y1]], [1.0], [1])  # IoU with the 10x10 box = y1 / 10
    assert assign_attributes(GT_BOXES[:1], GT_LABELS[:1], dets, {1}, beta=0.5) == [expected]


def test_thresholds_are_configurable_and_checked() -> None:
    dets = _dets([[0, 0, 10, 3]], [0.3], [1])  # IoU 0.3, score 0.3
    assert assign_attributes(GT_BOXES[:1], GT_LABELS[:1], dets, {1}, gamma=0.2, beta=0.2) == [EASY]
    with pytest.raises(ValueError, match="gamma must be in"):
        assign_attributes(GT_BOXES[:1], GT_LABELS[:1], dets, {1}, gamma=1.5)
    assert assign_attributes(torch.zeros(0, 4), torch.zeros(0), dets, {1}) == []


def test_vectorised_matches_a_brute_force_double_loop() -> None:
    g = torch.Generator().manual_seed(0)

    def boxes(n):
        xy = torch.rand(n, 2, generator=g) * 50
        wh = torch.rand(n, 2, generator=g) * 30 + 1
        return torch.cat([xy, xy + wh], dim=1)

    for _ in range(50):
        n, m = int(torch.randint(0, 12, (1,), generator=g)), int(torch.randint(0, 12, (1,), generator=g))
        gt, gl = boxes(n), torch.randint(1, 5, (n,), generator=g)
        stuff = torch.rand(n, generator=g) < 0.2
        det = {
            "boxes": torch.cat([boxes(m), gt[: m // 2] + torch.rand(min(m // 2, n), 4, generator=g)])
            if n
            else boxes(m),
            "scores": torch.rand(m + (min(m // 2, n) if n else 0), generator=g),
        }
        det["labels"] = torch.randint(1, 5, (len(det["scores"]),), generator=g)
        detectable = {1, 2, 3}
        expected = []
        for i in range(n):
            if int(gl[i]) not in detectable or bool(stuff[i]):
                expected.append(BACKGROUND)
                continue
            easy = False
            for j in range(len(det["scores"])):
                iou = float(box_iou(gt[i : i + 1].double(), det["boxes"][j : j + 1].double()))
                if float(det["scores"][j]) > 0.4 and int(det["labels"][j]) == int(gl[i]) and iou > 0.3:
                    easy = True
            expected.append(EASY if easy else HARD)
        assert assign_attributes(gt, gl, det, detectable, stuff, gamma=0.4, beta=0.3) == expected


# --- label_attributes ---------------------------------------------------------------------------


@pytest.fixture
def shapes_train(shapes_dir):
    return shapes_paths(shapes_dir)["train"]


def test_label_attributes_writes_every_annotation_and_leaves_the_input_alone(shapes_train, tmp_path) -> None:
    ann, images = shapes_train.annotations, shapes_train.images
    before = _sha(ann)
    out = tmp_path / "labelled.json"
    report = label_attributes(ann, images, GroundTruthDetector(str(ann)), out, batch_size=5, progress=False)
    assert _sha(ann) == before
    src, data = json.loads(ann.read_text()), json.loads(out.read_text())
    things = {c["id"] for c in src["categories"] if c["isthing"]}
    assert len(data["annotations"]) == len(src["annotations"]) == report.annotations
    for a_in, a_out in zip(src["annotations"], data["annotations"], strict=True):
        assert {k: v for k, v in a_out.items() if k != "attribute"} == a_in  # every field kept
        assert a_out["attribute"] == ("easy" if a_in["category_id"] in things else "background")
    assert data["images"] == src["images"] and data["categories"] == src["categories"]
    info = data["info"][INFO_KEY]
    assert info["gamma"] == info["beta"] == 0.5 and info["detector"] == "GroundTruthDetector(score=1.0)"
    assert info["totals"]["hard"] == 0 and info["totals"]["easy"] > 0 and info["totals"]["background"] > 0
    assert report.images == len(src["images"])

    # Deterministic: a second run writes the same bytes.
    first = _sha(out)
    label_attributes(ann, images, GroundTruthDetector(str(ann)), out, batch_size=3, progress=False)
    assert _sha(out) == first

    # read_coco reads the attributes back.
    coco = read_coco(out, images, filters=SHAPES_FILTERS)
    read = {a.attribute for r in coco.images for a in r.annotations}
    assert read == {EASY, BACKGROUND}

    text = report.format()
    assert "circle" in text and "sky" in text and "total" in text
    png = report.plot(tmp_path / "plot.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_detector_that_finds_nothing_makes_things_hard(shapes_train, tmp_path) -> None:
    ann, images = shapes_train.annotations, shapes_train.images
    out = tmp_path / "hard.json"
    report = label_attributes(ann, images, EmptyDetector(range(1, 100)), out, progress=False)
    totals = report.totals()
    assert totals["easy"] == 0 and totals["hard"] > 0 and totals["background"] > 0
    coco = read_coco(out, images, filters=SHAPES_FILTERS)
    assert {a.attribute for r in coco.images for a in r.annotations} == {HARD, BACKGROUND}


def test_invalid_boxes_are_skipped_and_counted(shapes_train, tmp_path) -> None:
    data = json.loads(shapes_train.annotations.read_text())
    data["annotations"][0]["bbox"][2] = 0
    data["annotations"][0]["attribute"] = "easy"  # a stale label must not survive
    data["annotations"][1]["iscrowd"] = 1
    src = tmp_path / "in.json"
    src.write_text(json.dumps(data))
    out = tmp_path / "out.json"
    report = label_attributes(src, shapes_train.images, EmptyDetector([1]), out, progress=False)
    written = json.loads(out.read_text())["annotations"]
    assert "attribute" not in written[0] and all("attribute" in a for a in written[1:])
    assert report.skipped_invalid_box == 1 and report.crowd == 1
    assert report.annotations == len(written) - 1


def test_refuses_to_overwrite_the_input(shapes_train, tmp_path) -> None:
    ann = shapes_train.annotations
    with pytest.raises(ValueError, match="is the input annotation file"):
        label_attributes(ann, shapes_train.images, EmptyDetector([1]), ann, progress=False)
    link = tmp_path / "link.json"
    link.symlink_to(ann)
    with pytest.raises(ValueError, match="is the input annotation file"):
        label_attributes(ann, shapes_train.images, EmptyDetector([1]), link, progress=False)


def test_image_size_must_match_the_json(shapes_train, tmp_path) -> None:
    data = json.loads(shapes_train.annotations.read_text())
    image = data["images"][0]
    image["width"] += 1
    for a in data["annotations"]:  # its RLE masks carry the size too; read_coco would catch those first
        if a["image_id"] == image["id"]:
            a.pop("segmentation", None)
    src = tmp_path / "in.json"
    src.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"image id {image['id']}\): the file is 64x64 but .* give 65x64"):
        label_attributes(src, shapes_train.images, EmptyDetector([1]), tmp_path / "out.json", progress=False)
    assert not (tmp_path / "out.json").exists()


# --- CLI ----------------------------------------------------------------------------------------


def test_attributes_command_end_to_end(shapes_train, tmp_path, capsys) -> None:
    ann = shapes_train.annotations
    config = tmp_path / "detector.yaml"
    config.write_text(
        f"class_path: tests.detectors.fakes.GroundTruthDetector\ninit_args:\n  annotations: {ann}\n"
    )
    out = tmp_path / "labels" / "train_attr.json"
    args = ["attributes", "--annotations", str(ann), "--images", str(shapes_train.images)]
    main([*args, "--detector", str(config), "--out", str(out), "--batch_size", "4"])
    printed = capsys.readouterr().out
    assert "Attributes (score > 0.5, IoU > 0.5)" in printed and "circle" in printed and "100.0%" in printed
    assert (tmp_path / "labels" / "train_attr_attributes.png").is_file()
    info = json.loads(out.read_text())["info"][INFO_KEY]
    assert "GroundTruthDetector" in info["detector"]

    with pytest.raises(SystemExit, match=r"error: .*is the input annotation file"):
        main([*args, "--detector", str(config), "--out", str(ann)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("class_path: tests.detectors.fakes.Nope\n")
    with pytest.raises(SystemExit, match=r"(?s)error: --detector .*bad\.yaml: .*Nope"):
        main([*args, "--detector", str(bad), "--out", str(out)])
    with pytest.raises(SystemExit, match=r"error: --detector .*missing\.yaml: file not found"):
        main([*args, "--detector", str(tmp_path / "missing.yaml"), "--out", str(out)])
