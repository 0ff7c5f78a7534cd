"""An evaluation report a person can read: where the model is right, where it errs, and how.

``evaluation_report(ground_truth, results, out)`` writes ``report.json`` and PNGs:

- precision-recall curves at IoU 0.5 and 0.75, over all classes and per class (pycocotools' own
  interpolated precision, all object sizes, 100 detections);
- AP per class (bars) and AP by object size (n/a where a split has no object of that size);
- a confusion matrix at IoU 0.5 of the detections scored at least ``score_threshold``, with a
  background row (detections matching no object) and column (objects no detection found);
- error counts in the spirit of TIDE (Bolya et al. 2020), each detection (best first) counted once:
  ``correct`` (IoU >= 0.5 with an unmatched object of its class), ``duplicate`` (such an object, but
  already matched by a better detection), ``localisation`` (0.1 <= IoU < 0.5 with an object of its
  class), ``classification`` (else IoU >= 0.5 with an object of another class), ``both`` (else
  IoU >= 0.1 with an object of another class), ``background`` (IoU < 0.1 with every object); and
  ``missed``: objects no correct detection found. Crowd objects are left out. The other types agree
  with the ``tidecv`` package's error instances on random cases (``bench/tide_agreement.py``); its
  "missed" counts only the objects that no other error explains;
- the same metrics and error counts after class-aware NMS (``nms_iou``, 0.7) of the detections, so
  that a user sees what duplicates cost and whether NMS would pay (DETR's default is none).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write, atomic_write_text
from .evaluate import coco_evaluate

ERRORS = ("correct", "duplicate", "classification", "localisation", "both", "background", "missed")
# classes a confusion-matrix picture shows by name: beyond about 20 its labels no longer read (80 classes made a
# 3035 x 2985 px picture); the rest are summed in one "other classes" row and column, report.json keeps all
CONFUSION_SHOWN = 20


def _xyxy(box: list[float]) -> np.ndarray:
    x, y, w, h = box
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4 xyxy) with every box of ``b`` (M, 4): (N, M)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def error_analysis(
    ground_truth: dict[str, Any], results: list[dict[str, Any]], score_threshold: float = 0.5
) -> dict[str, Any]:
    """The error counts and the confusion matrix (see the module docstring).

    Returns ``{"errors": {name: count}, "confusion": {"labels": [category names..., "background"],
    "matrix": [[...]]}}``. Rows are the detections' classes, columns the objects' classes:
    ``matrix[i][j]`` counts detections of class i that cover an object of class j (IoU >= 0.5); the last
    column (background) counts detections of class i that cover no object, the last row the objects
    of class j that no detection found. Duplicates are counted in the errors only.
    """
    categories = sorted(c["id"] for c in ground_truth["categories"])
    index = {cid: i for i, cid in enumerate(categories)}
    objects = _by_image(ann for ann in ground_truth["annotations"] if not ann.get("iscrowd", 0))
    detections = _by_image(d for d in results if d["score"] >= score_threshold and d["category_id"] in index)
    errors = dict.fromkeys(ERRORS, 0)
    matrix = np.zeros((len(categories) + 1, len(categories) + 1), dtype=np.int64)
    for image in ground_truth["images"]:
        gts = [(index[g["category_id"]], g["bbox"]) for g in objects.get(image["id"], [])]
        best_first = sorted(detections.get(image["id"], []), key=lambda d: -d["score"])
        dets = [(index[d["category_id"]], d["bbox"]) for d in best_first]
        _count_image(gts, dets, errors, matrix)
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    return {
        "errors": errors,
        "confusion": {"labels": [names[c] for c in categories] + ["background"], "matrix": matrix.tolist()},
    }


def _by_image(records: Iterable[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """COCO annotations or results grouped by their ``image_id``, in their order."""
    grouped: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(record["image_id"], []).append(record)
    return grouped


def _count_image(
    objects: list[tuple[int, list[float]]],
    detections: list[tuple[int, list[float]]],
    errors: dict[str, int],
    matrix: np.ndarray,
) -> None:
    """Add one image's error counts and confusions (see :func:`error_analysis`) to ``errors`` and ``matrix``
    ((K + 1, K + 1), its last row and column background). ``objects`` and ``detections``: (class index,
    [x, y, w, h]) each, the detections best first."""
    k = len(matrix) - 1
    gt_boxes = np.array([_xyxy(box) for _, box in objects]).reshape(-1, 4)
    gt_class = np.array([cls for cls, _ in objects], dtype=np.int64)
    matched = np.zeros(len(objects), dtype=bool)
    for cls, box in detections:
        ious = _iou(_xyxy(box)[None], gt_boxes)[0]
        same = gt_class == cls
        free = same & ~matched & (ious >= 0.5)
        if free.any():
            matched[int(np.argmax(np.where(free, ious, -1)))] = True
            errors["correct"] += 1
            matrix[cls, cls] += 1
        elif (same & (ious >= 0.5)).any():
            errors["duplicate"] += 1
        else:
            errors[_false_positive_error(same, ious)] += 1
            covered = ~same & (ious >= 0.5)  # the confusion: which object it covers, if any
            matrix[cls, gt_class[int(np.argmax(np.where(covered, ious, -1)))] if covered.any() else k] += 1
    errors["missed"] += int((~matched).sum())
    for j in np.flatnonzero(~matched):
        matrix[k, gt_class[j]] += 1


def _false_positive_error(same: np.ndarray, ious: np.ndarray) -> str:
    """A false positive's error as TIDE names it, checked in TIDE's order, from its IoU with each object
    (``ious``) and whether each object is of its class (``same``)."""
    if (same & (ious >= 0.1)).any():
        return "localisation"
    if (~same & (ious >= 0.5)).any():
        return "classification"
    if (ious >= 0.1).any():
        return "both"
    return "background"


def most_confused(matrix: np.ndarray, count: int = CONFUSION_SHOWN) -> list[int]:
    """Indices (in order) of the ``count`` classes of a confusion ``matrix`` ((K + 1, K + 1), its last row and column
    background, see :func:`error_analysis`) with the most detections of one class covering an object of another,
    either way; ties go to the most errors against the background, then to the most objects."""
    k = len(matrix) - 1
    classes = matrix[:k, :k]
    between = classes.sum(0) + classes.sum(1) - 2 * np.diag(classes)  # confusions as detection or as object
    background = matrix[:k, k] + matrix[k, :k]
    order = np.lexsort((-classes.sum(0), -background, -between))  # the last key sorts first
    return sorted(order[:count].tolist())


def confusion_view(labels: list[str], matrix: np.ndarray, count: int = CONFUSION_SHOWN) -> tuple[list[str], np.ndarray]:
    """A confusion matrix small enough to read: with more than ``count`` classes, the :func:`most_confused`
    ones, the others summed into one "other (N classes)" row and column before the background's."""
    k = len(labels) - 1
    if k <= count:
        return labels, matrix
    shown = most_confused(matrix, count)
    rest = [i for i in range(k) if i not in set(shown)]
    groups = [[i] for i in shown] + [rest, [k]]  # each shown row/column: the sum of its group's
    view = np.array([[matrix[np.ix_(rows, cols)].sum() for cols in groups] for rows in groups])
    return [labels[i] for i in shown] + [f"other ({len(rest)} classes)", labels[k]], view


