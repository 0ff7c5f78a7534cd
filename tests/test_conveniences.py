"""Training conveniences and hand-offs: TensorBoard, EMA, early stopping, supervision, COCO/YOLO outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import detr
from detr.cli import main
from detr.data.synthetic import SynthConfig, make_dataset
from detr.engine import TrainConfig, Trainer

from .conftest import tiny_train_config


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("d"), train=8, val=4, seed=11, config=SynthConfig(image_size=32, max_objects=2)
    )


def config(data: Path, out: Path, **kwargs) -> TrainConfig:
    return tiny_train_config(data, out, **{"log_every": 1, **kwargs})


def test_tensorboard_gets_every_scalar_and_the_predictions(shapes, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(config(shapes, tmp_path / "run", tensorboard=True, max_steps=3)).fit()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    losses = [e.value for e in events.Scalars("train/loss")]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert losses == pytest.approx([r["loss"] for r in log if r["type"] == "train"], rel=1e-6)  # the same numbers
    assert {"train/loss_bbox", "train/lr_backbone", "eval/AP", "eval/AR100"} <= set(tags["scalars"])
    assert tags["images"] == ["validation predictions"]


def test_ema_weights_are_evaluated_saved_and_resumed_exactly(shapes, tmp_path):
    uninterrupted = Trainer(config(shapes, tmp_path / "a", ema=True, ema_warmup=2, max_steps=4, val_split=""))
    uninterrupted.fit()
    ema = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    raw = uninterrupted.model.state_dict()
    assert not torch.equal(ema["class_head.weight"], raw["class_head.weight"])  # final/ holds the average
    expected = uninterrupted.ema.model.state_dict()
    assert all(torch.equal(ema[k], expected[k]) for k in ema)
    # two steps, then two more from the checkpoint: the same average
    Trainer(config(shapes, tmp_path / "b", ema=True, ema_warmup=2, max_steps=2, val_split="")).fit()
    Trainer(config(shapes, tmp_path / "b", ema=True, ema_warmup=2, max_steps=4, val_split="", resume=True)).fit()
    resumed = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert all(torch.equal(resumed[k], ema[k]) for k in ema)


def test_early_stopping_stops_after_the_patience_and_keeps_the_best(shapes, tmp_path, monkeypatch):
    scripted = iter([0.10, 0.30, 0.20, 0.25, 0.40, 0.50])  # AP50 after each epoch
    seen = []

    def evaluate(self):
        value = next(scripted)
        seen.append(value)
        return {
            name: value
            for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
        }

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    summary = Trainer(config(shapes, tmp_path / "run", epochs=6, best_metric="AP50", early_stopping_patience=2)).fit()
    assert seen == [0.10, 0.30, 0.20, 0.25] and summary["epochs"] == 4  # two evaluations without a better AP50
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["best"] for r in log if r["type"] == "early_stop"] == [0.30]
    with pytest.raises(ValueError, match="best_metric must be one of AP, AP50"):
        config(shapes, tmp_path / "x", best_metric="mAP")


def test_to_supervision_round_trips_boxes_scores_and_classes():
    detections = [
        {"box": [1.0, 2.0, 30.5, 40.0], "score": 0.9, "class_id": 2, "class_name": "dog"},
        {"box": [5.0, 6.0, 7.0, 8.0], "score": 0.4, "class_id": 0, "class_name": "cat"},
    ]
    converted = detr.to_supervision(detections)
    np.testing.assert_allclose(converted.xyxy, [[1.0, 2.0, 30.5, 40.0], [5.0, 6.0, 7.0, 8.0]])
    np.testing.assert_allclose(converted.confidence, [0.9, 0.4], rtol=1e-6)
    assert converted.class_id.tolist() == [2, 0] and converted.data["class_name"].tolist() == ["dog", "cat"]
    assert len(detr.to_supervision([])) == 0


def test_predictions_as_coco_results_and_yolo_labels(shapes, tmp_path):
    Trainer(config(shapes, tmp_path / "run", max_steps=1, val_split="")).fit()
    images = sorted((shapes / "val").glob("*.jpg"))[:2]
    args = ["predict", *map(str, images), "--weights", str(tmp_path / "run"), "--out", str(tmp_path / "p")]
    assert main([*args, "--threshold", "0", "--k", "3", "--yolo-labels"]) == 0
    report = json.loads((tmp_path / "p" / "detections.json").read_text())
    results = json.loads((tmp_path / "p" / "results.coco.json").read_text())
    assert len(results) == 6
    first = report[str(images[0])][0]
    x0, y0, x1, y1 = first["box"]
    assert results[0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0]) and results[0]["score"] == first["score"]
    lines = (tmp_path / "p" / "labels" / f"{images[0].stem}.txt").read_text().splitlines()
    cls, cx, cy, w, h, score = lines[0].split()
    assert int(cls) == first["class_id"] and float(cx) == pytest.approx((x0 + x1) / 2 / 32, abs=1e-6)
    assert float(w) == pytest.approx((x1 - x0) / 32, abs=1e-6) and float(score) == pytest.approx(
        first["score"], abs=1e-5
    )
