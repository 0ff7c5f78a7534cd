"""COCO box and mask evaluation (pycocotools) of a DETR on a dataset."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..processing.postprocess import postprocess
from .config import METRICS as METRIC_NAMES


@torch.no_grad()
def predict_dataset(
    model: torch.nn.Module,
    loader: Iterable[tuple[Tensor, Tensor, list[dict[str, Any]]]],
    category_of: Sequence[int | None],
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    all_classes: bool = False,
    max_detections: int = 100,
    nms_iou: float | None = None,
) -> list[dict[str, Any]]:
    """Run ``model`` over a loader of (images, mask, targets) and return COCO results.

    ``category_of`` maps a class id to the dataset's category id (None: a class the dataset lacks,
    whose detections are left out; see :func:`detr.data.labels.match_categories`).

    Each result is ``{"image_id", "category_id", "bbox": [x, y, w, h] pixels of the original
    image, "score"}``; every query's best class is kept (AP is computed over the ranking), or
    with ``all_classes`` every query-class pair (see :func:`detr.processing.postprocess.postprocess`);
    the ``max_detections`` best of an image are kept (COCO's protocol counts 100; pycocotools alone
    would keep 100 per image and class).
    """
    from tqdm import tqdm

    from ..terminal import progress_bars

    model.eval()
    results = []
    device = torch.device(device)
    for images, mask, targets in tqdm(loader, desc="eval", disable=not progress_bars(progress), leave=False):
        images, mask = images.to(device), mask.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits, boxes = model.decode(images, mask, all_layers=False)
        results += coco_detections(
            logits[-1], boxes[-1], targets, category_of, all_classes, max_detections, nms_iou
        )  # (B, Q, K+1), (B, Q, 4)
    return results


def coco_detections(
    logits: Tensor,
    boxes: Tensor,
    targets: Sequence[dict[str, Any]],
    category_of: Sequence[int | None],
    all_classes: bool = False,
    max_detections: int = 100,
    nms_iou: float | None = None,
) -> list[dict[str, Any]]:
    """One batch's outputs (logits (B, Q, K+1), boxes (B, Q, 4) normalized cxcywh) as COCO results
    for ``targets`` (their ``image_id`` and ``orig_size``), as :func:`predict_dataset` describes."""
    results = []
    sizes = torch.stack([t["orig_size"] for t in targets]).to(logits.device)
    for target, det in zip(
        targets, postprocess(logits.float(), boxes.float(), sizes, all_classes=all_classes, nms_iou=nms_iou)
    ):
        xyxy = det["boxes"].cpu()
        xywh = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], dim=1)
        kept = 0
        for box, score, label in zip(xywh.tolist(), det["scores"].tolist(), det["labels"].tolist()):
            if category_of[label] is None:  # a class the dataset does not have
                continue
            results.append(
                {"image_id": int(target["image_id"]), "category_id": category_of[label], "bbox": box, "score": score}
            )
            kept += 1
            if kept == max_detections:  # sorted by score: the best of the image's detections
                break
    return results


@torch.no_grad()
def predict_masks(
    model: torch.nn.Module,
    loader: Iterable[tuple[Tensor, Tensor, list[dict[str, Any]]]],
    category_of: Sequence[int | None],
    device: torch.device | str = "cpu",
    max_detections: int = 100,
) -> list[dict[str, Any]]:
    """A mask model's COCO segmentation results over a loader: ``{"image_id", "category_id",
    "segmentation": compressed RLE (counts as str), "score"}``, each query's best class, the
    ``max_detections`` best per image, masks by the reference's rule in the original image's pixels
    (:func:`detr.processing.mask_postprocess.query_masks`)."""
    from ..processing.interop import mask_to_rle
    from ..processing.mask_postprocess import query_masks

    model.eval()
    device = torch.device(device)
    results = []
    for images, mask, targets in loader:
        images, mask = images.to(device), mask.to(device)
        logits, boxes, masks = model.decode_with_masks(images, mask)  # (B, Q, K+1), (B, Q, 4), (B, Q, h, w)
        sizes = torch.stack([t["orig_size"] for t in targets])
        for target, found, image_masks in zip(targets, postprocess(logits, boxes, sizes), masks):
            size = tuple(int(v) for v in target["orig_size"])
            resized = tuple(int(v) for v in target["size"])
            kept = [
                (q, s, c) for q, s, c in zip(found["queries"].tolist(), found["scores"].tolist(), found["labels"].tolist())
                if category_of[c] is not None
            ][:max_detections]  # fmt: skip
            if not kept:
                continue
            binary = query_masks(image_masks[[q for q, _, _ in kept]], size, resized, tuple(images.shape[-2:]))
            for (_, score, label), mask in zip(kept, binary.cpu().numpy()):
                rle = mask_to_rle(mask)
                results.append(
                    {
                        "image_id": int(target["image_id"]),
                        "category_id": category_of[label],
                        "segmentation": rle,
                        "score": score,
                    }
                )
    return results


def coco_evaluate(
    ground_truth: dict[str, Any] | str | Path,
    results: list[dict[str, Any]],
    per_class: bool = False,
    iou_type: str = "bbox",
) -> dict[str, Any]:
    """COCO box metrics (``iou_type="segm"``: mask metrics) of ``results`` against a COCO ground-truth dict or file.

    Returns ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", ..., "ARl"}`` (fractions in
    [0, 1], None for what the split cannot measure, e.g. APl without large objects) and with
    ``per_class`` also ``"per_class_AP": {category name: AP}``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if isinstance(ground_truth, (str, Path)):
        ground_truth = json.loads(Path(ground_truth).read_text())
    gt_data = copy.deepcopy(ground_truth)
    gt_data.setdefault("info", {})
    gt_data.setdefault("licenses", [])
    for ann in gt_data["annotations"]:  # pycocotools needs an area to bucket boxes by size
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
        if not results:
            return {name: 0.0 for name in METRIC_NAMES} | ({"per_class_AP": {}} if per_class else {})
        found = copy.deepcopy(results)
        for result in found:  # pycocotools decodes compressed RLE counts from bytes (JSON holds them as str)
            if isinstance(result.get("segmentation", {}).get("counts"), str):
                result["segmentation"]["counts"] = result["segmentation"]["counts"].encode("ascii")
        dt = gt.loadRes(found)
        evaluator = COCOeval(gt, dt, iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # pycocotools says -1 for what a split cannot measure (no large objects in 64 px images): None, "n/a"
    metrics: dict[str, Any] = {name: (None if v < 0 else float(v)) for name, v in zip(METRIC_NAMES, evaluator.stats)}
    if per_class:
        precision = evaluator.eval["precision"]  # (iou, recall, class, area, max dets)
        names = {c["id"]: c["name"] for c in gt_data["categories"]}
        per = {}
        for k, cat_id in enumerate(evaluator.params.catIds):
            p = precision[:, :, k, 0, -1]
            per[names[cat_id]] = float(np.mean(p[p > -1])) if (p > -1).any() else float("nan")
        metrics["per_class_AP"] = per
    return metrics


def format_metrics(metrics: dict[str, Any], names: tuple[str, ...] = METRIC_NAMES[:6]) -> str:
    """``AP 0.412  AP50 0.651 ...``, ``n/a`` for what the split cannot measure."""
    return "  ".join(f"{name} {'n/a' if metrics[name] is None else format(metrics[name], '.3f')}" for name in names)
