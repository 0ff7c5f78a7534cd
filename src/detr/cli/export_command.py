"""``detr export``: a model to ONNX or OpenVINO (:func:`detr.deploy.export.export`), behind an accuracy gate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..engine.config import DATASET_HELP  # the standard library only: start-up stays light
from .flags import MODEL_HELP, PYTORCH_HELP, add_val_fraction_flag, held_out_fraction

HELP = "export a model to ONNX or OpenVINO (fp32, fp16, int8), behind an accuracy gate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help=PYTORCH_HELP)
    p.add_argument("--model", help=MODEL_HELP)
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
    add_val_fraction_flag(p, of_run=True)
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


def run(args: argparse.Namespace) -> int:
    from ..deploy.export import ExportRejected, export
    from ..loader import load_model

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
            # data without a validation split: the share the run held out (as detr eval), so it checks unseen images
            val_fraction=held_out_fraction(args),
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
