"""Evaluation of a model on a split: COCO box AP and mask AP (pycocotools), panoptic quality, the label map.

:func:`evaluate_model` is the one evaluation that ``detr train``, ``detr eval``, ``detr demo``, the export
gate and the benchmarks run: a PyTorch model or an exported one, the split read as the model reads images
(:func:`evaluation_dataset`), each measure the model and the data allow.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.coco import CocoDetection, CocoSplit
from ..data.transforms import collate, eval_transforms
from ..device import autocast
from ..processing.postprocess import postprocess
from ..processing.preprocess import ImagePreprocessor
from ..processing.tiling import Tiling, predict_tiled
from .config import METRICS as METRIC_NAMES

TASKS = ("boxes", "masks", "panoptic")  # what an evaluation may measure: box AP, mask AP, PQ


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
    outputs: list[tuple[Tensor, Tensor, Tensor]] | None = None,
) -> list[dict[str, Any]]:
    """Run ``model`` over a loader of (images, mask, targets) and return COCO results; ``outputs``, when
    given, receives each batch's last-layer (logits (B, Q, K+1), boxes (B, Q, 4), original sizes (B, 2)).

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
        with autocast(device, autocast_dtype):
            logits, boxes = model.decode(images, mask, all_layers=False)
        if outputs is not None:
            outputs.append(
                (logits[-1].float().cpu(), boxes[-1].float().cpu(), torch.stack([t["orig_size"] for t in targets]))
            )
        results += coco_detections(
            logits[-1], boxes[-1], targets, category_of, all_classes, max_detections, nms_iou
        )  # (B, Q, K+1), (B, Q, 4)
    return results


