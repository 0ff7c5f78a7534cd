"""The ``detr`` command: train, eval, predict, export, serve, synth, demo, models, selftest."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any

from .hub.download import DownloadError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


# --------------------------------------------------------------------- models
def cmd_models(args: argparse.Namespace) -> int:
    """Models, their published weights, and the ImageNet backbones behind pretrained_backbone=True."""
    from .hub.download import cache_dir
    from .hub.pretrained import PRETRAINED, RESNET_IMAGENET_WEIGHTS
    from .models.architectures import ARCHITECTURES  # data: listing them builds nothing

    print(f"{'model':<15} {'weights':<15} {'classes':>7} {'box AP':>6}  url")
    for name in sorted(ARCHITECTURES):
        w = PRETRAINED.get(name)
        if w is None:
            print(f"{name:<15} {'-':<15}")
        else:
            print(f"{name:<15} {w.name:<15} {w.num_classes:>7} {w.box_ap:>6.1f}  {w.url}")
    for outputs, named in sorted(
        {(w.num_classes, sum(n != "N/A" for n in w.class_names())) for w in PRETRAINED.values()}
    ):
        print(
            f"label space of the published weights: {outputs} outputs, class index = COCO category id "
            f"({named} named classes, 'N/A' in the gaps)"
        )
    print(f"\n{'backbone':<15} {'ImageNet weights':<31} {'acc@1':>6}  url")
    for name, w in RESNET_IMAGENET_WEIGHTS.items():
        print(f"{name:<15} {w.weights:<31} {w.imagenet_acc1:>6.2f}  {w.url}")
    print(f"\ndownloads are cached in {cache_dir()} (set TORCH_HOME to move it)")
    return 0


# ---------------------------------------------------------------------- train
def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults are suppressed so that only given flags override the file."""
    from .engine.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = repr(default) if default == "" else default
        help_text = f"{f.metadata.get('help', '')} (default: {shown})"
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(hint) is list:
            parser.add_argument(flag, type=int, nargs="+", default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(hint) is dict:
            parser.add_argument(flag, type=json.loads, default=argparse.SUPPRESS, help=f"JSON object {help_text}")
        else:
            kind = {int: int, float: float}.get(hint, str)
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text)


def _train_config(args: argparse.Namespace):
    from .engine.config import TrainConfig, read_config_file, resume_config

    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names or k == "recipe" and v is not None})
    if values.get("resume"):  # the run folder recorded its settings: what is given here changes only those named
        out = values.get("output_dir", TrainConfig.output_dir)
        config, changed = resume_config(out, values)
        shown = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()) or "none"
        print(f"resuming {out} with the settings it recorded; changed on the command line: {shown}")
        return config
    config = TrainConfig.from_dict(values)
    if values.get("recipe", "reference") != "reference":
        layers = config.model_kwargs.get("backbone_layers", 4)
        print(
            f"recipe {values['recipe']}: {config.model}, backbone to layer{layers} (stride {2 ** (layers + 1)}), "
            f"{config.num_queries} queries, train {config.train_scales} / eval {config.eval_size} px (max "
            f"{config.max_size}), batch {config.batch_size}, lr {config.lr:g}; flags given override it"
        )
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.evaluate import format_metrics
    from .engine.train import TrainingDiverged, train

    config = _train_config(args)
    try:
        summary = train(config)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if summary.get("finished_before"):
        return 0  # the trainer said there was nothing left to do
    if summary.get("stopped"):
        return 128 + summary["stopped"]  # the trainer said where it stopped and how to resume; as a shell reports it
    if "metrics" in summary:
        print(f"final validation: {format_metrics(summary['metrics'])}")
    print(
        f"done: {summary['epochs']} epochs, {summary['steps']} steps in {summary['seconds']}s; "
        f"outputs in {summary['output_dir']}"
    )
    return 0


