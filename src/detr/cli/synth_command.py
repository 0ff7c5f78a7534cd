"""``detr synth``: a synthetic shapes dataset in COCO format (:func:`detr.data.synthetic.make_dataset`)."""

from __future__ import annotations

import argparse
import time

HELP = "generate a synthetic shapes dataset in COCO format"


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    from ..data.synthetic import SynthConfig, make_dataset

    start = time.perf_counter()
    stuff = ("sky", "ground") if args.panoptic else ()
    config = SynthConfig(
        image_size=args.size, max_objects=args.max_objects, masks=args.masks or args.panoptic, stuff=stuff
    )
    make_dataset(args.out, train=args.train, val=args.val, seed=args.seed, config=config)
    print(
        f"wrote {args.train} train and {args.val} val images ({args.size}px, classes {', '.join(config.classes)}) "
        f"to {args.out} in {time.perf_counter() - start:.1f}s"
    )
    return 0
