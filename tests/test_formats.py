"""Datasets in the formats people have: YOLO and Pascal VOC read as COCO, converted, checked, trained on."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from detr.cli import main
from detr.data import CocoDetection, DatasetError
from detr.data.convert import convert
from detr.data.synthetic import SynthConfig, make_dataset
from detr.engine import Trainer

from .conftest import COCO128, tiny_train_config


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("d"), train=8, val=4, seed=7, config=SynthConfig(image_size=32, max_objects=2)
    )


def coco128_as_ultralytics(root: Path) -> Path:
    """coco128's images and its YOLO labels in the Ultralytics layout (links, nothing copied)."""
    for split in ("train2017", "val2017"):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "images" / split).symlink_to(COCO128 / split)
        (root / "labels" / split).symlink_to(COCO128 / "yolo_labels" / split)
    shutil.copy(COCO128 / "yolo_labels" / "data.yaml", root / "data.yaml")
    return root


def worst_difference(mine: list, theirs: list) -> float:
    """Largest coordinate difference when each box of ``theirs`` is paired with the closest unpaired box of
    the same class in ``mine`` (the order of objects within an image is not kept by every format)."""
    left, worst = list(mine), 0.0
    for name, *box in theirs:
        candidates = [b for b in left if b[0] == name]
        assert candidates, f"no {name} box left"
        best = min(candidates, key=lambda b: max(abs(u - v) for u, v in zip(b[1:], box)))
        worst = max(worst, max(abs(u - v) for u, v in zip(best[1:], box)))
        left.remove(best)
    assert not left, "boxes without a match"
    return worst


def boxes_by_image(coco: dict) -> dict[int, list]:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out: dict[int, list] = {}
    for ann in coco["annotations"]:
        out.setdefault(ann["image_id"], []).append((names[ann["category_id"]], *ann["bbox"]))
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.skipif(not COCO128.exists(), reason="needs ../shared/datasets/coco128")
def test_coco128_in_its_yolo_form_converts_back_to_its_coco_annotations(tmp_path, capsys):
    yolo = coco128_as_ultralytics(tmp_path / "yolo")
    assert main(["convert", str(yolo), "--out", str(tmp_path / "coco")]) == 0
    assert "train: 128 images, 929 boxes" in capsys.readouterr().out
    for split, name in (("train", "train2017"), ("val", "val2017")):
        ours = json.loads((tmp_path / "coco" / split / "_annotations.coco.json").read_text())
        truth = json.loads((COCO128 / "annotations" / f"instances_{name}.json").read_text())
        assert {i["id"] for i in ours["images"]} == {i["id"] for i in truth["images"]}  # image ids kept
        assert [c["name"] for c in ours["categories"]] == [
            c["name"] for c in sorted(truth["categories"], key=lambda c: c["id"])
        ]
        mine, theirs = boxes_by_image(ours), boxes_by_image(truth)
        assert mine.keys() == theirs.keys()
        for image_id, boxes in theirs.items():
            assert worst_difference(mine[image_id], boxes) < 1.0, (split, image_id)
        assert (tmp_path / "coco" / split / ours["images"][0]["file_name"]).is_file()
    # nothing is written over
    assert main(["convert", str(yolo), "--out", str(tmp_path / "coco")]) == 2
    assert "is not empty" in capsys.readouterr().err


def fit(data: Path, out: Path) -> dict:
    return Trainer(tiny_train_config(data, out, max_steps=2)).fit()


def test_a_yolo_dataset_trains_and_evaluates(shapes, tmp_path):
    yolo = tmp_path / "yolo"
    convert(shapes, yolo, to="yolo")
    assert (yolo / "data.yaml").is_file() and len(list((yolo / "labels" / "train").glob("*.txt"))) == 8
    # Ultralytics resolves a relative "path:" against its working directory, not the file's folder: none is
    # written, so that it reads the splits beside data.yaml from wherever it runs
    assert "path" not in yaml.safe_load((yolo / "data.yaml").read_text())
    summary = fit(yolo, tmp_path / "run")
    assert summary["steps"] == 2 and "AP" in summary["metrics"]
    ds = CocoDetection(yolo, "val")
    assert ds.format == "yolo" and ds.class_names == ["circle", "square", "triangle", "cross", "ring"]
    # and back: the boxes survive both conversions within a pixel
    convert(yolo, tmp_path / "back", to="coco")
    again = boxes_by_image(json.loads((tmp_path / "back" / "val" / "_annotations.coco.json").read_text()))
    first = boxes_by_image(json.loads((shapes / "annotations" / "instances_val.json").read_text()))
    assert again.keys() == first.keys()
    for image_id, boxes in first.items():  # boxes that reached past the border come back clipped to it
        clipped = [
            (n, max(x, 0), max(y, 0), min(x + w, 32) - max(x, 0), min(y + h, 32) - max(y, 0)) for n, x, y, w, h in boxes
        ]
        assert worst_difference(again[image_id], clipped) < 1.0, image_id


