"""``detr demo``: a detector trained from scratch on generated shapes, on the CPU (:func:`detr.demo.run_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train a detector from scratch on generated shapes, on the CPU, in minutes"


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

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
