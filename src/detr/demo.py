"""``detr demo``: train a detector from nothing on a generated dataset, on the CPU, in minutes.

The recipe (``demo_config``) is the DETR architecture with the library's options for fast
training from scratch switched on: trainable batch norm and stem (no pretrained statistics
exist), a backbone cut after ``layer2`` (stride 8 on small images), few queries, denoising
queries, a dense auxiliary head on the encoder whose best proposals place the decoder's
anchor-box queries (two-stage), warm-up and a cosine schedule annealed by steps or by the clock,
whichever runs out first. See the README for what each buys.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from .data.synthetic import SynthConfig, make_dataset
from .engine.config import TrainConfig
from .fileio import atomic_write, atomic_write_text, free_folder, holds_any

DEMO_DATA = SynthConfig(
    image_size=64, max_objects=3, min_size=0.25, max_size=0.6, classes=("circle", "square", "triangle")
)

# training minutes by default; with data generation and evaluation each demo takes under 10 minutes
DETECTION_MINUTES = SEGMENTATION_MINUTES = 9.0
# the segmentation demo: the same shapes with exact masks, on two textured stuff regions (sky, ground)
SEGMENTATION_DATA = dataclasses.replace(DEMO_DATA, masks=True, stuff=("sky", "ground"))


def demo_config(
    data: Path, out: Path, minutes: float, steps: int, seed: int = 0, train_images: int = 3000, panoptic: bool = False
) -> TrainConfig:
    """The demo's training settings: the ``scratch`` recipe (:mod:`detr.engine.recipes`) for its data,
    ``steps`` optimizer steps or ``minutes`` of training, whichever comes first, evaluated about five times
    on the way (so that curves.png shows a validation curve)."""
    config = TrainConfig.from_recipe(
        "scratch",
        data=str(data),
        output_dir=str(out),
        epochs=1000,  # bounded by steps / minutes
        max_steps=steps,
        max_minutes=minutes,
        seed=seed,
        log_every=20,
        panoptic=panoptic,
    )
    epochs = math.ceil(steps / math.ceil(train_images / config.batch_size))
    # 300 val images take ~2 s to evaluate; and the end
    return dataclasses.replace(config, eval_every=max(1, epochs // 5))


def validation_grid(
    run: Path, data: Path, count: int = 12, columns: int = 4, scale: int = 4, threshold: float = 0.5
) -> Path:
    """PNG of validation images: predictions (coloured, with class and score) over ground truth (white)."""
    from .data.coco import CocoDetection
    from .engine.plots import prediction_grid
    from .loader import load_model

    model = load_model(run / "final").eval()
    side = DEMO_DATA.image_size * scale
    grid = prediction_grid(model, CocoDetection(data, "val"), count, columns, side=side, threshold=threshold)
    path = run / "validation_predictions.png"
    atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
    return path


def segmentation_metrics(run: Path, data: Path, threshold: float = 0.85) -> dict[str, Any]:
    """The segmentation demo's model on its validation split: mask AP (the shapes' instance masks) and PQ
    (shapes and stuff, the panoptic annotations)."""
    from .data.panoptic import find_panoptic
    from .engine.evaluate import evaluate_model, evaluation_dataset
    from .loader import load_model

    model = load_model(run / "final").eval()
    dataset = evaluation_dataset(data, model.preprocessing, "val")  # the shapes' instance masks
    found = evaluate_model(
        model, dataset, tasks=("masks", "panoptic"), panoptic=find_panoptic(data, "val"), panoptic_threshold=threshold,
        batch_size=16,
    )  # fmt: skip
    if "masks" not in found.metrics or "panoptic" not in found.metrics:
        raise ValueError(f"{run / 'final'} on {data}: no mask AP or PQ ({'; '.join(found.notes) or 'no masks'})")
    masks = found.metrics["masks"]
    return {"mask_AP": masks["AP"], "mask_AP50": masks["AP50"], "mask_AP75": masks["AP75"], **found.metrics["panoptic"]}


def mask_pictures(run: Path, data: Path, count: int = 6, scale: int = 4) -> Path:
    """PNG of validation images: predicted masks next to the ground truth's."""
    from .data.coco import CocoDetection
    from .engine.plots import mask_grid
    from .loader import load_model

    model = load_model(run / "final").eval()
    grid = mask_grid(model, CocoDetection(data, "val", masks=True), count, side=DEMO_DATA.image_size * scale)
    path = run / "validation_masks.png"
    atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
    return path


def run_demo(
    out: str | Path = "runs/demo",
    minutes: float | None = None,
    steps: int = 4000,
    train_images: int = 3000,
    val_images: int = 300,
    seed: int = 0,
    task: str = "detection",
) -> dict[str, Any]:
    """Generate the data, train, evaluate, draw; returns the metrics and the paths written. A folder
    holding an earlier demo is left as it is: the demo then writes to ``out-2`` (``-3`` ...). Stopped by Ctrl-C or
    SIGTERM, it returns ``{"stopped": signal number, "steps", "paths"}`` after checkpointing the run (which
    ``detr train --output-dir OUT/run --resume`` continues).

    ``task="segmentation"``: the same recipe with the paper's mask head, trained on the panoptic
    annotations (shapes and two stuff regions, exact masks); ``metrics`` then also holds mask AP and PQ."""
    from .engine.train import train

    if task not in ("detection", "segmentation"):
        raise ValueError(f"task must be detection or segmentation, got {task!r}")
    segmentation = task == "segmentation"
    if minutes is None:  # the segmentation demo trains a minute longer: its steps are slower, its goal in 10 minutes
        minutes = SEGMENTATION_MINUTES if segmentation else DETECTION_MINUTES
    requested = Path(out)
    out = free_folder(requested, lambda p: holds_any(p, ("metrics.json", "run", "data")))
    if out != requested:
        print(f"{requested} holds an earlier demo, left as it is: this one writes to {out}")
    start = time.perf_counter()
    data = out / "data"
    synth = SEGMENTATION_DATA if segmentation else DEMO_DATA
    make_dataset(data, train=train_images, val=val_images, seed=seed, config=synth)
    print(
        f"generated {train_images} train / {val_images} val images of {', '.join(synth.classes + synth.stuff)} in {data}"
    )
    run = out / "run"
    config = demo_config(data, run, minutes, steps, seed, train_images, panoptic=segmentation)
    summary = train(config)
    if summary.get("stopped"):  # Ctrl-C / SIGTERM: the trainer checkpointed and said how to resume
        return {"stopped": summary["stopped"], "steps": summary["steps"], "paths": {"out": str(out), "run": str(run)}}
    grid = validation_grid(run, data)
    metrics = {k: v for k, v in summary.get("metrics", {}).items() if k != "per_class_AP"}
    extra_paths = {}
    if segmentation:
        metrics.update(segmentation_metrics(run, data))
        extra_paths["masks"] = str(mask_pictures(run, data))
    result = {
        "metrics": metrics,
        "steps": summary["steps"],
        "train_seconds": summary["seconds"],
        "total_seconds": round(time.perf_counter() - start, 1),
        "paths": {
            "out": str(out),
            "metrics": str(out / "metrics.json"),
            "curves": str(run / "curves.png"),
            "predictions": str(grid),
            "model": str(run / "final"),
            "log": str(run / "log.jsonl"),
            **extra_paths,
        },
    }
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2))
    return result
