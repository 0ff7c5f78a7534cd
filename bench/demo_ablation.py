"""What each fast-training option buys: the demo's data, a fixed number of optimizer steps per
variant, each variant adding one option to the previous one (every row scores every query-class
pair, as the demo does). Prints AP50 / AP and the time taken.

    .venv/bin/python bench/demo_ablation.py [--steps 800] [--out runs/ablation]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from detr.data.synthetic import make_dataset
from detr.demo import DEMO_DATA, demo_config
from detr.engine.train import train

# cumulative: each row adds its change to the row above; the last row is the demo recipe (the demo
# itself runs longer, see detr.demo)
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
        "+ anchor-box queries placed on the dense head's best proposals (two-stage; the demo recipe)",
        {},
        dict(box_refinement=True, two_stage=True),
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--only", type=int, nargs="*", help="run only these variant numbers (1-based)")
    args = parser.parse_args()
    out = Path(args.out)
    data = out / "data"
    if not (data / "annotations" / "instances_val.json").is_file():
        make_dataset(data, train=3000, val=300, seed=0, config=DEMO_DATA)
    config = replace(demo_config(data, out, minutes=0, steps=args.steps), progress=False)
    model_kwargs = dict(config.model_kwargs)
    rows = []
    for number, (name, train_changes, model_changes) in enumerate(VARIANTS, 1):
        config = replace(config, **train_changes)
        model_kwargs.update(model_changes)
        if args.only and number not in args.only:
            continue
        run = replace(config, model_kwargs=dict(model_kwargs), output_dir=str(out / f"variant{number}"))
        start = time.perf_counter()
        metrics = train(run)["metrics"]
        rows.append((number, name, metrics["AP50"], metrics["AP"], time.perf_counter() - start))
        print(f"{number}. {name}: AP50 {metrics['AP50']:.3f}  AP {metrics['AP']:.3f}  ({rows[-1][4]:.0f}s)", flush=True)
    print(f"\n| # | variant ({args.steps} steps each) | AP50 | AP | time |\n|---|---|---|---|---|")
    for number, name, ap50, ap, seconds in rows:
        print(f"| {number} | {name} | {ap50:.3f} | {ap:.3f} | {seconds:.0f}s |")


if __name__ == "__main__":
    main()
