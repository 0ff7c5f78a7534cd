"""``detr convert``: a dataset in any format read to COCO or YOLO (:func:`detr.data.convert.convert`)."""

from __future__ import annotations

import argparse

from ..engine.config import DATASET_HELP  # the standard library only: start-up stays light
from .flags import add_val_fraction_flag

HELP = "convert a dataset (any format detr reads, see the README) to COCO or YOLO"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help=f"the dataset: {DATASET_HELP}")
    p.add_argument("--out", required=True, help="new folder to write the converted dataset to")
    p.add_argument("--to", default="coco", choices=("coco", "yolo"), help="the format written")
    add_val_fraction_flag(p)


def run(args: argparse.Namespace) -> int:
    from ..data.convert import convert

    summary = convert(args.source, args.out, to=args.to, val_fraction=args.val_fraction)
    for split, counts in summary.items():
        print(f"{split}: {counts['images']} images, {counts['boxes']} boxes")
    print(f"wrote {args.out} ({args.to})")
    return 0