def precision_recall(ground_truth: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """pycocotools' interpolated precision at 101 recall points, at IoU 0.5 and 0.75 (all sizes, 100
    detections): ``{"recall": [...], "iou_0.5": {"all": [...], <class name>: [...]}, "iou_0.75": ...}``,
    None where a class has no object; ``"ap_per_class"`` and ``"ap_by_size"`` (None where not measurable)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_data = copy.deepcopy(ground_truth)
    gt_data.setdefault("info", {})
    gt_data.setdefault("licenses", [])
    for ann in gt_data["annotations"]:
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    names = {c["id"]: c["name"] for c in gt_data["categories"]}
    if not results:
        return {"recall": [], "ap_per_class": dict.fromkeys(names.values()), "ap_by_size": {}}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # (IoU 10, recall 101, classes, areas 4, max dets 3)
    ious = list(np.round(evaluator.params.iouThrs, 2))

    def curve(values: np.ndarray) -> list[float] | None:
        return None if (values < 0).all() else [float(max(v, 0.0)) for v in values]

    out: dict[str, Any] = {"recall": [float(r) for r in evaluator.params.recThrs]}
    for threshold in (0.5, 0.75):
        t = ious.index(threshold)
        per_class = {names[cid]: curve(precision[t, :, k, 0, -1]) for k, cid in enumerate(evaluator.params.catIds)}
        measured = [c for c in per_class.values() if c is not None]
        out[f"iou_{threshold}"] = {
            "all": [float(np.mean(v)) for v in zip(*measured)] if measured else None,
            **per_class,
        }
    ap = {}
    for k, cid in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        ap[names[cid]] = float(p[p > -1].mean()) if (p > -1).any() else None
    out["ap_per_class"] = ap
    out["ap_by_size"] = {
        name: (None if value < 0 else float(value))
        for name, value in zip(("small", "medium", "large"), evaluator.stats[3:6])
    }
    return out


def nms_results(results: list[dict[str, Any]], iou: float) -> list[dict[str, Any]]:
    """COCO results after class-aware NMS per image (``torchvision.ops.batched_nms`` at ``iou``), in
    their order otherwise."""
    import torch
    from torchvision.ops import batched_nms, box_convert

    by_image: dict[int, list[int]] = {}
    for i, r in enumerate(results):
        by_image.setdefault(r["image_id"], []).append(i)
    kept: list[int] = []
    for indices in by_image.values():
        boxes = box_convert(torch.tensor([results[i]["bbox"] for i in indices], dtype=torch.float64), "xywh", "xyxy")
        scores = torch.tensor([results[i]["score"] for i in indices], dtype=torch.float64)
        labels = torch.tensor([results[i]["category_id"] for i in indices])
        kept += [indices[j] for j in batched_nms(boxes, scores, labels, iou).tolist()]
    return [results[i] for i in sorted(kept)]


def evaluation_report(
    ground_truth: dict[str, Any],
    results: list[dict[str, Any]],
    out: str | Path,
    score_threshold: float = 0.5,
    nms_iou: float = 0.7,
) -> dict[str, Any]:
    """Write ``report.json``, ``pr_curves.png``, ``ap_per_class.png``, ``ap_by_size.png`` and
    ``confusion_matrix.png`` into ``out`` (see the module docstring); returns the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "metrics": coco_evaluate(ground_truth, results),
        "score_threshold": score_threshold,
        **precision_recall(ground_truth, results),
        **error_analysis(ground_truth, results, score_threshold),
    }
    suppressed = nms_results(results, nms_iou)
    report["with_nms"] = {
        "iou": nms_iou,
        "detections_removed": len(results) - len(suppressed),
        "metrics": coco_evaluate(ground_truth, suppressed),
        "errors": error_analysis(ground_truth, suppressed, score_threshold)["errors"],
    }

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        atomic_write(out / name, lambda tmp: fig.savefig(tmp, format="png"))
        plt.close(fig)

    _plot_pr_curves(plt, report, save)
    _plot_ap_per_class(plt, report, save)
    _plot_ap_by_size(plt, report, save)
    _plot_confusion(plt, report, score_threshold, save)
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    return report