@torch.no_grad()
def predict_dataset_tiled(
    model: Any,
    dataset: CocoDetection,
    indices: Sequence[int],
    category_of: Sequence[int | None],
    tiling: Tiling,
    reading: ImagePreprocessor,
    max_detections: int = 100,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """COCO results (as :func:`predict_dataset`'s) of ``model`` through tiles on the images ``indices`` of
    ``dataset``: each image read unresized from its file, cut as ``tiling`` says, every query of every window
    kept and merged (:func:`detr.processing.tiling.predict_tiled`), each window read as ``reading``; the
    ``max_detections`` best of an image."""
    from tqdm import tqdm

    from ..data.coco import read_image

    results = []
    for index in tqdm(indices, desc="eval (tiles)", disable=not progress, leave=False):
        info = dataset.images[index]
        (found,) = predict_tiled(
            model, [read_image(dataset.image_dir / info["file_name"])], tiling.tile, tiling.overlap,
            tiling.full_image, k=model.num_queries, preprocessor=reading,
        )  # fmt: skip
        found = [d for d in found if category_of[d["class_id"]] is not None][:max_detections]
        results += [
            {
                "image_id": int(info["id"]),
                "category_id": category_of[d["class_id"]],
                "bbox": [d["box"][0], d["box"][1], d["box"][2] - d["box"][0], d["box"][3] - d["box"][1]],
                "score": d["score"],
            }
            for d in found
        ]
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
    max_detections: int = 100,
) -> dict[str, Any]:
    """COCO box metrics (``iou_type="segm"``: mask metrics) of ``results`` against a COCO ground-truth dict or file.

    ``max_detections``: the detections of an image that count, COCO's 100 by default; more for images with
    more objects than that (tiled prediction of large images), where AP and ``AR100`` are then at this many.

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
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if max_detections != 100:  # pycocotools' summary takes AP at 100 detections whatever maxDets says
        precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (iou, recall, class) at all areas, the last cap
        evaluator.stats[0] = float(np.mean(precision[precision > -1])) if (precision > -1).any() else -1.0
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


def evaluation_dataset(
    source: str | Path | CocoSplit,
    reading: ImagePreprocessor,
    split: str = "val",
    images: str | Path | None = None,
    masks: bool = False,
) -> CocoDetection:
    """``source``'s ``split`` (a dataset folder or annotation file, or a found :class:`CocoSplit`) as ``reading``
    (a model's ``preprocessing``) reads images: resized, normalised by its mean and std; :func:`evaluate_model`
    pads to its size divisor."""
    transforms = eval_transforms(reading.short_side, reading.max_size, reading.mean, reading.std)
    return CocoDetection(source, split, transforms, images=images, masks=masks)


@dataclass
class Evaluation:
    """What :func:`evaluate_model` measured: ``metrics`` (box metrics as :func:`coco_evaluate` returns them,
    with ``"masks"`` (mask metrics) and ``"panoptic"`` (PQ, SQ, RQ ...) where measured), the COCO box results,
    the mask results (COCO RLE) where measured, how the model's classes met the dataset's categories, and each
    batch's last-layer outputs when asked for (``keep_outputs``)."""

    metrics: dict[str, Any]
    results: list[dict[str, Any]]
    mask_results: list[dict[str, Any]] | None
    label_map: str
    outputs: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be measured, and why


def _has_masks(dataset: CocoDetection) -> bool:
    return any(s is not None for segs in dataset.annotations.segmentations.values() for s in segs)


def evaluate_model(
    model: Any,
    dataset: CocoDetection,
    *,
    reading: ImagePreprocessor | None = None,
    tasks: Collection[str] = TASKS,
    panoptic: tuple[Path, Path] | None = None,
    panoptic_threshold: float = 0.85,
    batch_size: int = 8,
    workers: int = 0,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    all_classes: bool = False,
    max_detections: int = 100,
    nms_iou: float | None = None,
    per_class: bool = False,
    keep_outputs: bool = False,
    shard: tuple[int, int] | None = None,
    gather: Callable[[Any], list[Any] | None] | None = None,
    tiling: Tiling | None = None,
) -> Evaluation | None:
    """Evaluate ``model`` (a DETR, a mask model, or an exported file's model) on ``dataset`` (read as
    ``reading``, the model's ``preprocessing`` by default: see :func:`evaluation_dataset`).

    Measured, of ``tasks``: COCO box AP; mask AP when the model predicts masks and the dataset has them; PQ
    when the model predicts masks and ``panoptic`` (the split's panoptic JSON and PNG folder,
    :func:`detr.data.panoptic.find_panoptic`) is given. Predictions are each query's best class (every
    query-class pair with ``all_classes``), the ``max_detections`` best of an image, optionally after NMS at
    ``nms_iou``. Under DDP each process predicts ``shard`` = (rank, world size)'s images and ``gather`` (e.g.
    :func:`detr.distributed.gather_to_main`) brings them to the main process, which scores them; the others
    get None. ``tiling``: large images, predicted through tiles (:func:`predict_dataset_tiled`; boxes only),
    with up to ``max_detections`` detections an image scored (COCO's 100 at least).
    """
    measured = _measurable(tasks, model, dataset, panoptic, tiling)
    reading = reading or model.preprocessing
    match = dataset.match_model(model)
    loader = _evaluation_loader(dataset, reading, batch_size, workers, shard)
    outputs: list[tuple[Tensor, Tensor, Tensor]] | None = [] if keep_outputs else None
    if tiling is not None:
        indices = _shard_indices(len(dataset), shard)
        results = predict_dataset_tiled(
            model, dataset, indices, match.category_of, tiling, reading, max_detections, progress
        )
    else:
        results = predict_dataset(
            model, loader, match.category_of, device, autocast_dtype, progress, all_classes, max_detections, nms_iou,
            outputs,
        )  # fmt: skip
    masks = "masks" in measured
    mask_results = predict_masks(model, loader, match.category_of, device, max_detections) if masks else None
    if (gathered := _gathered(gather, results, mask_results)) is None:
        return None  # a process other than the main one: the main one scores
    results, mask_results = gathered
    counted = max(100, max_detections) if tiling is not None else 100  # tiles give an image more than COCO's 100
    metrics = _coco_metrics(dataset, results, mask_results, per_class, counted)
    evaluation = Evaluation(metrics, results, mask_results, match.describe(), outputs or [])
    if "panoptic" in measured and panoptic is not None:
        _panoptic_quality(model, dataset, panoptic, reading, panoptic_threshold, evaluation)
    return evaluation


def _measurable(
    tasks: Collection[str],
    model: Any,
    dataset: CocoDetection,
    panoptic: tuple[Path, Path] | None,
    tiling: Tiling | None,
) -> set[str]:
    """Of ``tasks`` (checked to be among :data:`TASKS`), those ``model`` and ``dataset`` allow: boxes always, masks
    when the model predicts masks and the dataset has them (not through tiles), PQ when the model predicts masks
    and the split's panoptic files are given."""
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"tasks must be among {TASKS}, got {sorted(unknown)}")
    measured = {"boxes"}
    if "masks" in tasks and model.task == "masks" and _has_masks(dataset) and tiling is None:
        measured.add("masks")
    if "panoptic" in tasks and model.task == "masks" and panoptic is not None:
        measured.add("panoptic")
    return measured


