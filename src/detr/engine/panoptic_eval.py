"""Panoptic quality (Kirillov et al. 2019) with torchmetrics' ``PanopticQuality``.

PQ = SQ x RQ per class: a predicted and a ground-truth segment of the same class match when their
IoU exceeds 0.5 (then no other can); SQ is the mean IoU of the matches, RQ = TP / (TP + FP/2 + FN/2).
PQ, SQ and RQ are averaged over the classes that occur (in the ground truth or the predictions),
overall and over things and stuff separately.

Void (pixels of no segment) follows panopticapi's ``pq_compute``, the COCO reference: unlabeled
ground-truth pixels are ignored (a prediction may spill onto them), a predicted segment lying more than
half on them is not a false positive, and ground-truth pixels the prediction leaves unassigned count
against their segment. torchmetrics alone drops every pixel that is void on either side, which would
forgive unassigned pixels; they get a class of their own here, left out of the averages (tested on
hand-computed cases). Not modelled: panopticapi's crowd regions (our loaders keep none; give them as
unlabeled pixels).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import Tensor


def category_instance_map(segmentation: Tensor, segments_info: Sequence[dict[str, Any]], void: int) -> Tensor:
    """A segment-id map (H, W) and its segments (``{"id", "label_id"}``) -> (H, W, 2) int64 (class id,
    segment id); pixels of no listed segment get the category ``void``."""
    segmentation = torch.as_tensor(segmentation).long()
    categories = torch.full_like(segmentation, void)
    for segment in segments_info:
        categories[segmentation == segment["id"]] = int(segment["label_id"])
    instances = torch.where(categories == void, torch.zeros_like(segmentation), segmentation)
    return torch.stack([categories, instances], dim=-1)  # (H, W, 2)


def panoptic_quality(
    predictions: Sequence[tuple[Tensor, Sequence[dict[str, Any]]]],
    targets: Sequence[tuple[Tensor, Sequence[dict[str, Any]]]],
    things: Collection[int],
    stuffs: Collection[int],
) -> dict[str, float | None]:
    """PQ, SQ, RQ overall and for things (``_th``) and stuff (``_st``), in [0, 1] (None where no class
    of the kind occurs), of per-image ``(segment-id map (H, W), segments_info)`` pairs, the predictions
    at the targets' sizes."""
    from torchmetrics.detection import PanopticQuality

    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets: give one of each per image")
    # torchmetrics drops every pixel that is void in the target *or* the prediction; panopticapi keeps a
    # ground-truth segment's pixels that the prediction left unassigned (they lower its IoU). So unassigned
    # predicted pixels get a class of their own (a stuff class that never occurs in the targets, left
    # out of the averages), and only the targets' void pixels are dropped, as in panopticapi.
    unassigned = max([*things, *stuffs]) + 1
    target_void = unassigned + 1
    metric = PanopticQuality(
        things=set(things), stuffs={*stuffs, unassigned}, allow_unknown_preds_category=True, return_sq_and_rq=True,
        return_per_class=True,
    )  # fmt: skip
    occurs: set[int] = set()
    for (pred_map, pred_segments), (true_map, true_segments) in zip(predictions, targets, strict=True):
        if tuple(pred_map.shape) != tuple(true_map.shape):
            raise ValueError(f"a prediction of size {tuple(pred_map.shape)} for a target of {tuple(true_map.shape)}")
        occurs |= {int(s["label_id"]) for s in (*pred_segments, *true_segments)}
        metric.update(
            category_instance_map(pred_map, pred_segments, unassigned)[None],
            category_instance_map(true_map, true_segments, target_void)[None],
        )  # (1, H, W, 2) each
    per_class = metric.compute()  # (C, 3): PQ, SQ, RQ per class (things sorted, then stuff sorted)
    order = sorted(things) + sorted({*stuffs, unassigned})
    out: dict[str, float | None] = {}
    for suffix, kind in (("", set(order)), ("_th", set(things)), ("_st", set(stuffs))):
        columns = [i for i, c in enumerate(order) if c in kind and c in occurs]
        for row, name in enumerate(("PQ", "SQ", "RQ")):
            out[name + suffix] = float(per_class[columns, row].mean()) if columns else None
    return out


def evaluate_panoptic(
    model: Any,
    panoptic: Any,
    images: Sequence[dict[str, Any]],
    image_dir: Any,
    category_of: Sequence[int | None],
    preprocessor: Any = None,
    threshold: float = 0.85,
) -> dict[str, float | None]:
    """PQ of a mask model (its ``panoptic(image, is_thing=..., threshold=...)``) on the images of a split
    with COCO panoptic annotations (:class:`detr.data.panoptic.PanopticAnnotations`); ``category_of`` maps
    the model's class ids to the dataset's category ids (None: a class the dataset lacks, not counted)."""
    from ..data.coco import read_image

    is_thing = [c is not None and c in panoptic.things for c in category_of]
    predictions, targets = [], []
    for info in images:
        if info["file_name"] not in panoptic.segments:
            continue
        found = model.panoptic(read_image(image_dir / info["file_name"]), is_thing=is_thing, threshold=threshold,
                               preprocessor=preprocessor)[0]  # fmt: skip
        segments = [
            {"id": s["id"], "label_id": category_of[s["label_id"]]}
            for s in found["segments_info"]
            if category_of[s["label_id"]] is not None
        ]
        ids, truth = panoptic.segment_map(info["file_name"])
        predictions.append((found["segmentation"], segments))
        targets.append(
            (
                torch.from_numpy(ids),
                [{"id": s["id"], "label_id": s["category_id"]} for s in truth if not s.get("iscrowd", 0)],
            )
        )
    return panoptic_quality(predictions, targets, panoptic.things, panoptic.stuffs)
