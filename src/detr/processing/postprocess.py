"""Turn DETR outputs into per-image detections in pixel coordinates. No NMS: DETR needs none."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_convert


def valid_sizes(mask: Tensor) -> Tensor:
    """mask (B, H, W) bool, True on padding -> (B, 2) int64 (height, width) of the unpadded image.

    Images are padded at the bottom and right, so the valid region is the
    top-left block of ``~mask``.
    """
    valid = ~mask
    heights = valid.any(2).sum(1)  # rows holding at least one valid pixel
    widths = valid.any(1).sum(1)  # columns holding at least one valid pixel
    return torch.stack([heights, widths], dim=1)


@torch.no_grad()
def postprocess(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    image_sizes: Tensor,
    score_threshold: float = 0.0,
    top_k: int | None = None,
    all_classes: bool = False,
    nms_iou: float | None = None,
    classes: Sequence[int] | None = None,
) -> list[dict[str, Tensor]]:
    """Per-image detections from one layer's outputs.

    Each query gives one detection: its most likely class other than "no object",
    with that probability as the score (the reference post-processing). With ``all_classes``
    each query gives one detection per class, scored by that class's probability (the
    post-processing of Deformable DETR and its successors): a query unsure between two classes
    then also offers its second guess, at a lower score, which can only add recall.

    Args:
        pred_logits: (B, Q, K+1) class logits, last channel "no object".
        pred_boxes: (B, Q, 4) normalized cxcywh boxes, relative to each image's valid region.
        image_sizes: (B, 2) (height, width) in pixels of the images the boxes are wanted in
            (the original images, so boxes land on them, never on the padding).
        score_threshold: keep detections with score >= this.
        top_k: keep at most this many detections per image (the highest scores), over all
            query-class pairs with ``all_classes`` (COCO evaluation keeps 100).
        nms_iou: drop a detection that overlaps a better one of the same class by more than this IoU
            (class-aware NMS, ``torchvision.ops.batched_nms``). Off by default: DETR is trained to
            give one box per object and needs none; an undertrained model may box an object twice.
        classes: keep only detections of these class ids (before ``top_k``: k of the classes asked for).

    Returns:
        B dicts with ``scores`` (n,), ``labels`` (n,) int64 in [0, K-1], ``boxes`` (n, 4) absolute
        xyxy pixels clipped to the image, sorted by decreasing score, and ``queries`` (n,) the query
        each detection comes from (its mask, its attention).
    """
    if pred_logits.dim() != 3 or pred_boxes.shape[:2] != pred_logits.shape[:2] or pred_boxes.shape[-1] != 4:
        raise ValueError(
            f"expected pred_logits (B, Q, K+1) and pred_boxes (B, Q, 4), got {tuple(pred_logits.shape)} "
            f"and {tuple(pred_boxes.shape)}"
        )
    image_sizes = torch.as_tensor(image_sizes, device=pred_boxes.device)
    if image_sizes.shape != (pred_logits.shape[0], 2):
        raise ValueError(
            f"image_sizes must have shape (B, 2) = ({pred_logits.shape[0]}, 2), got {tuple(image_sizes.shape)}"
        )
    prob = pred_logits.float().softmax(-1)[..., :-1]  # (B, Q, K)
    height, width = image_sizes.float().unbind(1)
    scale = torch.stack([width, height, width, height], dim=1)[:, None, :]  # (B, 1, 4)
    # a box whose centre and size are each in [0, 1] can still reach past the border: clip it to the image
    boxes = box_convert(pred_boxes.float(), "cxcywh", "xyxy").clamp(0.0, 1.0) * scale  # (B, Q, 4)
    if all_classes:
        batch, queries, num_classes = prob.shape
        scores = prob.flatten(1)  # (B, Q*K), query-major
        labels = torch.arange(num_classes, device=prob.device).repeat(queries).expand(batch, -1)  # (B, Q*K)
        boxes = boxes.repeat_interleave(num_classes, dim=1)  # (B, Q*K, 4)
        query_of = torch.arange(queries, device=prob.device).repeat_interleave(num_classes)  # (Q*K,)
    else:
        scores, labels = prob.max(-1)  # (B, Q)
        query_of = torch.arange(prob.shape[1], device=prob.device)  # (Q,)

    wanted = None if classes is None else torch.as_tensor(list(classes), dtype=torch.long, device=labels.device)
    results = []
    for s, l, b in zip(scores, labels, boxes):
        order = s.argsort(descending=True)
        if nms_iou is not None:
            order = batched_nms(b, s, l, nms_iou)  # kept indices, by decreasing score
        if wanted is not None:
            order = order[torch.isin(l[order], wanted)]
        if top_k is not None:
            order = order[:top_k]
        order = order[s[order] >= score_threshold]
        results.append({"scores": s[order], "labels": l[order], "boxes": b[order], "queries": query_of[order]})
    return results


def class_ids(classes: Sequence[int | str], class_names: Sequence[str] | None, num_classes: int) -> list[int]:
    """Class ids of ``classes`` given as ids or names (names need a model that knows its class names)."""
    ids = []
    for item in classes:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            class_id = int(item)
            if not 0 <= class_id < num_classes:
                raise ValueError(f"class id {class_id} is out of range: the model has classes 0..{num_classes - 1}")
        elif class_names is None:
            raise ValueError(f"class {item!r} given by name, but the model has no class names: give class ids")
        elif item in class_names:
            class_id = list(class_names).index(item)
        else:
            raise ValueError(f"no class named {item!r}; the model's classes: {', '.join(map(str, class_names))}")
        ids.append(class_id)
    return ids


def detection_dicts(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    image_sizes: Tensor,
    class_names: Sequence[str] | None = None,
    **options: Any,
) -> list[list[dict[str, Any]]]:
    """:func:`postprocess` (``options`` are its keyword arguments) as plain data: per image, a list of
    ``{"box": [x0, y0, x1, y1] pixels, "score", "class_id"}`` (plus ``"class_name"`` with ``class_names``)."""
    return [
        as_detections(res["boxes"], res["scores"], res["labels"], class_names)
        for res in postprocess(pred_logits, pred_boxes, image_sizes, **options)
    ]


def as_detections(
    boxes: Tensor, scores: Tensor, labels: Tensor, class_names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One image's (n, 4) xyxy pixel boxes, (n,) scores and (n,) class ids as ``predict``'s dicts:
    ``{"box": [x0, y0, x1, y1], "score", "class_id"}`` (plus ``"class_name"`` with ``class_names``)."""
    detections = []
    for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        det = {"box": box, "score": score, "class_id": label}
        if class_names is not None:
            det["class_name"] = class_names[label]
        detections.append(det)
    return detections


def predictions(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    image_sizes: Tensor,
    class_names: Sequence[str] | None = None,
    k: int = 100,
    score_threshold: float = 0.0,
    nms: float | None = None,
    classes: Sequence[int | str] | None = None,
) -> list[list[dict[str, Any]]]:
    """What every ``predict`` returns (``DETR``, ``InferenceDETR``, exported models) from the last
    layer's outputs (B, Q, K+1) and (B, Q, 4): :func:`detection_dicts` under ``predict``'s argument
    names; ``classes`` keeps only these classes (ids or names)."""
    wanted = None if classes is None else class_ids(classes, class_names, pred_logits.shape[-1] - 1)
    return detection_dicts(
        pred_logits,
        pred_boxes,
        image_sizes,
        class_names,
        score_threshold=score_threshold,
        top_k=k,
        nms_iou=nms,
        classes=wanted,
    )