def _shard_indices(count: int, shard: tuple[int, int] | None) -> range:
    """The indices of a split of ``count`` images that a process predicts: all, or with ``shard`` = (rank, world
    size) every world size-th image from its rank."""
    return range(count) if shard is None else range(shard[0], count, shard[1])


def _evaluation_loader(
    dataset: CocoDetection, reading: ImagePreprocessor, batch_size: int, workers: int, shard: tuple[int, int] | None
) -> Any:
    """A DataLoader of ``dataset``'s (``shard``'s) images in batches padded to ``reading``'s size divisor."""
    from torch.utils.data import DataLoader, Subset

    part = dataset if shard is None else Subset(dataset, _shard_indices(len(dataset), shard))
    return DataLoader(
        part,
        batch_size=batch_size,
        collate_fn=functools.partial(collate, size_divisor=reading.size_divisor),
        num_workers=workers,
    )


def _gathered(
    gather: Callable[[Any], list[Any] | None] | None,
    results: list[dict[str, Any]],
    mask_results: list[dict[str, Any]] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None] | None:
    """Every process's box and mask results in the main process (``gather``: see :func:`evaluate_model`), None
    in the others; without ``gather`` this process's own."""
    if gather is None:
        return results, mask_results
    shards = gather((results, mask_results))
    if shards is None:
        return None
    masks = [r for _, found in shards for r in found] if mask_results is not None else None
    return [r for found, _ in shards for r in found], masks


def _coco_metrics(
    dataset: CocoDetection,
    results: list[dict[str, Any]],
    mask_results: list[dict[str, Any]] | None,
    per_class: bool,
    max_detections: int,
) -> dict[str, Any]:
    """The box metrics of ``results`` on ``dataset``'s ground truth (:func:`coco_evaluate`), with ``"masks"``, the
    mask metrics, where mask results are given."""
    metrics = coco_evaluate(dataset.annotations.raw, results, per_class=per_class, max_detections=max_detections)
    if mask_results is not None:
        metrics["masks"] = coco_evaluate(dataset.annotations.raw, mask_results, iou_type="segm")
    return metrics


def _panoptic_quality(
    model: Any,
    dataset: CocoDetection,
    found: tuple[Path, Path],
    reading: ImagePreprocessor,
    threshold: float,
    evaluation: Evaluation,
) -> None:
    """PQ into ``evaluation.metrics["panoptic"]``, the model's classes matched to the panoptic file's categories
    (things and stuff, which a model of things alone lacks: then a note says why there is no PQ)."""
    from ..data.labels import match_categories
    from ..data.panoptic import read_panoptic
    from .panoptic_eval import evaluate_panoptic

    annotations = read_panoptic(*found)
    categories = sorted((int(c["id"]), str(c["name"])) for c in annotations.categories)
    try:
        match = match_categories(
            model.num_classes, model.class_names, model.category_ids, categories, source=str(found[0])
        )
    except ValueError as err:
        evaluation.notes.append(f"panoptic: no PQ ({err})")
        return
    evaluation.metrics["panoptic"] = evaluate_panoptic(
        model, annotations, dataset.images, dataset.image_dir, match.category_of, reading, threshold
    )


def format_metrics(metrics: dict[str, Any], names: tuple[str, ...] = METRIC_NAMES[:6]) -> str:
    """``AP 0.412  AP50 0.651 ...``, ``n/a`` for what the split cannot measure."""
    return "  ".join(f"{name} {'n/a' if metrics[name] is None else format(metrics[name], '.3f')}" for name in names)
