"""COCO evaluation: known AP on hand-made detections, agreement with pycocotools, the detections kept per image."""

from __future__ import annotations

import pytest
import torch

from detr.engine.evaluate import coco_evaluate, predict_dataset

from .test_model import small_detr


def hand_made_ground_truth() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
        "categories": [{"id": 7, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0},
        ],
    }


def test_hand_made_detections_give_the_ap_worked_out_by_hand():
    """Ranked: a perfect hit (0.9), a false positive (0.8), a hit of IoU 0.62 on the second object (0.7).

    At IoU thresholds 0.50, 0.55, 0.60 the ranking is TP, FP, TP: recall 1/2 at precision 1, then
    recall 1 at precision 2/3; COCO's 101 recall points give (51 * 1 + 50 * 2/3) / 101. At the
    seven thresholds from 0.65 the third is a false positive too: 51 / 101. AP is their mean.
    """
    detections = [
        {"image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 7, "bbox": [60, 5, 20, 20], "score": 0.8},
        {"image_id": 1, "category_id": 7, "bbox": [50, 50, 30, 18.6], "score": 0.7},  # IoU 558 / 900 = 0.62
    ]
    metrics = coco_evaluate(hand_made_ground_truth(), detections)
    low, high = (51 + 50 * 2 / 3) / 101, 51 / 101
    assert metrics["AP50"] == pytest.approx(low, abs=1e-9)
    assert metrics["AP75"] == pytest.approx(high, abs=1e-9)
    assert metrics["AP"] == pytest.approx((3 * low + 7 * high) / 10, abs=1e-9)
    assert metrics["AR100"] == pytest.approx((3 * 1.0 + 7 * 0.5) / 10, abs=1e-9)


def test_evaluation_agrees_with_pycocotools_on_noisy_detections(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gen = torch.Generator().manual_seed(0)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 150} for i in range(1, 6)]
    categories = [{"id": 3, "name": "a"}, {"id": 9, "name": "b"}]
    annotations, detections = [], []
    for image in images:
        for k in range(3):
            x, y = (torch.rand(2, generator=gen) * torch.tensor([120.0, 80.0])).tolist()
            w, h = (torch.rand(2, generator=gen) * 50 + 10).tolist()
            cat = [3, 9][k % 2]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image["id"], "category_id": cat, "bbox": [x, y, w, h]}
            )
            jitter = (torch.randn(4, generator=gen) * 4).tolist()
            detections.append(
                {
                    "image_id": image["id"],
                    "category_id": cat if torch.rand(1, generator=gen) > 0.2 else 12 - cat,
                    "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                    "score": float(torch.rand(1, generator=gen)),
                }
            )
    for ann in annotations:
        ann.update(area=ann["bbox"][2] * ann["bbox"][3], iscrowd=0)
    gt = {"images": images, "categories": categories, "annotations": annotations}
    ours = coco_evaluate(gt, detections)
    coco = COCO()
    coco.dataset = dict(gt, info={}, licenses=[])
    coco.createIndex()
    evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert 0.1 < ours["AP"] < 0.9  # neither trivial end
    assert [ours[k] for k in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")] == pytest.approx(
        [evaluator.stats[i] for i in (0, 1, 2, 6, 7, 8)], abs=1e-12
    )


@pytest.mark.parametrize("all_classes", [False, True])
def test_evaluation_keeps_the_best_detections_over_all_query_class_pairs(all_classes):
    """30 queries x 10 classes = 300 pairs: the 100 best are kept, however they fall on queries and classes."""
    torch.manual_seed(0)
    model = small_detr(num_classes=10, num_queries=30, aux_loss=False).eval()
    with torch.no_grad():
        model.class_head.bias.normal_(0, 2.0)  # scores spread out, so that the cut matters
    images = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    targets = [{"image_id": i, "orig_size": torch.tensor([64, 64])} for i in range(2)]
    results = predict_dataset(model, [(images, mask, targets)], list(range(100, 110)), all_classes=all_classes)
    with torch.no_grad():
        probs = model(images, mask)[0].softmax(-1)[..., :-1]  # (2, 30, 10)
    for i in range(2):
        scores = sorted((r["score"] for r in results if r["image_id"] == i), reverse=True)
        expected = probs[i].flatten() if all_classes else probs[i].max(-1).values
        assert len(scores) == (100 if all_classes else 30)
        assert scores == pytest.approx(expected.sort(descending=True).values[:100].tolist(), abs=1e-6)


def test_evaluation_does_not_move_the_global_random_stream(tmp_path):
    """Reading the validation split draws no random number, so how often a run evaluates cannot change
    how it trains (its dropout and denoising noise come from that stream)."""
    from detr.data import CocoDetection, eval_transforms
    from detr.data.synthetic import SynthConfig, make_dataset

    data = make_dataset(tmp_path / "d", train=1, val=3, seed=0, config=SynthConfig(image_size=40, max_objects=1))
    dataset = CocoDetection(data, "val", eval_transforms(32, 48))
    state = torch.get_rng_state()
    images = [dataset[i][0] for i in range(3)]
    assert torch.equal(torch.get_rng_state(), state) and images[0].shape == (3, 32, 32)
