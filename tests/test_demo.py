"""A shortened `detr demo` end to end, and its artefacts."""

from __future__ import annotations

import json

import torch
from PIL import Image
from torch.utils.data import DataLoader

from detr import DETR
from detr.data import CocoDetection, collate, eval_transforms
from detr.demo import run_demo
from detr.engine import predict_dataset


def test_short_demo_writes_every_artefact(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out, minutes=2, steps=12, train_images=48, val_images=16)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    assert set(metrics["metrics"]) >= {"AP", "AP50", "AP75"}
    assert metrics["steps"] == 12
    evaluations = [
        r for r in map(json.loads, (out / "run" / "log.jsonl").read_text().splitlines()) if r.get("type") == "eval"
    ]
    assert len(evaluations) >= 3  # a validation curve, not one dot
    with Image.open(metrics["paths"]["curves"]) as png:
        assert png.format == "PNG" and png.size == (1100, 400)
    with Image.open(metrics["paths"]["predictions"]) as png:
        assert png.format == "PNG" and png.size == (4 * 256, 3 * 256)  # 12 images of 64 px drawn 4x, 4 per row

    # the saved model reloads and predicts the boxes the trained model predicted at the end of training
    model = DETR.from_pretrained(metrics["paths"]["model"])
    assert model.class_names == ["circle", "square", "triangle"]
    val = CocoDetection(out / "data", "val", eval_transforms(64, 96))
    loader = DataLoader(val, batch_size=4, collate_fn=collate)
    again = predict_dataset(model, loader, val.category_ids, all_classes=True)  # as the demo evaluates
    before = json.loads((out / "run" / "predictions_val.json").read_text())
    assert len(again) == len(before) == 16 * 10 * 3  # every query-class pair
    for a, b in zip(again, before):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        torch.testing.assert_close(torch.tensor(a["bbox"]), torch.tensor(b["bbox"]), atol=1e-3, rtol=0)
        assert abs(a["score"] - b["score"]) < 1e-4


def test_short_segmentation_demo_writes_every_artefact(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out, minutes=2, steps=6, train_images=32, val_images=8, task="segmentation")
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert {"AP", "mask_AP", "mask_AP50", "PQ", "SQ", "RQ", "PQ_th", "PQ_st"} <= set(metrics)
    assert all(metrics[k] is None or 0 <= metrics[k] <= 1 for k in ("mask_AP", "PQ"))
    with Image.open(result["paths"]["masks"]) as png:  # 6 images: prediction and truth side by side, 4 tiles a row
        assert png.format == "PNG" and png.size == (4 * 256, 3 * 256)
    assert (out / "data" / "annotations" / "panoptic_val.json").is_file()
    model = DETR.from_pretrained(result["paths"]["model"])
    assert model.class_names == ["circle", "square", "triangle", "sky", "ground"] and hasattr(model, "mask_head")
