"""Pre-processing (resize/normalize/pad), post-processing and predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import detr
from detr.processing.postprocess import postprocess, valid_sizes
from detr.processing.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocessor,
    resized_size,
    to_image_tensor,
)

from .conftest import COCO128
from .test_model import small_detr


@pytest.mark.parametrize(
    "hw, expected",
    [
        ((480, 640), (800, 1066)),  # short side to 800
        ((426, 640), (800, 1201)),
        ((500, 2000), (333, 1332)),  # long side capped: short = round(1333 * 500 / 2000), long = int(333 * 4)
        ((800, 1000), (800, 1000)),  # already there
        ((640, 480), (1066, 800)),
    ],
)
def test_resized_size_follows_reference_rounding(hw, expected):
    assert resized_size(*hw, 800, 1333) == expected


def test_preprocessor_sizes_mask_and_normalisation():
    images = [Image.new("RGB", (640, 480), (124, 116, 104)), np.zeros((300, 200, 3), dtype=np.uint8)]
    batch = ImagePreprocessor()(images)
    assert batch.pixel_values.shape == (2, 3, 1216, 1088)  # (max(800, 1200), max(1066, 800)) up to multiples of 32
    assert batch.image_sizes.tolist() == [[480, 640], [300, 200]]
    assert batch.resized_sizes.tolist() == [[800, 1066], [1200, 800]]
    assert (~batch.mask[0]).sum() == 800 * 1066 and (~batch.mask[1]).sum() == 1200 * 800
    assert valid_sizes(batch.mask).tolist() == batch.resized_sizes.tolist()
    # a mean-coloured image normalises to about zero; padding is exactly zero
    assert batch.pixel_values[0, :, :800, :1066].abs().max() < 0.01
    assert batch.pixel_values[0, :, 800:].abs().max() == 0


def test_image_conversions():
    rgba = Image.new("RGBA", (10, 8))
    assert to_image_tensor(rgba).shape == (3, 8, 10)
    assert to_image_tensor(np.zeros((8, 10), dtype=np.uint8)).shape == (3, 8, 10)
    assert to_image_tensor(torch.full((3, 4, 5), 255, dtype=torch.uint8)).max() == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\].*uint8"):
        to_image_tensor(torch.full((3, 4, 5), 255.0))
    with pytest.raises(TypeError, match="unsupported image type bytes: pass image file paths, PIL"):
        to_image_tensor(b"\xff\xd8")
    with pytest.raises(FileNotFoundError, match="image file not found: cat.jpg"):  # a str is a file path
        to_image_tensor("cat.jpg")
    with pytest.raises(ValueError, match=r"shape \(3, H, W\)"):
        to_image_tensor(torch.zeros(4, 5, 3))


def test_postprocess_scales_to_the_original_image_and_sorts():
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 0, 2] = 5.0  # confident class 2
    logits[0, 1, 0] = 1.0  # weak class 0: p = 0.38, "no object" more likely
    logits[0, 1, 3] = 1.5
    logits[0, 2, 3] = 5.0  # no object
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    (res,) = postprocess(logits, boxes, torch.tensor([[400, 600]]))
    assert res["labels"].tolist()[:2] == [2, 0]
    assert res["scores"][0] > res["scores"][1] > res["scores"][2]
    torch.testing.assert_close(res["boxes"][0], torch.tensor([150.0, 100.0, 450.0, 300.0]))
    torch.testing.assert_close(res["boxes"][1], torch.tensor([0.0, 0.0, 300.0, 200.0]))
    (top,) = postprocess(logits, boxes, torch.tensor([[400, 600]]), score_threshold=0.5, top_k=2)
    assert top["labels"].tolist() == [2]


def test_postprocess_clips_boxes_to_the_image():
    logits = torch.zeros(1, 2, 3)
    boxes = torch.tensor([[[0.1, 0.9, 0.4, 0.4], [0.5, 0.5, 1.0, 1.0]]])  # the first reaches past left and bottom
    (res,) = postprocess(logits, boxes, torch.tensor([[100, 200]]))
    by_query = {tuple(b) for b in res["boxes"].round().tolist()}
    assert by_query == {(0.0, 70.0, 60.0, 100.0), (0.0, 0.0, 200.0, 100.0)}


def test_postprocess_all_classes_scores_every_query_class_pair():
    logits = torch.log(torch.tensor([[[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]]))  # (1, 2 queries, 2 classes + none)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.1, 0.1]]])
    sizes = torch.tensor([[100, 200]])
    (best,) = postprocess(logits, boxes, sizes)
    (pairs,) = postprocess(logits, boxes, sizes, all_classes=True)
    torch.testing.assert_close(pairs["scores"], torch.tensor([0.7, 0.6, 0.3, 0.2]))
    assert pairs["labels"].tolist() == [1, 0, 1, 0]
    # each pair keeps its query's box; the best pair per query is the reference detection
    torch.testing.assert_close(pairs["boxes"][[0, 1]], best["boxes"])
    torch.testing.assert_close(pairs["boxes"][2], best["boxes"][1])
    # the cut keeps the best pairs over all queries and classes, not per query
    (cut,) = postprocess(logits, boxes, sizes, all_classes=True, top_k=3)
    torch.testing.assert_close(cut["scores"], torch.tensor([0.7, 0.6, 0.3]))
    assert postprocess(logits, boxes, sizes, top_k=3, all_classes=True)[0]["scores"].shape == (3,)


def test_predict_on_raw_images_gives_boxes_on_the_original_images():
    torch.manual_seed(0)
    model = small_detr(num_classes=3, num_queries=6, aux_loss=True)
    model.class_names = ["circle", "square", "star"]
    images = [Image.new("RGB", (200, 120)), np.zeros((90, 60, 3), dtype=np.uint8)]
    preprocessor = ImagePreprocessor(short_side=96, max_size=160)
    out = model.predict(images, k=4, preprocessor=preprocessor)
    assert model.training  # restored
    assert [len(o) for o in out] == [4, 4]
    # the boxes are the model's on the resized batch, scaled to the images as given (not as resized)
    batch = preprocessor(images)
    assert batch.resized_sizes.tolist() == [[96, 160], [144, 96]]
    with torch.no_grad():
        logits, boxes = model.eval()(batch.pixel_values, batch.mask)[-1]
    expected = postprocess(logits, boxes, torch.tensor([[120, 200], [90, 60]]), top_k=4)
    for dets, exp in zip(out, expected):
        assert [d["box"] for d in dets] == exp["boxes"].tolist()
        assert [d["score"] for d in dets] == exp["scores"].tolist()
        assert [d["class_name"] for d in dets] == [model.class_names[c] for c in exp["labels"].tolist()]


def test_predict_on_a_batch_uses_the_unpadded_region():
    torch.manual_seed(0)
    model = small_detr(num_classes=3, num_queries=6, aux_loss=False).eval()
    x = torch.randn(1, 3, 64, 96)
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[:, 40:, :] = True
    mask[:, :, 50:] = True
    (dets,) = model.predict(x, mask=mask, k=6)
    logits, boxes = model(x, mask)
    expected = postprocess(logits, boxes, torch.tensor([[40, 50]]))[0]
    assert [d["box"] for d in dets] == expected["boxes"].tolist()
    assert "class_name" not in dets[0]
    with pytest.raises(ValueError, match="mask is only used with a preprocessed"):
        model.predict([Image.new("RGB", (8, 8))], mask=mask)


@pytest.mark.skipif(not COCO128.exists(), reason="needs ../shared/datasets/coco128")
def test_predict_on_real_coco_images():
    model = detr.detr_r50(num_classes=91).eval()
    paths = sorted((COCO128 / "val2017").glob("*.jpg"))[:2]
    images = [Image.open(p) for p in paths]
    out = model.predict(images, k=5, preprocessor=ImagePreprocessor(short_side=256, max_size=400))
    for dets in out:
        assert len(dets) == 5
        for det in dets:
            assert det["class_name"] == detr.COCO_CLASS_NAMES[det["class_id"]]


def test_coco_class_names():
    assert len(detr.COCO_CLASS_NAMES) == 91 and detr.COCO_CLASS_NAMES[1] == "person"
    assert detr.COCO_CLASS_NAMES[12] == "N/A" and detr.COCO_CLASS_NAMES[90] == "toothbrush"
    if COCO128.exists():
        import json

        cats = json.loads((COCO128 / "annotations" / "instances_val2017.json").read_text())["categories"]
        assert {c["id"]: c["name"] for c in cats} == detr.COCO_CATEGORIES


@pytest.mark.skipif(not COCO128.exists(), reason="needs ../shared/datasets/coco128")
def test_pil_preprocessing_is_the_reference_pipeline():
    """Reference eval transform: PIL bilinear resize to 800/1333, to_tensor, ImageNet normalization."""
    from torchvision.transforms import functional as F1

    image = Image.open(sorted((COCO128 / "val2017").glob("*.jpg"))[0]).convert("RGB")
    h, w = resized_size(image.height, image.width, 800, 1333)
    expected = F1.normalize(F1.to_tensor(image.resize((w, h), Image.BILINEAR)), IMAGENET_MEAN, IMAGENET_STD)
    batch = ImagePreprocessor(size_divisor=1)(image)
    assert batch.pixel_values.shape[-2:] == (h, w) and not batch.mask.any()
    torch.testing.assert_close(batch.pixel_values[0], expected, atol=1e-6, rtol=0)


def test_evaluation_resizes_as_predict_does():
    """One resize rule, the reference code's rounding: 500 x 2000 becomes 333 x 1332 everywhere (torchvision's
    RandomShortestSize, which evaluation used before, makes it 333 x 1333)."""
    from torchvision import tv_tensors

    from detr.data.transforms import eval_transforms

    image = tv_tensors.Image(torch.zeros(3, 500, 2000, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0.0, 2000.0, 500.0]]), format="XYXY", canvas_size=(500, 2000))
    target = {"boxes": boxes, "labels": torch.tensor([0]), "image_id": 1, "orig_size": torch.tensor([500, 2000])}
    resized, out = eval_transforms(800, 1333)(image, target)
    batch = ImagePreprocessor(short_side=800, max_size=1333)(Image.new("RGB", (2000, 500)))
    assert tuple(resized.shape[1:]) == tuple(batch.resized_sizes[0].tolist()) == resized_size(500, 2000, 800, 1333)
    assert out["size"].tolist() == [333, 1332]
    torch.testing.assert_close(out["box"], torch.tensor([[0.5, 0.5, 1.0, 1.0]]))


def test_nms_removes_a_planted_duplicate_and_keeps_an_overlapping_object_of_another_class():
    probs = torch.tensor([[[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.7, 0.2]]])  # classes 0, 1, "no object"
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.51, 0.5, 0.4, 0.4], [0.5, 0.52, 0.4, 0.4]]])
    sizes = torch.tensor([[100, 100]])
    (plain,) = postprocess(probs.log(), boxes, sizes)
    (kept,) = postprocess(probs.log(), boxes, sizes, nms_iou=0.5)
    assert plain["labels"].tolist() == [0, 0, 1]  # DETR's own output: the duplicate is there
    assert kept["labels"].tolist() == [0, 1] and kept["scores"].tolist() == pytest.approx([0.9, 0.7])
    (loose,) = postprocess(probs.log(), boxes, sizes, nms_iou=0.99)  # nothing overlaps that much
    assert len(loose["labels"]) == 3
