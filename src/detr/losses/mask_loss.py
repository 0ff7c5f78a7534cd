"""DETR's mask loss terms for panoptic / instance segmentation: sigmoid focal loss and DICE loss.

These follow the reference code (``facebookresearch/detr``: ``dice_loss`` and ``sigmoid_focal_loss`` in
``models/segmentation.py``, ``SetCriterion.loss_masks`` in ``models/detr.py``) and give the same numbers as
Hugging Face's ``ImageLoss.loss_masks``:

1. the matched predicted masks (logits at the mask head's resolution) are gathered,
2. each image's target masks are zero-padded to the largest image of the batch (bottom and right),
3. the predictions are upsampled bilinearly (``align_corners=False``) to that padded size,
4. ``loss_mask`` = focal loss averaged over pixels, summed over masks, divided by ``num_boxes``;
   ``loss_dice`` = 1 - soft DICE (with +1 smoothing), summed over masks, divided by ``num_boxes``.

Padding pixels count as background in both terms (the reference leaves them in; its ``valid`` mask is unused).
Like the reference, the mask terms are meant for the final decoder layer only (intermediate layers have no masks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss as _torchvision_focal

from ..processing.checks import Target

# Weights of the two terms in the reference's panoptic training (``--mask_loss_coef 1 --dice_loss_coef 1``).
MASK_LOSS_COEF = 1.0
DICE_LOSS_COEF = 1.0

_MASKS_HINT = (
    "give each target a 'masks' tensor of shape (N, H, W): one bool mask per object, in the same order as its "
    "boxes, in the pixels of the image as fed to the model before batch padding"
)


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2
) -> Tensor:
    """Focal loss (RetinaNet) of mask logits, reduced as DETR's reference.

    Args:
        inputs: (M, P) logits, one row per matched mask, P pixels.
        targets: (M, P) float, 1 on the object and 0 elsewhere.
        num_boxes: the normaliser (number of target boxes, averaged over processes, at least 1).
        alpha: weight of the positive pixels (``1 - alpha`` for the negatives); -1 disables the weighting.
        gamma: exponent of the modulating factor ``(1 - p_t)``.

    Returns:
        Scalar: per-pixel loss averaged over the P pixels of each mask, summed over masks, / ``num_boxes``.
    """
    per_pixel = _torchvision_focal(inputs, targets, alpha=alpha, gamma=gamma, reduction="none")  # (M, P)
    return per_pixel.mean(1).sum() / num_boxes


def dice_loss(inputs: Tensor, targets: Tensor, num_boxes: float) -> Tensor:
    """DICE loss (a soft IoU for masks) of mask logits, as in DETR's reference.

    Args:
        inputs: (M, ...) logits, one row per matched mask; flattened to (M, P).
        targets: (M, P) float, 1 on the object and 0 elsewhere.
        num_boxes: the normaliser (number of target boxes, averaged over processes, at least 1).

    Returns:
        Scalar: ``sum_m [1 - (2 |p_m t_m| + 1) / (|p_m| + |t_m| + 1)] / num_boxes`` with ``p = sigmoid(inputs)``.
    """
    probs = inputs.sigmoid().flatten(1)  # (M, P)
    overlap = (probs * targets).sum(1)  # (M,)
    total = probs.sum(1) + targets.sum(1)  # (M,)
    per_mask = 1 - (2 * overlap + 1) / (total + 1)
    return per_mask.sum() / num_boxes


def pad_target_masks(masks: Sequence[Tensor], size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Zero-pad each image's target masks to a common shape, as the reference's ``nested_tensor_from_tensor_list``.

    Args:
        masks: B tensors of shape (N_i, H_i, W_i), any dtype (bool in the reference).
        size: (H, W) to pad to; default the batch's largest (max H_i, max W_i), as the reference. Give the padded
            input's size when the images were padded further (``pad_batch`` with ``size_divisor > 1``).

    Returns:
        ``padded`` (B, max N_i, H, W) of the first tensor's dtype, zero beyond each image and beyond its N_i
        masks, and ``valid`` (B, H, W) bool, True inside each image. (The reference returns the opposite mask,
        True on padding, under the name ``valid``; it never uses it.)
    """
    if len(masks) == 0:
        raise ValueError("masks is empty: give one (N, H, W) tensor per image of the batch")
    for i, m in enumerate(masks):
        if not isinstance(m, Tensor) or m.dim() != 3:
            got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(
                f"masks of image {i} must be a tensor of shape (N, H, W), got {got}; "
                "stack an image's object masks with torch.stack (a single mask needs m[None])"
            )
    count = max(m.shape[0] for m in masks)
    height = max(m.shape[1] for m in masks)
    width = max(m.shape[2] for m in masks)
    if size is not None:
        if size[0] < height or size[1] < width:
            raise ValueError(
                f"size {tuple(size)} is smaller than the largest masks ({height}, {width}); "
                "pad to at least the largest image of the batch"
            )
        height, width = int(size[0]), int(size[1])
    first = masks[0]
    padded = torch.zeros((len(masks), count, height, width), dtype=first.dtype, device=first.device)
    valid = torch.zeros((len(masks), height, width), dtype=torch.bool, device=first.device)
    for i, m in enumerate(masks):
        n, h, w = m.shape
        padded[i, :n, :h, :w].copy_(m)
        valid[i, :h, :w] = True
    return padded, valid