def _plot_pr_curves(plt: Any, report: dict[str, Any], save: Callable[[Any, str], None]) -> None:
    """``pr_curves.png``: precision against recall at IoU 0.5 and 0.75, ten classes and all of them."""
    classes = list(report["ap_per_class"])
    if report["recall"]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
        for ax, threshold in zip(axes, (0.5, 0.75)):
            curves = report[f"iou_{threshold}"]
            for name in classes[:10]:
                if curves[name] is not None:
                    ax.plot(report["recall"], curves[name], linewidth=1, alpha=0.6, label=name)
            if curves["all"] is not None:
                ax.plot(report["recall"], curves["all"], color="black", linewidth=2.5, label="all classes")
            ax.set(
                xlabel="recall",
                ylabel="precision",
                title=f"precision-recall at IoU {threshold}",
                xlim=(0, 1),
                ylim=(0, 1.02),
            )
            ax.legend(fontsize=7, loc="lower left")
        save(fig, "pr_curves.png")


def _plot_ap_per_class(plt: Any, report: dict[str, Any], save: Callable[[Any, str], None]) -> None:
    """``ap_per_class.png``: one bar a class, grey where the split has no object of it."""
    classes = list(report["ap_per_class"])
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(classes) + 2), 4), dpi=100)
    values = [report["ap_per_class"][n] for n in classes]
    ax.bar(
        range(len(classes)),
        [v if v is not None else 0 for v in values],
        color=["C0" if v is not None else "0.8" for v in values],
    )
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=90 if len(classes) > 8 else 0, fontsize=7 if len(classes) > 20 else 9)
    ax.set(ylabel="AP (IoU 0.50:0.95)", ylim=(0, 1), title="AP per class (grey: no object of the class)")
    save(fig, "ap_per_class.png")


def _plot_ap_by_size(plt: Any, report: dict[str, Any], save: Callable[[Any, str], None]) -> None:
    """``ap_by_size.png``: AP of small, medium and large objects (COCO's areas)."""
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    sizes = report["ap_by_size"]
    for i, (name, value) in enumerate(sizes.items()):
        ax.bar(i, value if value is not None else 0, color="C0" if value is not None else "0.85")
        ax.text(i, (value or 0) + 0.02, "n/a" if value is None else f"{value:.3f}", ha="center")
    ax.set_xticks(range(len(sizes)))
    ax.set_xticklabels([f"{n}\n({r})" for n, r in zip(sizes, ("< 32 px", "32-96 px", "> 96 px"))])
    ax.set(ylabel="AP", ylim=(0, 1.1), title="AP by object size")
    save(fig, "ap_by_size.png")


def _plot_confusion(plt: Any, report: dict[str, Any], score_threshold: float, save: Callable[[Any, str], None]) -> None:
    """``confusion_matrix.png``: the most confused classes' matrix (all of it is in ``report.json``)."""
    all_labels = report["confusion"]["labels"]
    labels, matrix = confusion_view(all_labels, np.array(report["confusion"]["matrix"]))
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * n + 2), max(4.5, 0.35 * n + 1.5)), dpi=100)
    ax.imshow(np.log1p(matrix), cmap="Blues")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set(xlabel="object's class (background: no object)", ylabel="detection's class (background: missed)")
    title = f"confusion at IoU 0.5, score >= {score_threshold}"
    if len(labels) < len(all_labels):
        title += f"\nthe {n - 2} most confused of {len(all_labels) - 1} classes (all in report.json)"
    ax.set_title(title)
    save(fig, "confusion_matrix.png")
