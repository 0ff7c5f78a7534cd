"""detr predict's engine: batches that do not change detections, the inference path, class filter,
ground truth drawn, on real coco128 images of many sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import detr
from detr.cli import main
from detr.data.coco import read_image
from detr.engine.predict import ground_truth_by_name, predict_files
from detr.processing.postprocess import postprocess
from detr.processing.preprocess import ImagePreprocessor

from .conftest import TINY_MODEL, calibrate_frozen_bn, needs_coco128

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128"
NAMES = ["person", "car", "dog", "cat"]
SMALL = ImagePreprocessor(short_side=64, max_size=96)


@pytest.fixture(scope="module")
def images() -> list[Path]:
    if not COCO128.is_dir():
        pytest.skip("coco128 is not at ../shared/datasets/coco128")
    return sorted((COCO128 / "val2017").glob("*.jpg"))[:10]


@pytest.fixture(scope="module")
def model(images) -> detr.DETR:
    torch.manual_seed(0)
    model = detr.detr_r18(num_classes=4, num_queries=8, class_names=NAMES, **TINY_MODEL).eval()
    calibrate_frozen_bn(model, SMALL([read_image(p) for p in images[:4]]).pixel_values)
    return model


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    return model.save_pretrained(tmp_path_factory.mktemp("m") / "model")


def _assert_same(a: list[dict], b: list[dict], atol: float = 1e-4) -> None:
    assert [d["class_id"] for d in a] == [d["class_id"] for d in b]
    torch.testing.assert_close(torch.tensor([d["score"] for d in a]), torch.tensor([d["score"] for d in b]), atol=atol, rtol=0)
    torch.testing.assert_close(torch.tensor([d["box"] for d in a]), torch.tensor([d["box"] for d in b]), atol=atol * 100, rtol=0)


def test_batches_give_the_detections_of_one_image_at_a_time(model, images):
    fast = model.optimize_for_inference()
    sizes = []
    predict = fast.predict

    def counting(batch, **kw):
        sizes.append(len(batch))
        return predict(batch, **kw)

    fast.predict = counting
    one = {r.index: r.detections for r in predict_files(fast, images, SMALL, batch_size=1, k=8)}
    sizes_one, sizes[:] = list(sizes), []
    four = {r.index: r.detections for r in predict_files(fast, images, SMALL, batch_size=4, k=8)}
    assert set(sizes_one) == {1} and max(sizes) > 1  # batching did happen (images of one resized size)
    assert sorted(one) == sorted(four) == list(range(len(images)))
    for i, path in enumerate(images):
        _assert_same(four[i], one[i])
        # the inference path gives what the model's own predict gives
        _assert_same(four[i], model.predict([read_image(path, exif=True)], k=8, preprocessor=SMALL)[0])
        assert len(four[i]) == 8 and {d["class_name"] for d in four[i]} <= set(NAMES)


def test_inference_predict_takes_raw_images_and_class_filters(model, images):
    fast = model.optimize_for_inference()
    raw = [read_image(p) for p in images[:3]]
    everything = model.predict(raw, k=8, preprocessor=SMALL)
    dogs = fast.predict(raw, k=8, preprocessor=SMALL, classes=["dog"])
    assert any(d["class_name"] != "dog" for per in everything for d in per)  # the filter has something to remove
    for per_all, per_dog in zip(everything, dogs, strict=True):
        _assert_same(per_dog, [d for d in per_all if d["class_name"] == "dog"])
    assert model.predict(raw, k=8, preprocessor=SMALL, classes=[2]) == model.predict(
        raw, k=8, preprocessor=SMALL, classes=["dog"]
    )
    with pytest.raises(ValueError, match="no class named 'wolf'; the model's classes: person, car, dog, cat"):
        fast.predict(raw, classes=["wolf"])
    with pytest.raises(ValueError, match="class id 7 is out of range"):
        model.predict(raw, classes=[7])


def test_class_filter_keeps_k_of_the_classes_asked_for():
    logits = torch.full((1, 4, 3), -9.0)
    for query, (label, logit) in enumerate([(0, 5.0), (0, 4.0), (1, 3.0), (1, 2.0)]):
        logits[0, query, label] = logit
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 4])
    (kept,) = postprocess(logits, boxes, torch.tensor([[10, 10]]), top_k=2, classes=[1])
    assert kept["labels"].tolist() == [1, 1]  # not the two better class-0 detections, then nothing
    assert kept["scores"][0] > kept["scores"][1]


def test_detr_predict_batch_size_classes_and_ground_truth(saved, images, tmp_path, capsys):
    base = ["predict", *map(str, images), "--weights", str(saved), "--size", "64", "--max-size", "96", "--k", "8"]
    base += ["--threshold", "0", "--no-progress"]
    assert main([*base, "--batch-size", "1", "--out", str(tmp_path / "one")]) == 0
    assert main([*base, "--batch-size", "4", "--out", str(tmp_path / "four")]) == 0
    one = json.loads((tmp_path / "one" / "detections.json").read_text())
    four = json.loads((tmp_path / "four" / "detections.json").read_text())
    assert list(four) == list(one) == list(map(str, images))  # the inputs' order
    for key in one:
        _assert_same(four[key], one[key])

    annotations = COCO128 / "annotations" / "instances_val2017.json"
    capsys.readouterr()
    assert main([*base, "--classes", "dog,cat", "--show-gt", str(annotations), "--out", str(tmp_path / "dc")]) == 0
    assert f"ground truth (white) drawn for {len(images)} of {len(images)} images" in capsys.readouterr().out
    filtered = json.loads((tmp_path / "dc" / "detections.json").read_text())
    for key in one:
        assert {d["class_name"] for d in filtered[key]} <= {"dog", "cat"}
    drawn = Image.open(tmp_path / "dc" / f"{images[0].stem}_detections.png")
    plain = Image.open(tmp_path / "one" / f"{images[0].stem}_detections.png")
    assert drawn.size[0] == plain.size[0]
    # white ground-truth boxes: many more pure-white pixels than without them
    white = lambda im: int((np.asarray(im.convert("RGB")) == 255).all(-1).sum())  # noqa: E731
    assert white(drawn) > white(plain) + 100
    with pytest.raises(SystemExit, match="--classes: no class named 'wolf'"):
        main([*base, "--classes", "wolf", "--out", str(tmp_path / "w")])


@needs_coco128
def test_ground_truth_by_file_name_from_a_dataset_folder():
    truth = ground_truth_by_name(COCO128)
    data = json.loads((COCO128 / "annotations" / "instances_val2017.json").read_text())
    image = data["images"][0]
    boxes = [a for a in data["annotations"] if a["image_id"] == image["id"] and not a.get("iscrowd")]
    assert len(truth[image["file_name"]]) == len(boxes) > 0
    x, y, w, h = boxes[0]["bbox"]
    assert truth[image["file_name"]][0]["box"] == pytest.approx([x, y, x + w, y + h], abs=1e-3)
    assert len(truth) == 256  # train and val


def test_prediction_writer_writes_the_files_of_detr_predict_from_python(tmp_path):
    """detr predict's files without the command: results added in any order land in the inputs' order, COCO results
    name the model's category ids and numeric file names' image ids, unreadable inputs go to skipped.json."""
    from detr.engine.outputs import PredictionWriter
    from detr.engine.predict import ImagePrediction

    paths = [tmp_path / "in" / "000000000042.jpg", tmp_path / "in" / "sub" / "cat.png", tmp_path / "in" / "bad.jpg"]
    image = Image.new("RGB", (100, 50))
    dog = {"box": [10.0, 5.0, 30.0, 25.0], "score": 0.9, "class_id": 1, "class_name": "dog"}
    writer = PredictionWriter(tmp_path / "out", paths, category_ids=[3, 18], yolo_labels=True)
    writer.add(ImagePrediction(1, paths[1], image, []))
    writer.add(ImagePrediction(2, paths[2], error="cannot identify image file"))
    writer.add(ImagePrediction(0, paths[0], image, [dog]))
    report = writer.finish()
    out = tmp_path / "out"
    assert report == {str(paths[0]): [dog], str(paths[1]): []}
    assert list(json.loads((out / "detections.json").read_text())) == [str(paths[0]), str(paths[1])]
    assert json.loads((out / "results.coco.json").read_text()) == [
        {"image_id": 42, "category_id": 18, "bbox": [10.0, 5.0, 20.0, 20.0], "score": 0.9, "file_name": str(paths[0])}
    ]
    assert (out / "labels" / "000000000042.txt").read_text() == "1 0.200000 0.300000 0.200000 0.400000 0.90000\n"
    assert (out / "labels" / "sub__cat.txt").read_text() == ""
    assert json.loads((out / "skipped.json").read_text()) == {str(paths[2]): "cannot identify image file"}
    assert sorted(p.name for p in out.glob("*.png")) == ["000000000042_detections.png", "sub__cat_detections.png"]
