"""Tiled prediction (detr.processing.tiling): the windows, the merge across window borders on hand-made
detections, and the whole path through a model, in PyTorch and as an exported ONNX file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import detr
from detr.processing.preprocess import ImagePreprocessor
from detr.processing.tiling import cut_by_window, merge_tiled_detections, predict_tiled, tile_windows

TINY = {
    "num_classes": 3, "num_queries": 6, "backbone_layers": 2, "d_model": 32, "nhead": 4, "num_encoder_layers": 1,
    "num_decoder_layers": 1, "dim_feedforward": 32, "pretrained_backbone": False, "aux_loss": False,
}  # fmt: skip


def test_windows_cover_the_image_with_the_overlap_asked_and_end_at_its_edges():
    windows = tile_windows(300, 500, tile=200, overlap=0.25)  # 2 rows x 3 columns of 200 x 200
    assert windows.tolist() == [
        [0, 0, 200, 200], [150, 0, 350, 200], [300, 0, 500, 200],
        [0, 100, 200, 300], [150, 100, 350, 300], [300, 100, 500, 300],
    ]  # fmt: skip
    # an image smaller than the tile along one side: one window that side, as large as the image
    assert tile_windows(100, 500, tile=200, overlap=0.0).tolist() == [[0, 0, 200, 100], [150, 0, 350, 100],
                                                                       [300, 0, 500, 100]]  # fmt: skip
    with pytest.raises(ValueError, match="overlap"):
        tile_windows(300, 500, tile=200, overlap=1.0)
    with pytest.raises(ValueError, match="tile must be"):
        tile_windows(300, 500, tile=8, overlap=0.2)


def _merge(detections, windows, height, width, **thresholds):
    """detections: (box xyxy image pixels, score, class, window index) -> merged, as predict_tiled merges."""
    boxes = torch.tensor([d[0] for d in detections], dtype=torch.float32)
    window_ids = torch.tensor([d[3] for d in detections])
    return merge_tiled_detections(
        boxes,
        torch.tensor([d[1] for d in detections]),
        torch.tensor([d[2] for d in detections]),
        window_ids,
        torch.tensor(windows),
        (height, width),
        **thresholds,
    )


# two windows side by side over a 100 x 180 image, sharing x 80..100
SIDE_BY_SIDE = [[0, 0, 100, 100], [80, 0, 180, 100]]


def test_an_object_across_a_border_comes_out_as_one_box_the_whole_one():
    # an object at x 70..95: the left window sees it whole; the right window sees its piece 80..95 (cut)
    found = _merge([([70, 20, 95, 40], 0.6, 1, 0), ([80, 21, 95, 40], 0.9, 1, 1)], SIDE_BY_SIDE, 100, 180)
    assert found["boxes"].tolist() == [[70, 20, 95, 40]]  # the whole box, though the piece scored higher
    assert found["scores"].tolist() == pytest.approx([0.9]) and found["labels"].tolist() == [1]
    # a smaller piece of a longer object: IoU 15 / 45 = 0.33, but in the shared strip x 80..100 they coincide
    pieces = [([50, 20, 95, 40], 0.6, 1, 0), ([80, 20, 95, 40], 0.9, 1, 1)]
    assert _merge(pieces, SIDE_BY_SIDE, 100, 180)["boxes"].tolist() == [[50, 20, 95, 40]]
    # the same boxes from windows that share nothing (a detection outside its window: never merged)
    assert len(_merge(pieces, [[0, 0, 60, 100], [80, 0, 180, 100]], 100, 180)["boxes"]) == 2
    # of another class, or from the same window: two objects
    assert (
        len(_merge([([70, 20, 95, 40], 0.6, 1, 0), ([80, 20, 95, 40], 0.9, 2, 1)], SIDE_BY_SIDE, 100, 180)["boxes"])
        == 2
    )
    assert (
        len(_merge([([70, 20, 95, 40], 0.6, 1, 0), ([71, 20, 95, 40], 0.9, 1, 0)], SIDE_BY_SIDE, 100, 180)["boxes"])
        == 2
    )


def test_an_object_no_window_sees_whole_is_the_union_of_its_pieces():
    # an object at x 50..130 is wider than the 20 px overlap: each window holds a cut piece of it (IoU 0.23,
    # intersection over the smaller 0.39: neither would join them)
    found = _merge([([50, 30, 100, 60], 0.7, 0, 0), ([80, 31, 130, 61], 0.8, 0, 1)], SIDE_BY_SIDE, 100, 180)
    assert found["boxes"].tolist() == [[50, 30, 130, 61]] and found["members"].tolist() == [2]
    assert found["cut"].tolist() == [True, True]
    # with a strict threshold the two pieces (IoU 0.94 in the strip: their y differ by 1 px) stay two
    assert len(_merge([([50, 30, 100, 60], 0.7, 0, 0), ([80, 31, 130, 61], 0.8, 0, 1)], SIDE_BY_SIDE, 100, 180,
                      merge_iou=0.95)["boxes"]) == 2  # fmt: skip


def test_an_object_across_a_corner_of_four_windows_comes_out_as_one_box():
    # four 100 x 100 windows over a 180 x 180 image, overlapping by 20 px both ways; an object at 75..105
    # in x and y, wider than the overlap: every window holds a piece of it, each cut by the window's edge
    windows = [[0, 0, 100, 100], [80, 0, 180, 100], [0, 80, 100, 180], [80, 80, 180, 180]]
    pieces = [
        ([75, 75, 100, 100], 0.5, 2, 0),
        ([80, 75, 105, 100], 0.8, 2, 1),
        ([75, 80, 100, 105], 0.6, 2, 2),
        ([80, 80, 105, 105], 0.7, 2, 3),
    ]
    found = _merge(pieces, windows, 180, 180)
    assert found["boxes"].tolist() == [[75, 75, 105, 105]]
    assert found["scores"].tolist() == pytest.approx([0.8]) and found["members"].tolist() == [4]


def test_two_touching_objects_of_one_class_stay_two():
    # two objects side by side at x 60..85 and 85..110, across the border: the left window sees the first
    # whole and the second cut at 100; the right window sees the second whole and the first cut at 80
    detections = [
        ([60, 20, 85, 40], 0.9, 1, 0),
        ([85, 20, 100, 40], 0.6, 1, 0),
        ([80, 20, 85, 40], 0.5, 1, 1),
        ([85, 20, 110, 40], 0.8, 1, 1),
    ]
    found = _merge(detections, SIDE_BY_SIDE, 100, 180)
    assert sorted(found["boxes"].tolist()) == [[60, 20, 85, 40], [85, 20, 110, 40]]
    assert found["scores"].tolist() == pytest.approx([0.9, 0.8])


def test_a_box_is_cut_only_by_window_edges_inside_the_image():
    windows = torch.tensor([[0, 0, 100, 100], [0, 0, 100, 100], [80, 0, 180, 100]], dtype=torch.float32)
    boxes = torch.tensor([[0, 0, 20, 20], [90, 10, 99, 20], [150, 50, 180, 100]], dtype=torch.float32)
    # the image's own edges cut nothing; x 99 is within 2 px of the inner edge at 100
    assert cut_by_window(boxes, windows, 100, 180, margin=2.0).tolist() == [False, True, False]


class ShiftedBoxes:
    """A fake model: each window's detections are the objects it holds (whole or cut by its edges), from a
    list of objects in image pixels; checks that predict_tiled offsets, merges and caps them."""

    def __init__(self, objects):
        self.objects = objects  # (x0, y0, x1, y1, class, score)
        self.preprocessing = ImagePreprocessor(short_side=None, max_size=None, size_divisor=1)
        self.class_names = ["a", "b", "c"]
        self.windows = []

    def predict(self, batch, k, score_threshold, nms, classes):
        found = []
        for size in batch.image_sizes.tolist():
            x0, y0 = self.windows.pop(0)
            dets = []
            for ox0, oy0, ox1, oy1, label, score in self.objects:
                box = [max(ox0 - x0, 0), max(oy0 - y0, 0), min(ox1 - x0, size[1]), min(oy1 - y0, size[0])]
                if box[2] > box[0] and box[3] > box[1]:
                    dets.append({"box": box, "score": score, "class_id": label})
            found.append(sorted(dets, key=lambda d: -d["score"])[:k])
        return found


def test_predict_tiled_maps_boxes_back_merges_and_caps():
    objects = [
        (30, 30, 60, 50, 0, 0.9),
        (185, 40, 215, 60, 1, 0.8),
        (190, 150, 210, 170, 1, 0.7),
        (280, 230, 299, 260, 2, 0.6),
    ]
    model = ShiftedBoxes(objects)
    model.windows = [tuple(w[:2]) for w in tile_windows(300, 400, 200, 0.25).tolist()]
    found = predict_tiled(model, torch.zeros(3, 300, 400, dtype=torch.uint8), tile=200, overlap=0.25, batch_size=4)
    assert [(d["box"], d["class_name"]) for d in found[0]] == [
        ([30, 30, 60, 50], "a"), ([185, 40, 215, 60], "b"), ([190, 150, 210, 170], "b"), ([280, 230, 299, 260], "c")
    ]  # fmt: skip
    model.windows = [tuple(w[:2]) for w in tile_windows(300, 400, 200, 0.25).tolist()]
    capped = predict_tiled(model, torch.zeros(3, 300, 400, dtype=torch.uint8), tile=200, overlap=0.25, max_detections=2)
    assert [d["score"] for d in capped[0]] == pytest.approx([0.9, 0.8])


def _tiny_model(seed: int = 0) -> detr.DETR:
    torch.manual_seed(seed)
    model = detr.detr_r18(**TINY).eval()
    model.preprocessing = ImagePreprocessor(short_side=64, max_size=64)
    return model


def _image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_model_predict_with_tiles_gives_up_to_k_per_window_and_refuses_what_it_cannot_do():
    model = _tiny_model()
    image = _image(150, 200)
    windows = len(tile_windows(150, 200, 64, 0.2))
    found = model.predict(image, k=6, tile=64, tile_overlap=0.2)[0]
    assert 6 < len(found) <= 6 * windows  # more than the 6 queries of one pass
    assert all(0 <= d["box"][0] <= d["box"][2] <= 200 and 0 <= d["box"][1] <= d["box"][3] <= 150 for d in found)
    assert len(model.predict(image, tile=64, tile_full_image=True, max_detections=5)[0]) == 5
    # the inference copy tiles the same way
    fast = model.optimize_for_inference()
    same = fast.predict(image, k=6, tile=64, tile_overlap=0.2)[0]
    assert len(same) == len(found)
    assert np.allclose([d["box"] for d in same], [d["box"] for d in found], atol=1e-2)
    with pytest.raises(ValueError, match="raw images"):
        model.predict(model.preprocessing(image), tile=64)
    masks = detr.detr_r18(**TINY, masks=True).eval()
    with pytest.raises(ValueError, match="boxes only"):
        masks.predict(image, tile=64)


def test_tiling_an_onnx_export_gives_the_pytorch_detections(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from detr.deploy.export import export_onnx
    from detr.deploy.runtime import load_exported

    model = _tiny_model(seed=1)
    with torch.no_grad():  # a clear best query per object: scores spread, not all near 1 / (K + 1)
        model.class_head.bias.normal_(0, 2.0)
    path = export_onnx(model, tmp_path / "tiny.onnx", height=64, width=64)
    exported = load_exported(path)
    image = _image(160, 200, seed=3)
    ours = model.predict(image, tile=64, tile_overlap=0.25, tile_full_image=True)[0]
    theirs = exported.predict(image, tile=64, tile_overlap=0.25, tile_full_image=True)[0]
    assert len(ours) == len(theirs) > 6
    assert [d["class_id"] for d in ours] == [d["class_id"] for d in theirs]
    assert np.allclose([d["score"] for d in ours], [d["score"] for d in theirs], atol=1e-4)
    assert np.allclose([d["box"] for d in ours], [d["box"] for d in theirs], atol=0.05)  # pixels


def test_detr_predict_tile_writes_the_tiled_detections(tmp_path):
    import json

    from detr.cli import main

    model = _tiny_model(seed=2)
    model.save_pretrained(tmp_path / "model")
    _image(150, 220, seed=4).save(tmp_path / "large.png")
    args = ["predict", str(tmp_path / "large.png"), "--weights", str(tmp_path / "model"), "--threshold", "0",
            "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(args + ["--out", str(tmp_path / "tiled"), "--tile", "64", "--tile-overlap", "0.25"]) == 0
    found = json.loads((tmp_path / "tiled" / "detections.json").read_text())
    (dets,) = found.values()
    expected = model.predict(Image.open(tmp_path / "large.png"), tile=64, tile_overlap=0.25)[0]
    assert len(dets) == len(expected) > 6  # more than one pass's 6 queries
    assert np.allclose([d["box"] for d in dets], [d["box"] for d in expected], atol=1e-2)
    assert main(args + ["--out", str(tmp_path / "capped"), "--tile", "64", "--max-detections", "4"]) == 0
    assert len(next(iter(json.loads((tmp_path / "capped" / "detections.json").read_text()).values()))) == 4
    with pytest.raises(SystemExit, match="go with --tile"):
        main(args + ["--out", str(tmp_path / "x"), "--max-detections", "4"])


def test_coco_scores_more_than_100_detections_an_image_when_asked():
    from detr.engine.evaluate import coco_evaluate

    # one image with 150 objects in a grid, each found exactly, scored 1.0 down to 0.5 in a line
    boxes = [[20.0 * (i % 15), 20.0 * (i // 15), 10.0, 10.0] for i in range(150)]
    ground_truth = {
        "images": [{"id": 1, "width": 300, "height": 200}],
        "categories": [{"id": 1, "name": "dot"}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b} for i, b in enumerate(boxes)],
    }
    results = [{"image_id": 1, "category_id": 1, "bbox": b, "score": 1.0 - i / 300} for i, b in enumerate(boxes)]
    # COCO's 100 find 100 of 150: precision 1 to recall 0.667, so 67 of the 101 recall points: AP 67 / 101
    assert coco_evaluate(ground_truth, results)["AP"] == pytest.approx(67 / 101)
    everything = coco_evaluate(ground_truth, results, max_detections=200)
    assert everything["AP"] == pytest.approx(1.0) and everything["AP50"] == pytest.approx(1.0)
    assert everything["AR100"] == pytest.approx(1.0)  # recall at the cap asked


def test_detr_eval_tile_scores_the_merged_detections_of_large_images(tmp_path):
    import json

    from detr.cli import main
    from detr.data.synthetic import SynthConfig, make_dataset

    # three 240 x 180 images of 20-40 shapes of 6-16 px: small objects on a large image, for a 64 px model
    config = SynthConfig(image_size=240, image_height=180, min_objects=20, max_objects=40, min_size=6 / 240,
                         max_size=16 / 240, max_overlap=0.1, classes=("circle", "square", "triangle"))  # fmt: skip
    make_dataset(tmp_path / "data", train=1, val=3, seed=5, config=config)
    model = _tiny_model(seed=3)
    model.class_names, model.category_ids = ["circle", "square", "triangle"], [1, 2, 3]
    model.save_pretrained(tmp_path / "model")
    base = ["eval", "--data", str(tmp_path / "data"), "--weights", str(tmp_path / "model"), "--workers", "0",
            "--device", "cpu"]  # fmt: skip
    assert main(base + ["--tile", "64", "--max-detections", "500", "--out", str(tmp_path / "tiled.json")]) == 0
    tiled = json.loads((tmp_path / "tiled.json").read_text())
    assert set(tiled["metrics"]) >= {"AP", "AP50", "APs"}
    per_image: dict[int, list] = {}
    for r in tiled["predictions"]:
        per_image.setdefault(r["image_id"], []).append(r)
    assert len(per_image) == 3 and all(len(found) > 6 for found in per_image.values())  # over one pass's 6 queries
    # what was scored is the model's tiled prediction of the image file
    info = json.loads((tmp_path / "data" / "annotations" / "instances_val.json").read_text())["images"][0]
    expected = model.predict(Image.open(tmp_path / "data" / "val" / info["file_name"]), k=6, tile=64)[0]
    scored = sorted(per_image[info["id"]], key=lambda r: -r["score"])
    assert len(scored) == len(expected)
    assert np.allclose([r["bbox"][:2] for r in scored], [d["box"][:2] for d in expected], atol=1e-2)
    assert [r["category_id"] for r in scored] == [d["class_id"] + 1 for d in expected]
    assert main(base + ["--out", str(tmp_path / "whole.json")]) == 0  # untiled: one pass, at most 6 an image
    whole = json.loads((tmp_path / "whole.json").read_text())["predictions"]
    assert max(sum(r["image_id"] == i for r in whole) for i in per_image) <= 6
