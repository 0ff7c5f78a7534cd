"""PQ / SQ / RQ through torchmetrics, checked on cases computed by hand with panopticapi's rules."""

from __future__ import annotations

import pytest
import torch

from detr.engine.panoptic_eval import panoptic_quality


def _segments(*pairs):
    return [{"id": i, "label_id": c} for i, c in pairs]


def test_panoptic_quality_equals_a_hand_computed_case():
    # image 1 (4x4): a thing of class 1 on the left half (8 px), stuff of class 2 on the right half (8 px)
    truth1 = torch.tensor([[1, 1, 2, 2]] * 4)
    # predicted: the thing misses 2 px (IoU 6/8 = 0.75), the stuff takes them (IoU 8/10 = 0.8)
    pred1 = truth1.clone()
    pred1[0, 1] = pred1[1, 1] = 2
    # image 2: a thing of class 1 (4 px, top left) in stuff of class 3; predicted thing shifted by one
    # pixel diagonally: IoU 1/7, a false positive and a false negative; the stuff: IoU 9/15 = 0.6
    truth2 = torch.full((4, 4), 8)
    truth2[:2, :2] = 5
    pred2 = torch.full((4, 4), 4)
    pred2[1:3, 1:3] = 9
    found = panoptic_quality(
        [(pred1, _segments((1, 1), (2, 2))), (pred2, _segments((9, 1), (4, 3)))],
        [(truth1, _segments((1, 1), (2, 2))), (truth2, _segments((5, 1), (8, 3)))],
        things={1}, stuffs={2, 3, 6},
    )  # fmt: skip
    # class 1: TP 1 (IoU 0.75), FP 1, FN 1 -> SQ 0.75, RQ 1 / (1 + 0.5 + 0.5) = 0.5, PQ 0.375
    # class 2: PQ 0.8; class 3: PQ 0.6; class 6 occurs nowhere and is not averaged
    assert found["PQ_th"] == pytest.approx(0.375) and found["SQ_th"] == pytest.approx(0.75)
    assert found["RQ_th"] == pytest.approx(0.5)
    assert found["PQ_st"] == pytest.approx(0.7) and found["RQ_st"] == pytest.approx(1.0)
    assert found["PQ"] == pytest.approx((0.375 + 0.8 + 0.6) / 3)


def test_unlabeled_pixels_follow_panopticapi():
    # ground truth left unlabeled (void) on the right: a prediction spilling there is not penalised
    truth = torch.tensor([[1, 1, 0, 0]] * 2)
    pred = torch.tensor([[1, 1, 1, 1]] * 2)
    found = panoptic_quality([(pred, _segments((1, 4)))], [(truth, _segments((1, 4)))], things={4}, stuffs={7})
    assert found["PQ"] == pytest.approx(1.0) and found["PQ_st"] is None
    # a predicted segment lying mostly on unlabeled pixels is no false positive, but its object is missed
    truth = torch.zeros(4, 4, dtype=torch.long)
    truth[:2, :2] = 5
    pred = torch.zeros(4, 4, dtype=torch.long)
    pred[1:3, 1:3] = 9
    found = panoptic_quality([(pred, _segments((9, 1)))], [(truth, _segments((5, 1)))], things={1}, stuffs={2})
    assert found["PQ"] == 0.0 and found["RQ"] == 0.0  # FN 1, FP 0
    # pixels of a ground-truth segment that the prediction leaves unassigned count against it (torchmetrics
    # alone drops them and would find IoU 1 here): 4 of 8 covered, IoU 0.5, not a match
    truth = torch.tensor([[1, 1, 1, 1]] * 2)
    pred = torch.tensor([[1, 1, 0, 0]] * 2)
    found = panoptic_quality([(pred, _segments((1, 4)))], [(truth, _segments((1, 4)))], things={4}, stuffs={7})
    assert found["PQ"] == 0.0
    with pytest.raises(ValueError, match="a prediction of size"):
        panoptic_quality([(pred[:1], [])], [(truth, [])], things={4}, stuffs={7})