# ----------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from .data.panoptic import find_panoptic
    from .device import resolve_device
    from .engine.evaluate import METRIC_NAMES, evaluate_model, evaluation_dataset, format_metrics
    from .fileio import atomic_write_text
    from .processing.tiling import Tiling

    device = resolve_device(args.device)
    model = _load_for_inference(args.weights, args.model, device, args.device)
    reading = model.preprocessing.with_sizes(args.size, args.max_size)  # the model's, unless flags say otherwise
    from .data import find_split
    from .engine.splits import run_val_fraction

    # a dataset without a validation split: the share the run (its split.json) held out, the same images
    fraction = args.val_fraction or run_val_fraction(args.weights) or 0.1
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
    metrics, results = evaluation.metrics, evaluation.results
    print(format_metrics(metrics))
    print(format_metrics(metrics, METRIC_NAMES[6:]))
    if "masks" in metrics:  # a mask model on data with masks
        print("masks: " + format_metrics(metrics["masks"], ("AP", "AP50", "AP75", "APs", "APm", "APl")))
    if "panoptic" in metrics:  # and panoptic annotations
        print("panoptic: " + format_metrics(metrics["panoptic"], ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")))
    for note in evaluation.notes:
        print(note)
    if args.per_class:
        for name, ap in metrics["per_class_AP"].items():
            print(f"  {name:<20} AP {ap:.3f}")
    if args.out:
        atomic_write_text(args.out, json.dumps({"metrics": metrics, "predictions": results}, indent=1))
        print(f"wrote {args.out}")
    if args.results:
        atomic_write_text(args.results, json.dumps(results))
        print(f"wrote {args.results} (COCO results)")
    if args.report:
        from .engine.report import evaluation_report

        report = evaluation_report(dataset.annotations.raw, results, args.report, args.report_threshold)
        errors = ", ".join(f"{k} {v}" for k, v in report["errors"].items())
        print(f"wrote the report to {args.report} (detections scored >= {args.report_threshold}: {errors})")
        nms = report["with_nms"]
        print(
            f"after NMS at IoU {nms['iou']} ({nms['detections_removed']} detections removed): "
            f"{format_metrics(nms['metrics'], ('AP', 'AP50', 'AP75'))}, {nms['errors']['duplicate']} duplicates"
        )
    return 0


def _load_for_inference(weights: str, factory: str | None, device: Any, asked: str) -> Any:
    """``detr.load`` for eval and predict: PyTorch weights on ``device``; an exported file on it too,
    except that with ``--device auto`` an onnxruntime without a CUDA provider runs it on the CPU."""
    from .deploy.runtime import RuntimeUnsupported, is_exported, load_exported
    from .loader import load

    if is_exported(weights) and asked == "auto" and device.type != "cpu":
        try:
            return load_exported(weights, device)
        except RuntimeUnsupported as err:
            print(f"{err}\nrunning {weights} on the CPU", file=sys.stderr)
            return load_exported(weights, "cpu")
    return load(weights, factory, device)


# -------------------------------------------------------------------- predict
def _image_paths(inputs: list[str]) -> list[Path]:
    """The image files named or found (one folder level) in ``inputs``, each once, in order."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise SystemExit(f"error: no such image or folder: {p}")
    if not paths:
        raise SystemExit(f"error: no images found in {inputs}")
    return list(dict.fromkeys(paths))


def _output_names(paths: list[Path]) -> list[str]:
    """A distinct name per input for its output files: its path below the inputs' common folder, with
    ``__`` for the separators, without the suffix unless two inputs differ only by it."""
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([p.parent for p in resolved]))
    stems = ["__".join(p.relative_to(common).with_suffix("").parts) for p in resolved]
    clashing = {s for s in stems if stems.count(s) > 1}
    return [
        "__".join(p.relative_to(common).parts) if s in clashing else s for p, s in zip(resolved, stems, strict=True)
    ]


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


def cmd_predict(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from .device import resolve_device
    from .engine.predict import ground_truth_by_name, predict_files
    from .fileio import atomic_write_text, free_folder, holds_any
    from .processing.interop import coco_results, mask_to_rle, yolo_lines
    from .processing.visualize import draw_detections
    from .terminal import progress_bars

    device = resolve_device(args.device)
    model = _load_for_inference(args.weights, args.model, device, args.device)
    exported = not isinstance(model, torch.nn.Module)
    if exported and args.bf16:
        raise SystemExit(
            "error: --bf16 applies to PyTorch weights; an exported file has its own precision "
            "(detr export --precision fp16)"
        )
    classes = [c for item in args.classes for c in item.split(",") if c] if args.classes else None
    if classes:
        from .processing.postprocess import class_ids

        try:
            class_ids(classes, model.class_names, model.num_classes)
        except ValueError as err:
            raise SystemExit(f"error: --classes: {err}") from None
    paths = _image_paths(args.images)
    truth = ground_truth_by_name(args.show_gt) if args.show_gt else {}
    out = Path(args.out)
    if not args.exist_ok:
        out = free_folder(out, lambda p: holds_any(p, ("detections.json",)))
        if out != Path(args.out):
            print(f"{args.out} holds earlier predictions, left as they are: writing to {out}")
    out.mkdir(parents=True, exist_ok=True)
    preprocessor = model.preprocessing.with_sizes(args.size, args.max_size)  # the model's, unless flags say otherwise
    masks = model.task == "masks"  # a mask model predicts through itself: its detections carry masks
    if masks and args.bf16:
        raise SystemExit("error: --bf16 is for detection models; a mask model predicts in float32")
    fast = (
        model
        if exported or masks
        else model.optimize_for_inference(dtype=torch.bfloat16 if args.bf16 else torch.float32)
    )
    names = _output_names(paths)
    found: dict[int, list] = {}
    skipped: dict[str, str] = {}
    with_truth = 0
    predictions = predict_files(
        fast,
        paths,
        preprocessor,
        args.batch_size,
        k=args.k,
        score_threshold=args.threshold,
        nms=args.nms,
        classes=classes,
        **_tiling(args),
    )
    shown = progress_bars(not args.no_progress)
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not shown, leave=False)
    for result in predictions:
        bar.update()
        if result.error is not None:
            skipped[str(result.path)] = result.error
            bar.write(f"skipped {result.path}: {result.error}", file=sys.stderr)
            continue
        dets, image, name = result.detections, result.image, names[result.index]
        # masks travel as COCO RLE in the files ("segmentation"), as (H, W) bool to the drawing
        found[result.index] = [
            {k: v for k, v in d.items() if k != "mask"}
            | ({"segmentation": mask_to_rle(d["mask"])} if "mask" in d else {})
            for d in dets
        ]
        gt = truth.get(result.path.name, [])
        with_truth += result.path.name in truth
        draw_detections(image, dets, gt, min_side=512, legend=True).save(out / f"{name}_detections.png")
        if args.yolo_labels:
            atomic_write_text(out / "labels" / f"{name}.txt", yolo_lines(dets, image.width, image.height))
        best = f", best {dets[0].get('class_name', dets[0]['class_id'])} {dets[0]['score']:.2f}" if dets else ""
        bar.write(f"{result.path}: {len(dets)} detections{best}")
    bar.close()
    order = sorted(found)  # the inputs' order, whatever order batches finished in
    report = {str(paths[i]): found[i] for i in order}
    atomic_write_text(out / "detections.json", json.dumps(report, indent=1))
    results = []  # the same as COCO results, as other tools read them (image ids from numeric names)
    for number, i in enumerate(order, start=1):
        path = paths[i]
        image_id = int(path.stem) if path.stem.isdigit() else number
        results += [dict(r, file_name=str(path)) for r in coco_results(found[i], image_id, model.category_ids)]
    atomic_write_text(out / "results.coco.json", json.dumps(results))
    if skipped:
        atomic_write_text(out / "skipped.json", json.dumps(skipped, indent=1))
    if args.show_gt:
        print(
            f"ground truth (white) drawn for {with_truth} of {len(report)} images, found by file name in {args.show_gt}"
        )
    print(
        f"wrote {out / 'detections.json'} (and as COCO results, results.coco.json) and {len(report)} images "
        f"with boxes to {out}"
        + (f"; skipped {len(skipped)} unreadable images (each with its error in skipped.json)" if skipped else "")
    )
    if not report:
        print("error: no image could be read", file=sys.stderr)
        return 1
    return 1 if skipped and args.strict else 0


# -------------------------------------------------------------------- explain
def cmd_explain(args: argparse.Namespace) -> int:
    from .data.coco import read_image
    from .device import resolve_device
    from .explain import explain_image, image_attention
    from .fileio import atomic_write, atomic_write_text, free_folder, holds_any
    from .loader import load_model

    model = load_model(args.weights, args.model).to(resolve_device(args.device)).eval()
    paths = _image_paths(args.images)
    out = Path(args.out) if args.exist_ok else free_folder(args.out, lambda p: holds_any(p, ("explained.json",)))
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for path, name in zip(paths, _output_names(paths), strict=True):
        image = read_image(path, exif=True)
        found = image_attention(model, image, args.threshold)
        picture, dets = explain_image(model, image, args.threshold, args.layer, args.head, args.points, found=found)
        target = out / f"{name}_explain.png"
        atomic_write(target, lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
        summary[str(path)] = {"picture": str(target), "detections": dets, "best_score": found.best_score}
        if dets:
            print(f"{path}: {len(dets)} detections -> {target}")
        else:  # the picture alone would be the bare photo
            print(
                f"{path}: no detection scored >= {args.threshold:g} (the best: {found.best_score:.2f}); "
                f"try --threshold {max(0.01, math.floor(found.best_score * 100) / 100):g} -> {target}"
            )
    atomic_write_text(out / "explained.json", json.dumps(summary, indent=1))
    return 0


# ---------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    """The model behind an HTTP API (detr.serve), until Ctrl-C."""
    try:
        from .serve.app import ServeConfig
        from .serve.server import serve
    except ImportError as err:
        raise SystemExit(f'error: detr serve needs the serve extra ({err}): pip install "detr-pytorch[serve]"') from None
    from .deploy.runtime import is_exported
    from .device import resolve_device

    device = resolve_device(args.device)
    model = _load_for_inference(args.weights, args.model, device, args.device)
    config = ServeConfig(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        allow_urls=args.allow_urls,
        api_key=args.api_key or os.environ.get("DETR_API_KEY") or None,
        short_side=args.size,
        max_size=args.max_size,
        bf16=args.bf16,
    )
    where = "cpu" if is_exported(args.weights) else str(device)  # exported files run on the CPU here
    serve(model, config, args.host, args.port, args.workers, weights=args.weights, device=where)
    return 0


# --------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from .deploy.export import ExportRejected, export
    from .loader import load_model

    out = Path(args.out or f"detr.{'xml' if args.format == 'openvino' else 'onnx'}")
    if out.exists() and not args.overwrite:
        raise SystemExit(f"error: {out} exists; pass --overwrite to replace it, or choose another --out")
    model = load_model(args.weights, args.model).eval()
    try:
        path, result = export(
            model,
            out,
            precision=args.precision,
            format=args.format,
            calibration_data=args.calibration_data,
            calibration_images=args.calibration_images,
            keep_float=args.keep_float,
            check_data=args.check_data,
            split=args.split,
            max_ap_drop=args.max_ap_drop,
            height=args.height,
            width=args.width,
            allow_unverified=args.allow_unverified,
        )
    except ExportRejected as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in (path, path.with_suffix(".bin")) if p.is_file()) / 2**20
    print(
        f"wrote {path} ({args.format}, {args.precision}, {size:.1f} MiB; inputs pixel_values (B, 3, H, W), "
        "pixel_mask (B, H, W); any B, H, W; class names and preprocessing inside)"
    )
    print(result.describe())
    print(f"use it as the weights: detr predict IMAGES --weights {path}")
    return 0


# ---------------------------------------------------------------- data tools
def cmd_convert(args: argparse.Namespace) -> int:
    from .data.convert import convert

    summary = convert(args.source, args.out, to=args.to)
    for split, counts in summary.items():
        print(f"{split}: {counts['images']} images, {counts['boxes']} boxes")
    print(f"wrote {args.out} ({args.to})")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from .data.convert import dataset_report, plot_report
    from .fileio import free_folder

    report = dataset_report(args.data)
    columns = ("images", "boxes", "classes", "empty_images", "degenerate_boxes_dropped", "crowd_boxes_ignored")
    headers = [c.replace("_", " ") for c in columns]
    print(f"{'split':<7}" + "".join(f"  {h}" for h in headers))
    for split, entry in report.items():
        cells = "".join(f"  {entry[c]:>{len(h)}}" for c, h in zip(columns, headers))
        print(f"{split:<7}{cells}  ({entry['format']}: {entry['source']})")
        skipped = entry["undeclared_category_annotations_skipped"]
        if skipped:
            print(f"         {skipped} annotations of undeclared categories skipped")
        if entry["split_note"]:
            print(f"         {entry['split_note']}")
    first = next(iter(report.values()))
    print(f"classes: {', '.join(first['boxes_per_class'])}")
    problems = list(dict.fromkeys(p for entry in report.values() for p in entry["problems"]))
    print(f"{len(problems)} problems" + (":" if problems else ""))
    for problem in problems:
        print(f"  {problem}")
    if args.plot:
        png = plot_report(report, args.plot)
    else:  # in the current folder (never into the dataset), under a name no earlier file has
        stem = Path(f"{Path(args.data).resolve().stem or 'dataset'}_check")
        png = plot_report(report, free_folder(stem, lambda p: p.with_suffix(".png").exists()).with_suffix(".png"))
    print(f"wrote {png} (boxes per class, box sizes)")
    return 0


# ---------------------------------------------------------------------- synth
def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synthetic import SynthConfig, make_dataset

    start = time.perf_counter()
    stuff = ("sky", "ground") if args.panoptic else ()
    config = SynthConfig(
        image_size=args.size, max_objects=args.max_objects, masks=args.masks or args.panoptic, stuff=stuff
    )
    make_dataset(args.out, train=args.train, val=args.val, seed=args.seed, config=config)
    print(
        f"wrote {args.train} train and {args.val} val images ({args.size}px, classes {', '.join(config.classes)}) to {args.out} in {time.perf_counter() - start:.1f}s"
    )
    return 0


# ----------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(
        args.out, minutes=args.minutes, steps=args.steps, train_images=args.train_images, seed=args.seed, task=args.task
    )
    if result.get("stopped"):
        return 128 + result["stopped"]
    m = result["metrics"]
    masks = f"  mask AP {m['mask_AP']:.3f}  PQ {m['PQ']:.3f}" if "mask_AP" in m else ""
    print(
        f"\ndemo: AP50 {m.get('AP50', 0):.3f}  AP {m.get('AP', 0):.3f}  AP75 {m.get('AP75', 0):.3f}{masks}  "
        f"({result['steps']} steps, {result['train_seconds']:.0f}s training, {result['total_seconds']:.0f}s in all)"
    )
    for name, path in result["paths"].items():
        print(f"  {name:<12} {path}")
    print(f"try: detr predict {Path(result['paths']['out']) / 'data' / 'val'} --weights {result['paths']['model']}")
    return 0


# ------------------------------------------------------------------- selftest
def cmd_selftest(args: argparse.Namespace) -> int:
    """Build a model, run inference, one loss and one training step on generated data."""
    import torch

    from .models.registry import create_model

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = create_model(args.model, num_classes=3, num_queries=10, aux_loss=True)
    print(f"built {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    x = torch.rand(2, 3, args.size, args.size)
    mask = torch.zeros(2, args.size, args.size, dtype=torch.bool)
    mask[1, :, args.size // 2 :] = True  # second image: right half is padding
    targets = [
        {"class_id": torch.tensor([0, 2]), "box": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
        {"class_id": torch.tensor([1]), "box": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)
    model.train()
    terms = model.get_loss_dict(x, targets, mask)
    terms["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    optimizer.step()
    print(
        "loss terms (final layer): "
        + ", ".join(f"{k}={terms[k].item():.4f}" for k in ("loss_ce", "loss_bbox", "loss_giou"))
    )
    print(f"total loss over {len(model.transformer.decoder.layers)} decoder layers: {terms['loss'].item():.4f}")
    detections = model.eval().predict(x, mask=mask, k=3)
    for i, dets in enumerate(detections):
        print(f"image {i}: top detection {dets[0]}")
    print(f"selftest passed in {time.perf_counter() - start:.1f}s")
    return 0


# --------------------------------------------------------------------- parser
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default after its help (flags whose default is None or a switch's off say nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or "default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _add_tile_flags(parser: argparse.ArgumentParser) -> None:
    """--tile and the flags that go with it (predict and eval): large images through overlapping tiles."""
    parser.add_argument(
        "--tile", type=int, metavar="SIZE", help="large images: cut into overlapping SIZE x SIZE tiles, unresized"
    )
    parser.add_argument("--tile-overlap", type=float, default=0.2, help="fraction of a tile its neighbours share")
    parser.add_argument(
        "--tile-full-image", action="store_true", help="with --tile: the whole image too, for large objects"
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``detr`` parser and its subcommands' parsers (by name)."""
    parser = argparse.ArgumentParser(prog="detr", description="DETR object detection: train, evaluate, predict")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, argparse.ArgumentParser] = {}

    def command(name: str, help: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)
        p.set_defaults(func=func)
        commands[name] = p
        return p

    from .engine.config import DATASET_HELP  # the standard library only: start-up stays light

    weights_help = (
        "a saved model folder (e.g. runs/x/final), a run folder, a checkpoint file (.pth, .pt, .safetensors; ours, "
        "facebookresearch/detr's or transformers'), or a published name"
    )
    exported_help = weights_help + ", or a file detr export wrote (.onnx, OpenVINO .xml)"
    pytorch_help = weights_help + " (PyTorch weights: not an exported .onnx / .xml)"
    model_help = "factory to load a plain state-dict checkpoint into (default: read from the weights, else detr_r50)"
    device_help = "auto (a GPU if there is one), cpu, cuda or cuda:N"
    command("models", "list the available models and their published weights", cmd_models)

    from .engine.recipes import RECIPES  # the standard library only: start-up stays light

    p = command("train", "train on a dataset in any format read (see the README; flags override --config)", cmd_train)
    p.add_argument("--config", help="YAML or JSON file of training settings (any flag below)")
    p.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default=None,
        help="preset of the settings not given: reference (the DETR paper's, the defaults below) or scratch "
        "(fast training from nothing on a CPU, adapted to --data's image size and crowding; see the README)",
    )
    _add_config_flags(p)

    p = command("eval", "COCO box AP of a model on a dataset split", cmd_eval)
    p.add_argument("--data", required=True, help=f"dataset: {DATASET_HELP}")
    p.add_argument("--split", default="val", help="split of --data to evaluate (train, val, valid, test)")
    p.add_argument("--images", help="folder of the images of an annotation file (default: found next to it)")
    p.add_argument("--weights", required=True, help=exported_help)
    p.add_argument(
        "--val-fraction", type=float,
        help="data without a validation split: the share that validates (default: the run's, from its split.json)",
    )  # fmt: skip
    p.add_argument("--model", help=model_help)
    p.add_argument("--size", type=int, help="short side of the evaluation resize (default: the model's, else 800)")
    p.add_argument("--max-size", type=int, help="longest side after the resize (default: the model's, else 1333)")
    p.add_argument("--batch-size", type=int, default=2, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes (0: in this process)")
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--per-class", action="store_true", help="also print AP per class")
    p.add_argument(
        "--all-classes", action="store_true", help="score every query-class pair, not only each query's best class"
    )
    p.add_argument("--max-detections", type=int, default=100, help="detections kept per image, the best over all")
    _add_tile_flags(p)
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

    def image_command(name: str, help: str, func, out: str, what: str, weights: str) -> argparse.ArgumentParser:
        """A command reading images with a model into an output folder (predict, explain)."""
        p = command(name, help, func)
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        p.add_argument("images", nargs="+", help=f"image files ({suffixes}) or folders of them")
        p.add_argument("--weights", required=True, help=weights)
        p.add_argument("--model", help=model_help)
        p.add_argument("--out", default=out, help=f"output folder (one holding earlier {what}: out-2)")
        p.add_argument("--threshold", type=float, default=0.5, help="minimum score of a detection")
        p.add_argument("--device", default="auto", help=device_help)
        p.add_argument("--exist-ok", action="store_true", help=f"write into --out even if it holds earlier {what}")
        return p

    p = image_command(
        "predict",
        "detect objects in images; writes JSON and the images with boxes drawn",
        cmd_predict,
        out="predictions",
        what="predictions",
        weights=exported_help,
    )
    p.add_argument("--k", type=int, default=100, help="at most this many detections per image (with --tile: per tile)")
    _add_tile_flags(p)
    p.add_argument("--max-detections", type=int, help="with --tile: at most this many per image (default: all)")
    p.add_argument("--nms", type=float, help="drop a box overlapping a better one of its class above this IoU")
    p.add_argument("--size", type=int, help="short side of the resize (default: the model's, else 800)")
    p.add_argument("--max-size", type=int, help="longest side after the resize (default: the model's, else 1333)")
    p.add_argument("--strict", action="store_true", help="exit with an error when any image cannot be read")
    p.add_argument(
        "--yolo-labels", action="store_true", help="also write labels/<image>.txt (YOLO: class cx cy w h score)"
    )
    p.add_argument(
        "--batch-size", type=int, default=4, help="images per forward pass (batched with others of their size)"
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for backbone and encoder (CPUs with AMX, GPUs)")
    p.add_argument("--classes", nargs="+", help="keep only these classes (names or ids, e.g. --classes cat dog)")
    p.add_argument(
        "--show-gt", metavar="DATA", help=f"draw the ground truth (white) of this dataset, by file name; {DATASET_HELP}"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = image_command(
        "explain",
        "pictures of what a model looks at: attention of each detection and of points",
        cmd_explain,
        out="explained",
        what="pictures",
        weights=pytorch_help,
    )
    p.add_argument("--layer", type=int, default=-1, help="decoder and encoder layer whose attention is shown")
    p.add_argument("--head", type=int, help="attention head shown (default: the mean over heads)")
    p.add_argument("--points", type=int, default=4, help="encoder self-attention of this many detection centres")

    p = command("export", "export a model to ONNX or OpenVINO (fp32, fp16, int8), behind an accuracy gate", cmd_export)
    p.add_argument("--weights", required=True, help=pytorch_help)
    p.add_argument("--model", help=model_help)
    p.add_argument("--out", help="file to write (default: detr.onnx; detr.xml and detr.bin for openvino)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32", help="weights and compute")
    p.add_argument("--format", choices=("onnx", "openvino"), default="onnx", help="openvino: pip install openvino")
    p.add_argument("--calibration-data", metavar="DIR", help="int8: a folder of images like those to be detected")
    p.add_argument("--calibration-images", type=int, default=200, help="int8: at most this many calibration images")
    p.add_argument(
        "--keep-float", nargs="+", metavar="MODULE",
        help="int8: leave these module groups in float (e.g. transformer.decoder box_head) instead of measuring",
    )  # fmt: skip
    p.add_argument(
        "--check-data", metavar="DATA",
        help="evaluate the export and the model on this dataset and refuse an AP drop over --max-ap-drop; "
        f"{DATASET_HELP}",
    )  # fmt: skip
    p.add_argument("--split", default="val", help="split of --check-data")
    p.add_argument(
        "--allow-unverified", action="store_true",
        help="write the export even when --check-data cannot verify it (no detection of the model scored >= 0.5 "
        "to compare, or fewer than 10 images); without it that is an error",
    )  # fmt: skip
    p.add_argument(
        "--max-ap-drop",
        type=float,
        help="AP points (AP x 100) the export may lose (default fp32 0.2, fp16 0.5, int8 1.5)",
    )
    p.add_argument(
        "--height", type=int, help="height of the example traced, any works later (default: the model's size, else 800)"
    )
    p.add_argument("--width", type=int, help="width of the example traced (default: the model's size, else 800)")
    p.add_argument("--verbose", action="store_true", help="show the exporter's and optimiser's own messages")

    p = command("serve", "serve a model over HTTP: predict and explain API, metrics, a page to try it", cmd_serve)
    p.add_argument("weights", help=exported_help)
    p.add_argument("--model", help=model_help)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network; see --api-key)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--max-batch-size", type=int, default=8, help="most images of concurrent requests run together")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="longest an image waits for others to batch with")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own copy of the model")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image (width x height)")
    p.add_argument("--allow-urls", action="store_true", help="let requests name image URLs for the server to fetch")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $DETR_API_KEY, else none)")
    p.add_argument("--size", type=int, help="short side of the resize (default: the model's, else 800)")
    p.add_argument("--max-size", type=int, help="longest side after the resize (default: the model's, else 1333)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for backbone and encoder (CPUs with AMX, GPUs)")

    p = command("convert", "convert a dataset (any format detr reads, see the README) to COCO or YOLO", cmd_convert)
    p.add_argument("source", help=f"the dataset: {DATASET_HELP}")
    p.add_argument("--out", required=True, help="new folder to write the converted dataset to")
    p.add_argument("--to", default="coco", choices=("coco", "yolo"), help="the format written")

    p = command("check-data", "what a dataset holds, per split; writes a PNG of classes and box sizes", cmd_check_data)
    p.add_argument("data", help=f"the dataset: {DATASET_HELP}")
    p.add_argument(
        "--out", "--plot", dest="plot", help="PNG to write (default: NAME_check.png in the current folder, NAME the "
        "dataset's folder or file name; -2 ... if taken)"
    )

    p = command("synth", "generate a synthetic shapes dataset in COCO format", cmd_synth)
    p.add_argument("--out", required=True, help="folder to write the dataset to")
    p.add_argument("--train", type=int, default=1000, help="training images")
    p.add_argument("--val", type=int, default=200, help="validation images")
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--max-objects", type=int, default=4, help="most objects in an image")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same files)")
    p.add_argument("--masks", action="store_true", help="also write each object's mask (COCO RLE), exact")
    p.add_argument(
        "--panoptic", action="store_true",
        help="two stuff regions (sky, ground) behind the shapes, and COCO panoptic PNGs + JSON (implies --masks)",
    )  # fmt: skip

    p = command("demo", "train a detector from scratch on generated shapes, on the CPU, in minutes", cmd_demo)
    p.add_argument("--out", default="runs/demo", help="folder for the data, the run and the metrics")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training time budget (the schedule anneals by it when it binds); default 9",
    )
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps (the cosine schedule spans them)")
    p.add_argument("--train-images", type=int, default=3000, help="training images generated")
    p.add_argument("--seed", type=int, default=0, help="random seed of the data and the training")
    p.add_argument(
        "--task", choices=("detection", "segmentation"), default="detection",
        help="segmentation: the mask head too, on shapes with exact masks and two stuff regions (mask AP, PQ)",
    )  # fmt: skip

    p = command("selftest", "build a model and run inference and a training step on generated data", cmd_selftest)
    p.add_argument("--model", default="detr_r50", help="registered model name (see detr models)")
    p.add_argument("--size", type=int, default=320, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    import logging

    parser, commands = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # a mistyped flag: the subcommand's usage, not the top level's
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    # this library's messages at INFO; other libraries' (the ONNX optimiser's hundreds of lines) only as
    # warnings, unless --verbose
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING, format="%(message)s"
    )
    logging.getLogger("detr").setLevel(logging.INFO)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # a second Ctrl-C (the first stops training cleanly): at once, without a traceback
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (
        FileNotFoundError,
        FileExistsError,
        ValueError,
        DownloadError,
    ) as err:  # bad input: a clear message, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
