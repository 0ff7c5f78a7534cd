"""Masks as data: exact synthetic masks, COCO polygons and RLE, through the augmentation, and training with them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import detr
from detr.data import CocoDetection, train_transforms
from detr.data.coco import DatasetError
from detr.data.synthetic import ALL_SHAPES, SynthConfig, make_dataset, make_image, make_image_with_masks

from .conftest import tiny_train_config

SHAPES = SynthConfig(image_size=64, max_objects=3, min_size=0.25, max_size=0.6, masks=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("masks") / "d", train=16, val=8, seed=0, config=SHAPES)


def test_synthetic_masks_are_exact_and_leave_the_images_unchanged():
    plain, boxes = make_image(random.Random(3), SHAPES)
    image, objects, masks = make_image_with_masks(random.Random(3), SHAPES)
    assert np.array_equal(np.asarray(plain), np.asarray(image)) and boxes == objects  # same random stream
    assert len(masks) == len(objects) >= 1
    drawn = np.zeros((64, 64), dtype=int)
    for (box, _), mask in zip(objects, masks):
        ys, xs = np.nonzero(mask)
        if len(ys):  # every visible pixel lies in the object's box
            assert xs.min() >= box[0] and xs.max() < box[2] and ys.min() >= box[1] and ys.max() < box[3]
        drawn += mask
    assert drawn.max() == 1  # visible parts never overlap: a later shape hides what it covers
    squares = random.Random(0)
    config = SynthConfig(image_size=48, min_objects=1, max_objects=1, classes=("square",), masks=True)
    _, [(box, _)], [mask] = make_image_with_masks(squares, config)
    x0, y0, x1, y1 = (int(v) for v in box)
    expected = np.zeros((48, 48), dtype=bool)
    expected[y0:y1, x0:x1] = True  # a lone square covers its box exactly
    assert np.array_equal(mask, expected)


@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_every_shape_touches_the_four_sides_of_its_box(shape):
    """A lone object's box is the tight box of its drawn pixels, for every shape (the box annotation is
    the box it was drawn in: a shape that fell short of a side would be boxed too loosely)."""
    config = SynthConfig(image_size=64, min_objects=1, max_objects=1, classes=(shape,), masks=True)
    for seed in range(4):
        _, [(box, _)], [mask] = make_image_with_masks(random.Random(seed), config)
        ys, xs = np.nonzero(mask)
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == [int(v) for v in box], (shape, seed)


def test_coco_masks_follow_their_boxes_through_the_augmentation(data):
    annotations = json.loads((data / "annotations" / "instances_train.json").read_text())
    first = annotations["annotations"][0]
    assert isinstance(first["segmentation"]["counts"], str) and first["area"] < first["bbox"][2] * first["bbox"][3] + 1
    torch.manual_seed(0)
    dataset = CocoDetection(data, "train", train_transforms([48, 64], 96, [40, 56], (32, 60)), masks=True)
    for i in range(len(dataset)):
        image, target = dataset[i]
        masks, boxes = target["masks"], target["box"]
        assert masks.dtype == torch.bool and masks.shape == (len(boxes), *image.shape[-2:])
        height, width = image.shape[-2:]
        for mask, (cx, cy, w, h) in zip(masks, boxes.tolist()):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            if len(ys) == 0:
                continue
            # resize (nearest) and crop move masks with their boxes: the mask stays inside its box
            assert xs.min() >= (cx - w / 2) * width - 1.5 and xs.max() <= (cx + w / 2) * width + 1.5
            assert ys.min() >= (cy - h / 2) * height - 1.5 and ys.max() <= (cy + h / 2) * height + 1.5


def _coco(tmp_path: Path, segmentation, name: str = "bad.json") -> Path:
    from PIL import Image

    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 10], "segmentation": segmentation}
        ],
    }
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_polygons_and_rle_decode_and_bad_ones_are_refused_by_name(tmp_path):
    square = [[10, 5, 30, 5, 30, 15, 10, 15]]
    dataset = CocoDetection(_coco(tmp_path, square, "poly.json"), images=tmp_path / "images", masks=True)
    mask = dataset[0][1]["masks"][0]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert 10 <= xs.min() <= 11 and 29 <= xs.max() <= 30 and 5 <= ys.min() <= 6 and 14 <= ys.max() <= 15
    # uncompressed RLE, column-major runs: 30 rows of column 0 off, then 30 on (column 1), the rest off
    rle = {"size": [30, 40], "counts": [30, 30, 30 * 38]}
    dataset = CocoDetection(_coco(tmp_path, rle, "rle.json"), images=tmp_path / "images", masks=True)
    expected = torch.zeros(30, 40, dtype=torch.bool)
    expected[:, 1] = True
    assert torch.equal(dataset[0][1]["masks"][0], expected)
    with pytest.raises(DatasetError, match=r"bad.json: annotation 7 \(image a.png\) has a polygon with 2.0 points"):
        CocoDetection(_coco(tmp_path, [[1, 2, 3, 4]]), images=tmp_path / "images", masks=True)
    with pytest.raises(DatasetError, match=r"annotation 7 .* RLE mask of size \[40, 30\] but the image is 30x40"):
        CocoDetection(_coco(tmp_path, {"size": [40, 30], "counts": "abc"}), images=tmp_path / "images", masks=True)
    with pytest.raises(DatasetError, match="1 annotations .* have no 'segmentation'; training masks needs one"):
        CocoDetection(_coco(tmp_path, None), images=tmp_path / "images", masks=True)
    CocoDetection(_coco(tmp_path, None), images=tmp_path / "images")  # boxes only: no mask needed


def test_training_with_masks_saves_a_mask_model(data, tmp_path):
    from detr.engine import Trainer

    masks_model = dict(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=32)
    config = tiny_train_config(
        data, tmp_path / "run", size=64, masks=True, max_steps=3, log_every=1, model_kwargs=masks_model
    )
    summary = Trainer(config).fit()
    assert summary["steps"] == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    terms = [r for r in log if "loss_mask" in r]
    assert terms and all(r["loss_mask"] > 0 and r["loss_dice"] > 0 for r in terms)
    model = detr.from_pretrained(tmp_path / "run" / "final")
    assert isinstance(model, detr.DETRSegmentation) and model.class_names == [
        "circle",
        "square",
        "triangle",
        "cross",
        "ring",
    ]
    from PIL import Image

    found = model.predict(Image.open(next((data / "val").iterdir())), k=2)[0]
    assert found[0]["mask"].shape == (64, 64)
    from detr.cli import main

    assert (
        main(
            [
                "eval",
                "--data",
                str(data),
                "--weights",
                str(tmp_path / "run" / "final"),
                "--out",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "e.json").read_text())["metrics"]
    assert 0 <= metrics["masks"]["AP"] <= 1 and "AP50" in metrics["masks"]  # mask AP beside the box AP
    out = tmp_path / "pred"
    assert main(["predict", str(data / "val"), "--weights", str(tmp_path / "run" / "final"), "--out", str(out),
                 "--threshold", "0", "--k", "2", "--no-progress"]) == 0  # fmt: skip
    first = next(iter(json.loads((out / "detections.json").read_text()).values()))[0]
    from pycocotools import mask as mask_utils

    rle = dict(first["segmentation"], counts=first["segmentation"]["counts"].encode())
    assert mask_utils.decode(rle).shape == (64, 64)  # each detection's mask, as COCO RLE
    assert "segmentation" in json.loads((out / "results.coco.json").read_text())[0]
    assert len(list(out.glob("*_detections.png"))) == 8


class _Oracle(torch.nn.Module):
    """A stand-in mask model that outputs the ground truth of each image (as the loader gives it), its
    masks at full input resolution, optionally shifted right by ``shift`` pixels."""

    def __init__(self, shift: int = 0) -> None:
        super().__init__()
        self.shift = shift
        self.targets: list = []

    def decode_with_masks(self, images, mask):
        batch, _, height, width = images.shape
        queries, classes = 6, 5
        logits = torch.full((batch, queries, classes + 1), -10.0)
        logits[:, :, -1] = 10.0  # unused queries: "no object"
        boxes = torch.full((batch, queries, 4), 0.5)
        masks = torch.full((batch, queries, height, width), -10.0)
        for b, target in enumerate(self.targets[:batch]):
            for q, (label, box, gt) in enumerate(zip(target["class_id"], target["box"], target["masks"])):
                logits[b, q, label], logits[b, q, -1] = 10.0, -10.0
                boxes[b, q] = box
                h, w = gt.shape
                masks[b, q, :h, :w] = torch.where(gt.roll(self.shift, dims=1), 10.0, -10.0)
        self.targets = self.targets[batch:]
        return logits, boxes, masks


def test_mask_ap_is_pycocotools_segm_on_the_masks_in_original_pixels(data):
    from torch.utils.data import DataLoader

    from detr.data import collate, eval_transforms
    from detr.engine.evaluate import coco_evaluate, predict_masks

    dataset = CocoDetection(data, "val", eval_transforms(64, 96), masks=True)
    results = {}
    for shift in (0, 3):
        oracle = _Oracle(shift)
        oracle.targets = [dataset[i][1] for i in range(len(dataset))]
        loader = DataLoader(dataset, batch_size=3, collate_fn=collate)
        found = predict_masks(oracle, loader, dataset.category_ids)
        results[shift] = coco_evaluate(dataset.annotations.raw, found, iou_type="segm")
    assert results[0]["AP"] == pytest.approx(1.0)  # the ground truth itself, back in the original pixels
    assert results[3]["AP"] < 0.9  # masks 3 px off: pycocotools measures it


def test_panoptic_synth_and_its_coco_panoptic_files(tmp_path):
    from PIL import Image

    from detr.data.panoptic import find_panoptic, read_panoptic

    config = SynthConfig(image_size=48, max_objects=3, masks=True, stuff=("sky", "ground"))
    make_dataset(tmp_path / "p", train=2, val=3, seed=1, config=config)
    found = find_panoptic(tmp_path / "p", "val")
    assert found == (
        tmp_path / "p" / "annotations" / "panoptic_val.json",
        tmp_path / "p" / "annotations" / "panoptic_val",
    )
    annotations = read_panoptic(*found)
    assert annotations.things == {1, 2, 3, 4, 5} and annotations.stuffs == {6, 7}
    instances = json.loads((tmp_path / "p" / "annotations" / "instances_val.json").read_text())
    for image in instances["images"]:
        ids, segments = annotations.segment_map(image["file_name"])
        assert ids.shape == (48, 48) and ids.min() >= 1  # every pixel is a thing or one of the two stuffs
        for segment in segments:  # areas as the PNG has them
            assert (ids == segment["id"]).sum() == segment["area"]
        things = [s for s in segments if s["category_id"] <= 5]
        masks = [a for a in instances["annotations"] if a["image_id"] == image["id"] and a["area"] > 0]
        assert sorted(s["area"] for s in things) == sorted(int(a["area"]) for a in masks)  # the instance masks
    # a PNG whose ids the JSON does not list: the error names the PNG
    png = found[1] / "val_00000.png"
    pixels = np.asarray(Image.open(png)).copy()
    pixels[0, 0] = (77, 0, 0)
    Image.fromarray(pixels).save(png)
    with pytest.raises(
        DatasetError, match=r"val_00000.png holds segment ids \[77\] that panoptic_val.json does not list"
    ):
        annotations.segment_map("val_00000.jpg")


def test_training_on_panoptic_annotations_takes_every_segment_as_an_object(tmp_path):
    from detr.engine import Trainer
    from detr.engine.splits import dataset_splits

    config_data = SynthConfig(
        image_size=64, max_objects=3, min_size=0.25, max_size=0.6, masks=True, stuff=("sky", "ground")
    )
    data = make_dataset(tmp_path / "p", train=8, val=4, seed=2, config=config_data)
    tiny = {"d_model": 32, "nhead": 4, "num_encoder_layers": 1, "num_decoder_layers": 1, "dim_feedforward": 32}
    config = tiny_train_config(
        data, tmp_path / "run", size=64, panoptic=True, max_steps=2, log_every=1, model_kwargs=tiny
    )
    train, _ = dataset_splits(config)
    dataset = CocoDetection(train, masks=True)
    assert dataset.class_names == ["circle", "square", "triangle", "cross", "ring", "sky", "ground"]
    for i in range(len(dataset)):
        _, target = dataset[i]
        masks = target["masks"]
        assert masks.sum(0).eq(1).all()  # things and stuff tile the image: each pixel in exactly one segment
        labels = target["labels"].tolist()
        assert 5 in labels or 6 in labels  # the stuff regions are objects too
    summary = Trainer(config).fit()
    assert summary["steps"] == 2
    model = detr.from_pretrained(tmp_path / "run" / "final")
    assert model.class_names[-2:] == ["sky", "ground"] and isinstance(model, detr.DETRSegmentation)
    from detr.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", "--data", str(data), "--weights", str(tmp_path / "run" / "final"), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics["panoptic"]) >= {"PQ", "SQ", "RQ", "PQ_th", "PQ_st"} and "masks" in metrics
    missing = tiny_train_config(tmp_path / "nothing", tmp_path / "r2", panoptic=True)
    with pytest.raises(FileNotFoundError):
        dataset_splits(missing)


class _PanopticOracle:
    """Returns each image's ground-truth panoptic segmentation (by its size, in order), in model class ids."""

    def __init__(self, answers):
        self.answers = list(answers)

    def panoptic(self, image, is_thing, threshold, preprocessor):
        ids, segments = self.answers.pop(0)
        return [{"segmentation": torch.from_numpy(ids), "segments_info": segments}]


