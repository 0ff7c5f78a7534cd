"""``detr eval``: COCO box AP (and mask AP, PQ where model and data have them) of a model on a dataset split,
through :func:`detr.engine.evaluate.evaluate_model`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..engine.config import DATASET_HELP  # the standard library only: start-up stays light
from .flags import DEVICE_HELP, EXPORTED_HELP, MODEL_HELP, add_tile_flags, add_val_fraction_flag, held_out_fraction
from .inputs import load_for_inference

HELP = "COCO box AP of a model on a dataset split"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help=f"dataset: {DATASET_HELP}")
    p.add_argument("--split", default="val", help="split of --data to evaluate (train, val, valid, test)")
    p.add_argument("--images", help="folder of the images of an annotation file (default: found next to it)")
    p.add_argument("--weights", required=True, help=EXPORTED_HELP)
    add_val_fraction_flag(p, of_run=True)
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--size", type=int, help="short side of the evaluation resize (default: the model's, else 800)")
    p.add_argument("--max-size", type=int, help="longest side after the resize (default: the model's, else 1333)")
    p.add_argument("--batch-size", type=int, default=2, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes (0: in this process)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--per-class", action="store_true", help="also print AP per class")
    p.add_argument(
        "--all-classes", action="store_true", help="score every query-class pair, not only each query's best class"
    )
    p.add_argument("--max-detections", type=int, default=100, help="detections kept per image, the best over all")
    add_tile_flags(p)
    p.add_argument("--nms", type=float, help="class-aware NMS at this IoU before scoring (default: none, as DETR)")
    p.add_argument("--out", help="write the metrics and the predictions to this JSON file")
    p.add_argument("--results", help="write the predictions as COCO results JSON (as other tools read them)")
    p.add_argument(
        "--report", help="write report.json and pictures (PR curves, AP per class and size, confusion, errors) here"
    )
    p.add_argument(
        "--report-threshold", type=float, default=0.5, help="score from which a detection counts in the confusion"
    )
    p.add_argument(
        "--panoptic-threshold", type=float, default=0.85, help="mask models: least score of a panoptic segment (PQ)"
    )


def run(args: argparse.Namespace) -> int:
    from ..data import find_split
    from ..data.panoptic import find_panoptic
    from ..device import resolve_device
    from ..engine.evaluate import evaluate_model, evaluation_dataset
    from ..processing.tiling import Tiling

    device = resolve_device(args.device)
    model = load_for_inference(args.weights, args.model, device, args.device)
    reading = model.preprocessing.with_sizes(args.size, args.max_size)  # the model's, unless flags say otherwise
    # a dataset without a validation split: the share the run (its split.json) held out, the same images
    fraction = held_out_fraction(args)
    dataset = evaluation_dataset(find_split(args.data, args.split, args.images, fraction), reading)
    if dataset.split_note:
        print(f"{args.split}: {len(dataset)} images, {dataset.split_note} = {fraction:g}")
    dataset.check_images()
    print(f"label map: {dataset.match_model(model).describe()}")
    evaluation = evaluate_model(
        model.to(device), dataset, reading=reading, batch_size=args.batch_size, workers=args.workers, device=device,
        progress=True, all_classes=args.all_classes, max_detections=args.max_detections, nms_iou=args.nms,
        per_class=args.per_class, panoptic=find_panoptic(args.data, args.split) if Path(args.data).is_dir() else None,
        panoptic_threshold=args.panoptic_threshold, tiling=Tiling(args.tile, args.tile_overlap, args.tile_full_image)
        if args.tile else None,
    )  # fmt: skip
    _print_metrics(evaluation.metrics, evaluation.notes, args.per_class)
    _write_files(args, dataset, evaluation.metrics, evaluation.results)
    return 0


def _print_metrics(metrics: dict[str, Any], notes: list[str], per_class: bool) -> None:
    from ..engine.evaluate import METRIC_NAMES, format_metrics

    print(format_metrics(metrics))
    print(format_metrics(metrics, METRIC_NAMES[6:]))
    if "masks" in metrics:  # a mask model on data with masks
        print("masks: " + format_metrics(metrics["masks"], ("AP", "AP50", "AP75", "APs", "APm", "APl")))
    if "panoptic" in metrics:  # and panoptic annotations
        print("panoptic: " + format_metrics(metrics["panoptic"], ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")))
    for note in notes:
        print(note)
    if per_class:
        for name, ap in metrics["per_class_AP"].items():
            print(f"  {name:<20} AP {ap:.3f}")


def _write_files(args: argparse.Namespace, dataset: Any, metrics: dict[str, Any], results: list[dict]) -> None:
    """--out (metrics and predictions), --results (COCO results) and --report (report.json and pictures)."""
    from ..engine.evaluate import format_metrics
    from ..fileio import atomic_write_text

    if args.out:
        atomic_write_text(args.out, json.dumps({"metrics": metrics, "predictions": results}, indent=1))
        print(f"wrote {args.out}")
    if args.results:
        atomic_write_text(args.results, json.dumps(results))
        print(f"wrote {args.results} (COCO results)")
    if args.report:
        from ..engine.report import evaluation_report

        report = evaluation_report(dataset.annotations.raw, results, args.report, args.report_threshold)
        errors = ", ".join(f"{k} {v}" for k, v in report["errors"].items())
        print(f"wrote the report to {args.report} (detections scored >= {args.report_threshold}: {errors})")
        nms = report["with_nms"]
        print(
            f"after NMS at IoU {nms['iou']} ({nms['detections_removed']} detections removed): "
            f"{format_metrics(nms['metrics'], ('AP', 'AP50', 'AP75'))}, {nms['errors']['duplicate']} duplicates"
        )