def _check_inputs(
    pred_masks: Tensor, targets: Sequence[Target], indices: Sequence[tuple[Tensor, Tensor]], num_boxes: float
) -> None:
    if not isinstance(pred_masks, Tensor) or pred_masks.dim() != 4:
        got = tuple(pred_masks.shape) if isinstance(pred_masks, Tensor) else type(pred_masks).__name__
        raise ValueError(f"pred_masks must be (B, Q, h, w) mask logits, got {got}")
    if not pred_masks.is_floating_point():
        raise ValueError(f"pred_masks must be float logits, got dtype {pred_masks.dtype}")
    batch, queries = pred_masks.shape[:2]
    if len(targets) != batch:
        raise ValueError(f"targets has {len(targets)} entries but pred_masks has {batch} images; give one per image")
    if len(indices) != batch:
        raise ValueError(
            f"indices has {len(indices)} entries but pred_masks has {batch} images; "
            "pass the matcher's output for this batch"
        )
    if not num_boxes > 0:
        raise ValueError(f"num_boxes must be > 0, got {num_boxes}; use the clamped count (at least 1)")
    for i, (target, (query_idx, target_idx)) in enumerate(zip(targets, indices)):
        where = f"targets[{i}]"
        if not isinstance(target, dict) or "masks" not in target:
            keys = sorted(target) if isinstance(target, dict) else type(target).__name__
            raise ValueError(f"{where} has no 'masks' (keys: {keys}); {_MASKS_HINT}")
        masks = target["masks"]
        if not isinstance(masks, Tensor) or masks.dim() != 3:
            got = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
            hint = (
                " (a single object's mask needs masks[None])" if isinstance(masks, Tensor) and masks.dim() == 2 else ""
            )
            raise ValueError(f"{where}['masks'] must have shape (N, H, W), got {got}{hint}; {_MASKS_HINT}")
        if masks.shape[1] == 0 or masks.shape[2] == 0:
            raise ValueError(f"{where}['masks'] has an empty image size {tuple(masks.shape[1:])}; {_MASKS_HINT}")
        for key in ("box", "class_id"):
            if key in target and len(target[key]) != masks.shape[0]:
                raise ValueError(
                    f"{where} has {masks.shape[0]} masks but {len(target[key])} entries in '{key}'; "
                    "give exactly one mask per object, in the order of its boxes"
                )
        if len(query_idx) != len(target_idx):
            raise ValueError(f"indices[{i}] pairs {len(query_idx)} queries with {len(target_idx)} targets")
        if len(query_idx) and not (0 <= int(query_idx.min()) and int(query_idx.max()) < queries):
            raise ValueError(f"indices[{i}] has query indices outside [0, {queries}); pass this batch's matching")
        if len(target_idx) and not (0 <= int(target_idx.min()) and int(target_idx.max()) < masks.shape[0]):
            raise ValueError(
                f"indices[{i}] has target indices outside [0, {masks.shape[0]}) for {where}'s "
                f"{masks.shape[0]} masks; pass this batch's matching"
            )


def mask_loss_terms(
    pred_masks: Tensor,
    targets: Sequence[Target],
    indices: Sequence[tuple[Tensor, Tensor]],
    num_boxes: float,
    pad_to: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """DETR's mask losses of the matched queries (``SetCriterion.loss_masks`` of the reference).

    Args:
        pred_masks: (B, Q, h, w) mask logits of the final decoder layer; the grid covers the padded input batch.
        targets: B dicts, each with ``masks`` (N_i, H_i, W_i) bool (or 0/1 float) in the pixels of image i as fed
            to the model *before* batch padding, one per object in the order of its ``box`` / ``class_id``.
            They are zero-padded bottom/right to the batch's largest (H, W), as the reference does, which matches
            the padded input when images are padded only to the largest one (``size_divisor=1``).
        indices: the matcher's output, B pairs ``(query_idx, target_idx)`` of int64 tensors.
        num_boxes: the normaliser: number of target boxes (averaged over processes, at least 1).
        pad_to: pad the target masks to this (H, W) instead, e.g. the padded input's size when images were padded
            to a multiple of 32, so that targets and predictions cover the same region.

    Returns:
        ``{"loss_mask": focal, "loss_dice": dice}``, scalars computed in float32. Weights in the reference's
        panoptic training: :data:`MASK_LOSS_COEF` and :data:`DICE_LOSS_COEF`.
    """
    _check_inputs(pred_masks, targets, indices, num_boxes)
    device = pred_masks.device
    batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(device)
    query_idx = torch.cat([q for q, _ in indices]).to(device)
    src = pred_masks[batch_idx, query_idx].float()  # (M, h, w)

    padded, _ = pad_target_masks([t["masks"] for t in targets], size=pad_to)  # (B, N_max, H, W)
    padded = padded.to(device=device, dtype=src.dtype)
    tgt_batch_idx = torch.cat([torch.full_like(t, i) for i, (_, t) in enumerate(indices)]).to(device)
    tgt_idx = torch.cat([t for _, t in indices]).to(device)
    tgt = padded[tgt_batch_idx, tgt_idx]  # (M, H, W)

    src = F.interpolate(src[:, None], size=tgt.shape[-2:], mode="bilinear", align_corners=False)  # (M, 1, H, W)
    src = src[:, 0].flatten(1)  # (M, H*W)
    tgt = tgt.flatten(1)  # (M, H*W)
    return {
        "loss_mask": sigmoid_focal_loss(src, tgt, num_boxes),
        "loss_dice": dice_loss(src, tgt, num_boxes),
    }
