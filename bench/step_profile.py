"""Where a training step of the scratch recipe goes, against the peers' networks, on a race task (issue #33).

    .venv/bin/python bench/step_profile.py --task scales --data-seed 1002 [--steps 20] [--threads 2] \\
        [--detr-overrides '{"model_kwargs": {"backbone_width": 0.5}}']

Prints, for the recipe on the task's data (generated as ``bench/time_to_accuracy.py`` makes it, under
``--out``): the wall time of a step split into data loading, forward with the loss, backward and the optimizer
update (``--steps`` steps after a few to warm up); then the forward FLOPs of one training image, ours by part of
the model, against each ``--peers`` network (Ultralytics, built from its yaml, in training mode), all counted by
the same counter (``torch.utils.flop_counter.FlopCounterMode``). The FLOPs are the step's arithmetic; the
split says how much of it the host spends where. Neither is a race result: ``time_to_accuracy.py`` is.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from time_to_accuracy import TASKS, precision, task_data
from torch.utils.flop_counter import FlopCounterMode

from detr.engine.config import TrainConfig
from detr.engine.train import Trainer

PHASES = ("data", "forward + loss", "backward", "optimizer")


def step_split(trainer: Trainer, steps: int, warmup: int = 5) -> tuple[list[float], int]:
    """Seconds spent per phase (``PHASES``) over ``steps`` training steps, after ``warmup`` steps; and the
    images they read."""
    batches = iter(trainer._loader())
    trainer.loss_module.train()
    spent, images_read = [0.0] * len(PHASES), 0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        images, mask, targets = next(batches)
        t1 = time.perf_counter()
        with trainer.autocast():  # the recipe's precision, as the training loop runs it
            loss = trainer.loss_module(images, mask, targets)["loss"]
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        trainer._optimizer_step()
        t4 = time.perf_counter()
        if i >= warmup:
            for k, seconds in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                spent[k] += seconds
            images_read += len(images)
    return spent, images_read


def our_flops(trainer: Trainer) -> dict[str, int]:
    """Forward FLOPs (loss included) of one training image of the task, by top-level part of our model (the
    rest, e.g. the matching and the losses' arithmetic, as ``other``), and their ``total``."""
    images, mask, targets = next(iter(trainer._loader()))
    counter = FlopCounterMode(display=False, depth=32)
    with counter:
        trainer.loss_module(images[:1], mask[:1], targets[:1])
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    prefix = "LossModule.model."
    parts: dict[str, int] = {}
    for name, flops in counts.items():
        # the counter credits an op to every module whose forward is running; some parts are entered through
        # other methods (the transformer's encode, its decoder's layers): the outermost recorded module counts
        pieces = name.split(".")
        outer = not any(".".join(pieces[:k]) in counts for k in range(3, len(pieces)))
        if name.startswith(prefix) and outer:
            parts[pieces[2]] = parts.get(pieces[2], 0) + flops
    total = counter.get_total_flops()
    parts["other"] = total - sum(parts.values())
    parts["total"] = total
    return parts


def peer_flops(name: str, size: int, classes: int) -> int:
    """Forward FLOPs of one ``size`` px image through the peer's network in training mode (its loss left out),
    at the size the peer trains a ``size`` px task at: its own rounding up to a multiple of its stride (112 -> 128)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    from ultralytics.nn.tasks import DetectionModel, RTDETRDetectionModel
    from ultralytics.utils.checks import check_imgsz

    family = RTDETRDetectionModel if name.startswith("rtdetr") else DetectionModel
    model = family(f"{name}.yaml", nc=classes, verbose=False).train()
    side = check_imgsz(size, stride=int(model.stride.max()))
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.rand(1, 3, side, side))
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="scales", choices=list(TASKS))
    parser.add_argument("--data-seed", type=int, default=None, help="task data seed (default: the task's own)")
    parser.add_argument("--steps", type=int, default=20, help="steps timed (after 5 to warm up)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--peers", nargs="*", default=["yolov8n"], help="Ultralytics networks to count FLOPs of")
    parser.add_argument("--out", default="runs/tta", help="where the task data is (or is made)")
    parser.add_argument(
        "--detr-overrides",
        type=json.loads,
        default={},
        help="TrainConfig values over the scratch recipe, as JSON (a candidate, as time_to_accuracy.py takes them)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    torch.set_num_threads(args.threads)
    seed = TASKS[args.task].seed if args.data_seed is None else args.data_seed
    data = task_data(Path(args.out), args.task, seed)
    run = Path(args.out) / "step_profile"
    config = TrainConfig.from_recipe(
        "scratch", data=str(data), output_dir=str(run), exist_ok=True, progress=False, **args.detr_overrides
    )
    trainer = Trainer(config)
    size = config.train_scales[0]
    print(
        f"{args.task} (data seed {seed}, {size} px, batch {config.batch_size}, {config.num_queries} queries"
        f"{', ' + json.dumps(args.detr_overrides) if args.detr_overrides else ''}, {precision(config)}), "
        f"{torch.get_num_threads()} torch threads"
    )
    spent, images_read = step_split(trainer, args.steps)
    total = sum(spent)
    shares = ", ".join(f"{phase} {100 * s / total:.0f}%" for phase, s in zip(PHASES, spent))
    print(f"  a step {total / args.steps:.3f} s ({images_read / total:.1f} img/s): {shares}")
    ours = our_flops(trainer)
    parts = sorted(((n, f) for n, f in ours.items() if n != "total"), key=lambda item: -item[1])  # largest first
    listed = ", ".join(f"{n} {f / 1e9:.2f}" for n, f in parts if f >= 0.01 * ours["total"])
    print(f"  forward GFLOPs of one training image: ours {ours['total'] / 1e9:.2f} ({listed})")
    classes = len(TASKS[args.task].data.classes)
    for peer in args.peers:
        flops = peer_flops(peer, size, classes)
        print(f"  {peer} {flops / 1e9:.2f}: ours / {peer} {ours['total'] / flops:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