def write_voc(shapes: Path, root: Path, difficult_first: bool = True) -> Path:
    """The synthetic dataset as Pascal VOC, written here by hand (XML per image, 1-based inclusive boxes)."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        coco = json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        ids = []
        for info in coco["images"]:
            voc_id = Path(info["file_name"]).stem
            ids.append(voc_id)
            shutil.copy(shapes / split / info["file_name"], root / "JPEGImages" / f"{voc_id}.jpg")
            objects = ""
            for k, ann in enumerate(a for a in coco["annotations"] if a["image_id"] == info["id"]):
                x, y, w, h = ann["bbox"]
                difficult = int(difficult_first and k == 0 and split == "train")
                objects += (
                    f"<object><name>{names[ann['category_id']]}</name><difficult>{difficult}</difficult><bndbox>"
                    f"<xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + w - 1 + 1}</xmax><ymax>{y + h - 1 + 1}</ymax>"
                    "</bndbox></object>"
                )
            (root / "Annotations" / f"{voc_id}.xml").write_text(
                f"<annotation><filename>{voc_id}.jpg</filename><size><width>{info['width']}</width>"
                f"<height>{info['height']}</height><depth>3</depth></size>{objects}</annotation>"
            )
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_a_pascal_voc_dataset_trains_and_evaluates(shapes, tmp_path):
    voc = write_voc(shapes, tmp_path / "VOCdevkit" / "VOC2012")
    train = CocoDetection(tmp_path / "VOCdevkit", "train")  # found inside its VOCdevkit
    assert train.format == "voc" and train.annotations.ignored_crowd == 8  # "difficult": ignored like crowds
    first = boxes_by_image(json.loads((shapes / "annotations" / "instances_val.json").read_text()))
    val = CocoDetection(voc, "val")
    mine = boxes_by_image(val.annotations.raw)
    assert mine.keys() == first.keys() and all(worst_difference(mine[i], first[i]) < 1e-6 for i in first)
    summary = fit(tmp_path / "VOCdevkit", tmp_path / "run")
    assert summary["steps"] == 2 and "AP" in summary["metrics"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 0.5 0.5 0.2", r"labels/train/.*:2: expected 'class cx cy w h' \(or a polygon\), got 4 numbers"),
        ("zero 0.5 0.5 0.2 0.2", r":2: expected 'class cx cy w h' numbers, got 'zero 0.5 0.5 0.2 0.2'"),
        ("9 0.5 0.5 0.2 0.2", r":2: class 9 is not one of the 5 classes in 'names' \(0..4\)"),
        ("1 30 20 10 10", r":2: box \[30.0, 20.0, 10.0, 10.0\] is not normalized to \[0, 1\]"),
    ],
)
def test_bad_yolo_label_lines_name_the_file_and_line(shapes, tmp_path, line, message):
    yolo = tmp_path / "yolo"
    convert(shapes, yolo, to="yolo")
    label = sorted((yolo / "labels" / "train").glob("*.txt"))[0]
    label.write_text(label.read_text().splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(DatasetError, match=message):
        CocoDetection(yolo, "train")


def test_check_data_counts_and_draws(shapes, tmp_path, capsys):
    assert main(["check-data", str(shapes), "--plot", str(tmp_path / "d.png")]) == 0
    out = capsys.readouterr().out
    train = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    assert (
        re.search(rf"^train +8 +{len(train['annotations'])} +5 ", out, re.M)
        and (tmp_path / "d.png").stat().st_size > 10_000
    )
