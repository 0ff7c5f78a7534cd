"""DETR's mask loss terms (focal + DICE) against Hugging Face's ImageLoss and against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers.loss import loss_for_object_detection as hf

from detr.losses.mask_loss import (
    DICE_LOSS_COEF,
    MASK_LOSS_COEF,
    dice_loss,
    mask_loss_terms,
    pad_target_masks,
    sigmoid_focal_loss,
)

SIZES = [(40, 50), (36, 60)]  # two image sizes: padding to (40, 60) changes both images' grids
INDICES = [
    (torch.tensor([4, 1, 2]), torch.tensor([0, 2, 1])),
    (torch.tensor([0, 5]), torch.tensor([1, 0])),
]


def random_batch(seed: int = 0):
    """pred_masks (2, 6, 12, 16) logits and targets with 3 and 2 objects of random masks at two image sizes."""
    gen = torch.Generator().manual_seed(seed)
    pred_masks = torch.randn(2, 6, 12, 16, generator=gen) * 2
    targets = []
    for (h, w), n in zip(SIZES, (3, 2)):
        targets.append(
            {
                "class_id": torch.randint(0, 5, (n,), generator=gen),
                "box": torch.rand(n, 4, generator=gen) * 0.5 + 0.25,
                "masks": torch.rand(n, h, w, generator=gen) > 0.6,
            }
        )
    return pred_masks, targets


def hf_mask_losses(pred_masks, targets, indices, num_boxes):
    criterion = hf.ImageLoss(matcher=None, num_classes=5, eos_coef=0.1, losses=["masks"])
    hf_targets = [{"masks": t["masks"], "class_labels": t["class_id"], "boxes": t["box"]} for t in targets]
    return criterion.loss_masks({"pred_masks": pred_masks}, hf_targets, indices, num_boxes)


def test_default_weights_are_the_reference_panoptic_ones():
    assert (MASK_LOSS_COEF, DICE_LOSS_COEF) == (1.0, 1.0)


def test_mask_loss_terms_equal_hugging_face():
    pred_masks, targets = random_batch()
    num_boxes = 5.0
    ours = mask_loss_terms(pred_masks, targets, INDICES, num_boxes)
    theirs = hf_mask_losses(pred_masks, targets, INDICES, num_boxes)
    assert set(ours) == {"loss_mask", "loss_dice"}
    assert ours["loss_mask"].item() > 0.01 and ours["loss_dice"].item() > 0.1  # non-trivial values
    for name in ("loss_mask", "loss_dice"):
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-6, rtol=1e-5)


def test_padding_to_the_batch_size_matters():
    """Upsampling each prediction to its own image size instead of the padded batch size gives other numbers,
    so the comparison with Hugging Face above does check the padding."""
    pred_masks, targets = random_batch()
    ours = mask_loss_terms(pred_masks, targets, INDICES, 5.0)
    focal, dice = 0.0, 0.0
    for b, (queries, tgts) in enumerate(INDICES):
        h, w = targets[b]["masks"].shape[1:]
        src = F.interpolate(pred_masks[b, queries][:, None], size=(h, w), mode="bilinear", align_corners=False)
        src = src[:, 0].flatten(1)
        tgt = targets[b]["masks"][tgts].float().flatten(1)
        focal += sigmoid_focal_loss(src, tgt, 5.0).item()
        dice += dice_loss(src, tgt, 5.0).item()
    assert abs(ours["loss_mask"].item() - focal) > 1e-3
    assert abs(ours["loss_dice"].item() - dice) > 1e-3


def test_pad_target_masks_mirrors_nested_tensor():
    _, targets = random_batch()
    masks = [t["masks"] for t in targets]
    padded, valid = pad_target_masks(masks)
    reference, padding = hf.nested_tensor_from_tensor_list(masks).decompose()
    assert padded.shape == (2, 3, 40, 60) and padded.dtype == torch.bool
    assert torch.equal(padded, reference)
    assert torch.equal(valid, ~padding)
    assert torch.equal(padded[1, :2, :36, :50], masks[1][:, :, :50])
    assert not padded[1, 2].any() and not padded[1, :, 36:].any() and not padded[0, :, :, 50:].any()
    assert valid[0, :40, :50].all() and not valid[0, :, 50:].any() and not valid[1, 36:].any()

    bigger, bigger_valid = pad_target_masks(masks, size=(64, 64))
    assert bigger.shape == (2, 3, 64, 64) and torch.equal(bigger[:, :, :40, :60], padded)
    assert int(bigger_valid.sum()) == 40 * 50 + 36 * 60


def test_pad_to_changes_the_target_grid():
    pred_masks, targets = random_batch()
    base = mask_loss_terms(pred_masks, targets, INDICES, 5.0)
    wider = mask_loss_terms(pred_masks, targets, INDICES, 5.0, pad_to=(64, 64))
    assert abs(base["loss_dice"].item() - wider["loss_dice"].item()) > 1e-3


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2), (0.5, 1), (-1, 2)])
def test_focal_and_dice_equal_hugging_face(alpha, gamma):
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(5, 300, generator=gen) * 3
    targets = (torch.rand(5, 300, generator=gen) > 0.5).float()
    num_boxes = 3.7
    ours = sigmoid_focal_loss(inputs, targets, num_boxes, alpha=alpha, gamma=gamma)
    theirs = hf.sigmoid_focal_loss(inputs, targets, num_boxes, alpha=alpha, gamma=gamma)
    assert ours.item() > 0.01
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    ours_dice, theirs_dice = dice_loss(inputs, targets, num_boxes), hf.dice_loss(inputs, targets, num_boxes)
    assert ours_dice.item() > 0.1
    torch.testing.assert_close(ours_dice, theirs_dice, atol=1e-6, rtol=1e-5)


def test_zero_logits_by_hand():
    """p = 1/2 everywhere on a 4x4 mask with 8 foreground pixels:
    focal = ln 2 * (1/2)^2 * mean(alpha_t) = ln 2 * 1/4 * (8 * 0.25 + 8 * 0.75) / 16 = ln 2 / 8;
    dice = 1 - (2 * 4 + 1) / (8 + 8 + 1) = 8 / 17."""
    target = torch.zeros(1, 16)
    target[0, :8] = 1
    logits = torch.zeros(1, 16)
    assert sigmoid_focal_loss(logits, target, 1.0).item() == pytest.approx(math.log(2) / 8, rel=1e-6)
    assert dice_loss(logits, target, 1.0).item() == pytest.approx(8 / 17, rel=1e-6)


def test_perfect_and_inverted_predictions_by_hand():
    """One image, 4x4 targets (top half; left half), predictions at the same size (bilinear is then the identity).

    Query 2 predicts target 0 perfectly (logits +-20): focal ~ 0, dice ~ 0.
    Query 0 predicts target 1 inverted: every pixel has cross-entropy 20 and (1 - p_t)^2 = 1, so
    focal = 20 * (8 * 0.25 + 8 * 0.75) / 16 = 10; intersection ~ 0, so dice = 1 - 1 / (8 + 8 + 1) = 16 / 17.
    Divided by num_boxes = 2: loss_mask = 5, loss_dice = 8 / 17. Query 1 is unmatched and must not count.
    """
    top = torch.zeros(4, 4, dtype=torch.bool)
    top[:2] = True
    left = torch.zeros(4, 4, dtype=torch.bool)
    left[:, :2] = True
    target = {"class_id": torch.tensor([1, 2]), "box": torch.rand(2, 4), "masks": torch.stack([top, left])}
    pred = torch.zeros(1, 3, 4, 4)
    pred[0, 2] = torch.where(top, 20.0, -20.0)
    pred[0, 0] = torch.where(left, -20.0, 20.0)
    pred[0, 1] = 7.0
    indices = [(torch.tensor([0, 2]), torch.tensor([1, 0]))]
    losses = mask_loss_terms(pred, [target], indices, 2.0)
    assert losses["loss_mask"].item() == pytest.approx(5.0, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(8 / 17, rel=1e-5)

    perfect = mask_loss_terms(pred, [target], [(torch.tensor([2]), torch.tensor([0]))], 1.0)
    assert 0 <= perfect["loss_mask"].item() < 1e-12
    assert 0 <= perfect["loss_dice"].item() < 1e-6


def test_gradients_reach_only_matched_queries():
    pred_masks, targets = random_batch()
    pred_masks.requires_grad_(True)
    losses = mask_loss_terms(pred_masks, targets, INDICES, 5.0)
    (MASK_LOSS_COEF * losses["loss_mask"] + DICE_LOSS_COEF * losses["loss_dice"]).backward()
    grad = pred_masks.grad
    for b, (queries, _) in enumerate(INDICES):
        for q in range(pred_masks.shape[1]):
            if q in queries.tolist():
                assert grad[b, q].abs().sum() > 1e-6, (b, q)
            else:
                assert torch.count_nonzero(grad[b, q]) == 0, (b, q)


def test_no_objects_gives_zero_and_backpropagates():
    pred_masks = torch.randn(2, 6, 12, 16, requires_grad=True)
    targets = [
        {"class_id": torch.zeros(0, dtype=torch.int64), "box": torch.zeros(0, 4), "masks": torch.zeros(0, h, w)}
        for h, w in SIZES
    ]
    empty = torch.zeros(0, dtype=torch.int64)
    losses = mask_loss_terms(pred_masks, targets, [(empty, empty)] * 2, 1.0)
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    assert torch.count_nonzero(pred_masks.grad) == 0


def test_bad_inputs_raise_clear_errors():
    pred_masks, targets = random_batch()

    no_masks = [targets[0], {k: v for k, v in targets[1].items() if k != "masks"}]
    with pytest.raises(ValueError, match=r"targets\[1\] has no 'masks'.*\(N, H, W\)"):
        mask_loss_terms(pred_masks, no_masks, INDICES, 5.0)

    too_many = [{**targets[0], "box": targets[0]["box"][:2]}, targets[1]]
    with pytest.raises(ValueError, match=r"targets\[0\] has 3 masks but 2 entries in 'box'.*one mask per object"):
        mask_loss_terms(pred_masks, too_many, INDICES, 5.0)

    flat = [targets[0], {**targets[1], "masks": targets[1]["masks"][0]}]
    with pytest.raises(ValueError, match=r"targets\[1\]\['masks'\] must have shape \(N, H, W\), got \(36, 60\)"):
        mask_loss_terms(pred_masks, flat, INDICES, 5.0)

    with pytest.raises(ValueError, match=r"pred_masks must be \(B, Q, h, w\)"):
        mask_loss_terms(pred_masks[0], targets, INDICES, 5.0)

    with pytest.raises(ValueError, match=r"targets has 1 entries but pred_masks has 2 images"):
        mask_loss_terms(pred_masks, targets[:1], INDICES, 5.0)

    bad_indices = [INDICES[0], (torch.tensor([0, 5]), torch.tensor([1, 2]))]
    with pytest.raises(ValueError, match=r"indices\[1\] has target indices outside \[0, 2\)"):
        mask_loss_terms(pred_masks, targets, bad_indices, 5.0)

    with pytest.raises(ValueError, match=r"size \(30, 60\) is smaller than the largest masks \(40, 60\)"):
        pad_target_masks([t["masks"] for t in targets], size=(30, 60))
