"""``detr predict``: detections for image files (:func:`detr.engine.predict.predict_files`), written by
:class:`detr.engine.outputs.PredictionWriter`; this module reads the flags and reports progress."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine.config import DATASET_HELP  # the standard library only: start-up stays light
from .flags import BF16_HELP, EXPORTED_HELP, MAX_SIZE_HELP, SIZE_HELP, add_image_flags, add_tile_flags
from .inputs import image_paths, load_for_inference

if TYPE_CHECKING:
    from ..engine.outputs import PredictionWriter

HELP = "detect objects in images; writes JSON and the images with boxes drawn"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_flags(p, out="predictions", what="predictions", weights=EXPORTED_HELP)
    p.add_argument("--k", type=int, default=100, help="at most this many detections per image (with --tile: per tile)")
    add_tile_flags(p)
    p.add_argument("--max-detections", type=int, help="with --tile: at most this many per image (default: all)")
    p.add_argument("--nms", type=float, help="drop a box overlapping a better one of its class above this IoU")
    p.add_argument("--size", type=int, help=SIZE_HELP)
    p.add_argument("--max-size", type=int, help=MAX_SIZE_HELP)
    p.add_argument("--strict", action="store_true", help="exit with an error when any image cannot be read")
    p.add_argument(
        "--yolo-labels", action="store_true", help="also write labels/<image>.txt (YOLO: class cx cy w h score)"
    )
    p.add_argument(
        "--batch-size", type=int, default=4, help="images per forward pass (batched with others of their size)"
    )
    p.add_argument("--bf16", action="store_true", help=BF16_HELP)
    p.add_argument("--classes", nargs="+", help="keep only these classes (names or ids, e.g. --classes cat dog)")
    p.add_argument(
        "--show-gt", metavar="DATA", help=f"draw the ground truth (white) of this dataset, by file name; {DATASET_HELP}"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _tiling(args: argparse.Namespace) -> dict[str, Any]:
    """predict's tiling arguments from --tile and the flags that go with it (none without --tile)."""
    if args.tile is None:
        if args.tile_full_image or args.max_detections is not None:
            raise SystemExit("error: --tile-full-image and --max-detections go with --tile (without it --k caps)")
        return {}
    return {
        "tile": args.tile,
        "tile_overlap": args.tile_overlap,
        "tile_full_image": args.tile_full_image,
        "max_detections": args.max_detections,
    }


def _classes(args: argparse.Namespace, model: Any) -> list[str] | None:
    """--classes, split at commas, checked against the model's classes."""
    classes = [c for item in args.classes for c in item.split(",") if c] if args.classes else None
    if classes:
        from ..processing.postprocess import class_ids

        try:
            class_ids(classes, model.class_names, model.num_classes)
        except ValueError as err:
            raise SystemExit(f"error: --classes: {err}") from None
    return classes


def _output_folder(args: argparse.Namespace) -> Path:
    """--out, or out-2 ... when it holds earlier predictions and --exist-ok is not given."""
    from ..fileio import free_folder, holds_any

    out = Path(args.out)
    if not args.exist_ok:
        out = free_folder(out, lambda p: holds_any(p, ("detections.json",)))
        if out != Path(args.out):
            print(f"{args.out} holds earlier predictions, left as they are: writing to {out}")
    return out


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..device import resolve_device
    from ..engine.outputs import PredictionWriter
    from ..engine.predict import ground_truth_by_name, predict_files
    from ..terminal import progress_bars

    device = resolve_device(args.device)
    model = load_for_inference(args.weights, args.model, device, args.device)
    exported = not isinstance(model, torch.nn.Module)
    if exported and args.bf16:
        raise SystemExit(
            "error: --bf16 applies to PyTorch weights; an exported file has its own precision "
            "(detr export --precision fp16)"
        )
    classes = _classes(args, model)
    paths = image_paths(args.images)
    truth = ground_truth_by_name(args.show_gt) if args.show_gt else {}
    writer = PredictionWriter(
        _output_folder(args), paths, model.category_ids, yolo_labels=args.yolo_labels, truth=truth
    )
    preprocessor = model.preprocessing.with_sizes(args.size, args.max_size)  # the model's, unless flags say otherwise
    masks = model.task == "masks"  # a mask model predicts through itself: its detections carry masks
    if masks and args.bf16:
        raise SystemExit("error: --bf16 is for detection models; a mask model predicts in float32")
    fast = (
        model
        if exported or masks
        else model.optimize_for_inference(dtype=torch.bfloat16 if args.bf16 else torch.float32)
    )
    predictions = predict_files(
        fast, paths, preprocessor, args.batch_size, k=args.k, score_threshold=args.threshold, nms=args.nms,
        classes=classes, **_tiling(args),
    )  # fmt: skip
    bar = tqdm(
        total=len(paths), desc="predict", unit="img", disable=not progress_bars(not args.no_progress), leave=False
    )
    for result in predictions:
        bar.update()
        writer.add(result)
        if result.error is not None:
            bar.write(f"skipped {result.path}: {result.error}", file=sys.stderr)
            continue
        dets = result.detections
        best = f", best {dets[0].get('class_name', dets[0]['class_id'])} {dets[0]['score']:.2f}" if dets else ""
        bar.write(f"{result.path}: {len(dets)} detections{best}")
    bar.close()
    return _summary(args, writer, writer.finish())


def _summary(args: argparse.Namespace, writer: PredictionWriter, report: dict[str, list]) -> int:
    """What was written, and the exit status: 1 when no image could be read, or any could not with --strict."""
    skipped = writer.skipped
    if args.show_gt:
        print(
            f"ground truth (white) drawn for {writer.with_truth} of {len(report)} images, "
            f"found by file name in {args.show_gt}"
        )
    print(
        f"wrote {writer.out / 'detections.json'} (and as COCO results, results.coco.json) and {len(report)} images "
        f"with boxes to {writer.out}"
        + (f"; skipped {len(skipped)} unreadable images (each with its error in skipped.json)" if skipped else "")
    )
    if not report:
        print("error: no image could be read", file=sys.stderr)
        return 1
    return 1 if skipped and args.strict else 0