def test_panoptic_evaluation_maps_classes_to_categories(tmp_path):
    from detr.data.panoptic import find_panoptic, read_panoptic
    from detr.engine.panoptic_eval import evaluate_panoptic

    config = SynthConfig(image_size=48, max_objects=3, masks=True, stuff=("sky", "ground"))
    data = make_dataset(tmp_path / "p", train=1, val=3, seed=4, config=config)
    annotations = read_panoptic(*find_panoptic(data, "val"))
    dataset = CocoDetection(data, "val")
    # the model's class k is category k + 1: the oracle answers in class ids
    answers = []
    for info in dataset.images:
        ids, segments = annotations.segment_map(info["file_name"])
        answers.append((ids, [{"id": s["id"], "label_id": s["category_id"] - 1, "score": 1.0} for s in segments]))
    category_of = [1, 2, 3, 4, 5, 6, 7]
    perfect = evaluate_panoptic(_PanopticOracle(answers), annotations, dataset.images, dataset.image_dir, category_of)
    assert perfect["PQ"] == pytest.approx(1.0) and perfect["PQ_st"] == pytest.approx(1.0)
    swapped = [1, 2, 3, 4, 5, 7, 6]  # sky and ground exchanged: stuff all wrong
    wrong = evaluate_panoptic(_PanopticOracle(answers), annotations, dataset.images, dataset.image_dir, swapped)
    assert wrong["PQ_st"] == 0.0 and wrong["PQ_th"] == pytest.approx(1.0)
