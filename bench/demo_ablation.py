"""What each fast-training option buys: the demo's data, the same training budget per variant (a wall
time with --minutes, else a number of optimizer steps), each variant adding one option to the previous
one. Every row is scored the same way (every query-class pair, 100 per image, as the demo does).
Prints AP50 / AP, the optimizer steps and the time taken.

    .venv/bin/python bench/demo_ablation.py [--minutes 3 | --steps 800] [--out runs/ablation]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from detr.data.synthetic import make_dataset
from detr.demo import DEMO_DATA, demo_config
from detr.engine.train import train

# cumulative: each row adds its change to the row above; the last row is the scratch recipe, the demo's
# (the demo itself runs longer, see detr.demo)
VARIANTS = [
    (
        "reference recipe (frozen BN, frozen stem, layer4, 100 queries, lr 1e-4 / 1e-5, no warm-up)",
        dict(num_queries=100, lr=1e-4, lr_backbone=1e-5, lr_schedule="step", lr_drop=1000, warmup_steps=0),
        dict(
            backbone_norm="frozen_bn",
            freeze_stem=True,
            backbone_layers=4,
            denoising_groups=0,
            dense_aux_loss=False,
            box_refinement=False,
            two_stage=False,
            two_stage_distinct_iou=None,
            deformable_decoder=False,
            num_encoder_layers=3,
            iou_class_targets=False,
        ),
    ),
    (
        "+ trainable batch norm and stem, backbone lr = lr",
        dict(lr_backbone=1e-4),
        dict(backbone_norm="bn", freeze_stem=False),
    ),
    ("+ backbone cut after layer2 (stride 8), 10 queries", dict(num_queries=10), dict(backbone_layers=2)),
    (
        "+ warm-up 100 steps, cosine schedule, lr 5e-4",
        dict(lr=5e-4, lr_backbone=5e-4, lr_schedule="cosine", warmup_steps=100),
        {},
    ),
    ("+ 4 groups of denoising queries", {}, dict(denoising_groups=4, denoising_box_noise=0.4)),
    (
        "+ denoising box noise 1.0, lr 7e-4 with 200 warm-up steps",
        dict(lr=7e-4, lr_backbone=7e-4, warmup_steps=200),
        dict(denoising_box_noise=1.0),
    ),
    ("+ dense auxiliary head on the encoder (one-to-many)", {}, dict(dense_aux_loss=True)),
    (
        "+ anchor-box queries placed on the dense head's best proposals (two-stage)",
        {},
        dict(box_refinement=True, two_stage=True),
    ),
    (
        "+ distinct anchors: a proposal overlapping a better one by IoU > 0.7 is passed over",
        {},
        dict(two_stage_distinct_iou=0.7),
    ),
    ("+ one encoder layer instead of three", {}, dict(num_encoder_layers=1)),
    (
        "+ IoU-aware class targets",
        {},
        dict(iou_class_targets=True),
    ),
    ("+ lr 1e-3", dict(lr=1e-3, lr_backbone=1e-3), {}),
    ("+ deformable cross-attention in the decoder (the scratch recipe)", {}, dict(deformable_decoder=True)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps per variant (without --minutes)")
    parser.add_argument("--minutes", type=float, default=0.0, help="training minutes per variant instead of steps")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--only", type=int, nargs="*", help="run only these variant numbers (1-based)")
    args = parser.parse_args()
    out = Path(args.out)
    data = out / "data"
    if not (data / "annotations" / "instances_val.json").is_file():
        make_dataset(data, train=3000, val=300, seed=0, config=DEMO_DATA)
    steps = 0 if args.minutes else args.steps
    config = replace(demo_config(data, out, minutes=args.minutes, steps=steps), progress=False)
    if args.minutes:
        config = replace(config, eval_every=10_000)  # the clock decides (steps=0: no cap); evaluated at the end only
    model_kwargs = dict(config.model_kwargs)
    rows = []
    for number, (name, train_changes, model_changes) in enumerate(VARIANTS, 1):
        schedule = train_changes.get("lr_schedule", config.lr_schedule)  # the clock anneals a cosine schedule only
        config = replace(config, **train_changes, anneal_by_time=schedule == "cosine" and config.max_minutes > 0)
        model_kwargs.update(model_changes)
        if args.only and number not in args.only:
            continue
        run = replace(config, model_kwargs=dict(model_kwargs), output_dir=str(out / f"variant{number}"))
        start = time.perf_counter()
        summary = train(run)
        metrics = summary["metrics"]
        rows.append((number, name, metrics["AP50"], metrics["AP"], summary["steps"], time.perf_counter() - start))
        print(
            f"{number}. {name}: AP50 {metrics['AP50']:.3f}  AP {metrics['AP']:.3f}  "
            f"({summary['steps']} steps, {rows[-1][5]:.0f}s)",
            flush=True,
        )
    budget = f"{args.minutes:g} minutes" if args.minutes else f"{args.steps} steps"
    print(f"\n| # | variant ({budget} each) | AP50 | AP | steps | time |\n|---|---|---|---|---|---|")
    for number, name, ap50, ap, steps_done, seconds in rows:
        print(f"| {number} | {name} | {ap50:.3f} | {ap:.3f} | {steps_done} | {seconds:.0f}s |")


if __name__ == "__main__":
    main()
