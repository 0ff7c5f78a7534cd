"""Time to accuracy: our ``scratch`` recipe against Ultralytics YOLO nano models, each trained from nothing
for the same minutes on the same machine, one after the other, on the same generated data, all scored by
pycocotools on the same validation split.

    pip install -e ".[bench]"          # ultralytics (AGPL): a benchmark extra, never imported by detr
    .venv/bin/python bench/time_to_accuracy.py [--minutes 9] [--tasks demo small crowded classes]
        [--systems detr yolov8n yolo26n] [--out runs/time_to_accuracy]

Each system is scored by its own usual protocol into COCO results (ours: the recipe's evaluation, every
query-class pair, 100 per image; YOLO: its validation settings, conf 0.001, NMS IoU 0.7, 100 per image),
and those by the same pycocotools call. Prints AP, AP50, optimizer steps and training images per second
for each system, and our AP over the best peer's. Results go to OUT/results.jsonl as they come (a long
run interrupted keeps what it measured). Run it on an otherwise idle machine.

Tasks (``--tasks``; ``aside`` is kept out of the default: the family's held-out check):
- demo: the demo's data (64 px, 1-3 shapes of 3 classes, 3000 / 300 images);
- small: small objects at 128 px (1-4 objects of 12-48 px, 3 classes, 2000 / 200);
- crowded: 10-30 small objects per 128 px image (3 classes, 2000 / 200);
- classes: 10 shape classes at 96 px (1-4 objects, 3000 / 300);
- aside: 112 px, 2-8 objects of 7 classes, other seeds (2000 / 200).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from detr.data.synthetic import ALL_SHAPES, SHAPES, SynthConfig, make_dataset
from detr.demo import DEMO_DATA

# name -> (data, train images, val images, seed)
TASKS: dict[str, tuple[SynthConfig, int, int, int]] = {
    "demo": (DEMO_DATA, 3000, 300, 0),
    "small": (
        SynthConfig(
            image_size=128, min_objects=1, max_objects=4, min_size=12 / 128, max_size=48 / 128, classes=SHAPES[:3]
        ),
        2000,
        200,
        1,
    ),
    "crowded": (
        SynthConfig(image_size=128, min_objects=10, max_objects=30, min_size=0.07, max_size=0.16, classes=SHAPES[:3]),
        2000,
        200,
        2,
    ),
    "classes": (
        SynthConfig(image_size=96, max_objects=4, min_size=0.2, max_size=0.5, classes=ALL_SHAPES),
        3000,
        300,
        3,
    ),
    "aside": (
        SynthConfig(image_size=112, min_objects=2, max_objects=8, min_size=0.1, max_size=0.35, classes=ALL_SHAPES[3:]),
        2000,
        200,
        4,
    ),
}
DEFAULT_TASKS = ("demo", "small", "crowded", "classes")
SYSTEMS = ("detr", "yolov8n", "yolo26n")


def task_data(out: Path, name: str) -> Path:
    """The task's COCO-layout dataset (generated once, then reused while the task's definition, written
    beside it in ``task.json``, stays the same)."""
    config, train, val, seed = TASKS[name]
    data = out / name / "data"
    definition = {"config": dataclasses.asdict(config), "train": train, "val": val, "seed": seed}
    definition = json.loads(json.dumps(definition))  # tuples as lists, as read back
    recorded = data / "task.json"
    if not data.exists():
        make_dataset(data, train=train, val=val, seed=seed, config=config)
        recorded.write_text(json.dumps(definition, indent=1))
    elif not recorded.is_file() or json.loads(recorded.read_text()) != definition:
        raise SystemExit(
            f"{data} holds data of another definition of the task {name!r} (or of an unknown one: no task.json); "
            "delete that folder to generate the task's data again, or pass another --out"
        )
    return data


def score(data: Path, results: list[dict[str, Any]]) -> dict[str, Any]:
    from detr.engine.evaluate import coco_evaluate

    ground_truth = json.loads((data / "annotations" / "instances_val.json").read_text())
    return coco_evaluate(ground_truth, results)


def run_detr(
    data: Path, out: Path, minutes: float, seed: int, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Our scratch recipe for ``minutes`` (``overrides``: TrainConfig values that win over it, to measure a
    candidate change against the peers in the same run); no evaluation on the way (the clock is for training)."""
    from torch.utils.data import DataLoader

    from detr.data.coco import CocoDetection
    from detr.data.transforms import collate, eval_transforms
    from detr.engine.config import TrainConfig
    from detr.engine.evaluate import predict_dataset
    from detr.engine.train import train
    from detr.models.factories import load_model

    config = TrainConfig.from_recipe(
        "scratch",
        data=str(data),
        output_dir=str(out),
        exist_ok=True,
        epochs=10_000,
        max_minutes=minutes,
        eval_every=10_000,  # only the end
        progress=False,
        log_every=200,
        seed=seed,
        **(overrides or {}),
    )
    start = time.perf_counter()
    summary = train(config)
    wall = time.perf_counter() - start
    model = load_model(out / "final").eval()
    dataset = CocoDetection(data, "val", eval_transforms(config.eval_size, config.max_size))
    loader = DataLoader(dataset, batch_size=16, collate_fn=collate)
    results = predict_dataset(
        model, loader, dataset.match_model(model).category_of, all_classes=config.eval_all_classes
    )
    steps = summary["steps"]
    return {
        "results": results,
        "steps": steps,
        "train_seconds": summary["seconds"],
        "wall_seconds": wall,
        "images_per_second": steps * config.batch_size / summary["seconds"],  # its clock holds the last evaluation
        "settings": f"{config.model}, {config.num_queries} queries, {config.train_scales[0]} px, "
        f"batch {config.batch_size}",
    }


def run_yolo(name: str, data: Path, out: Path, minutes: float, seed: int) -> dict[str, Any]:
    """Ultralytics ``name`` from its yaml (no weights), its default training recipe, for ``minutes``."""
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no update or font checks over the network
    os.environ.setdefault("YOLO_VERBOSE", "False")  # no progress bars in the benchmark's output
    from ultralytics import YOLO

    from detr.data.convert import convert

    yolo_data = out.parent / "yolo_data"
    if not (yolo_data / "data.yaml").is_file():
        convert(data, yolo_data, to="yolo")
    ground_truth = json.loads((data / "annotations" / "instances_val.json").read_text())
    category_ids = sorted(int(c["id"]) for c in ground_truth["categories"])  # YOLO class index -> COCO id
    size = int(ground_truth["images"][0]["width"])
    model = YOLO(f"{name}.yaml")
    steps = 0

    def count_step(trainer: Any) -> None:  # its clock can stop it within an epoch
        nonlocal steps
        steps += 1

    model.add_callback("on_train_batch_end", count_step)
    start = time.perf_counter()
    model.train(
        data=str(yolo_data / "data.yaml"),
        epochs=10_000,
        time=minutes / 60,  # hours: Ultralytics fits its schedule to it
        imgsz=size,
        batch=16,
        device="cpu",
        pretrained=False,
        amp=False,
        # SGD (lr 0.01, momentum 0.937), not "auto": for a long schedule Ultralytics 8.4 picks MuSGD there, whose
        # Muon part took about 10 s a step on an AMD EPYC (70 steps in 9 minutes) where SGD took 0.4 s
        optimizer="SGD",
        val=False,
        plots=False,
        seed=seed,
        project=str(out.parent.resolve()),  # absolute: a relative one lands under Ultralytics' runs_dir
        name=out.name,
        exist_ok=True,
        verbose=False,
    )
    wall = time.perf_counter() - start
    trainer = model.trainer
    epochs_run = trainer.epoch + 1
    best = YOLO(str(Path(trainer.last)))
    val_dir = data / "val"
    results = []
    by_name = {img["file_name"]: int(img["id"]) for img in ground_truth["images"]}
    for prediction in best.predict(
        source=[str(val_dir / f) for f in by_name],
        imgsz=size,
        conf=0.001,
        iou=0.7,
        max_det=100,
        device="cpu",
        verbose=False,
        stream=True,
    ):
        image_id = by_name[Path(prediction.path).name]
        boxes = prediction.boxes
        for (x0, y0, x1, y1), cls, conf in zip(boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist()):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category_ids[int(cls)],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(conf),
                }
            )
    return {
        "results": results,
        "steps": steps,
        "train_seconds": wall,
        "wall_seconds": wall,
        "images_per_second": steps * 16 / wall,  # its clock holds dataset caching too
        "settings": f"{name}.yaml, {epochs_run} epochs begun, {size} px, batch 16",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=9.0, help="training minutes per system")
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), choices=list(TASKS))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--out", default="runs/time_to_accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--detr-overrides",
        type=json.loads,
        default={},
        help="TrainConfig values over the scratch recipe, as JSON (a candidate change, e.g. '{\"batch_size\": 8}')",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    print(f"{os.cpu_count()} CPU threads, torch {torch.__version__}, {args.minutes:g} minutes per system")
    for task in args.tasks:
        data = task_data(out, task)
        rows = {}
        for system in args.systems:
            run = out / task / f"{system}-{stamp}"
            if system == "detr":
                measured = run_detr(data, run, args.minutes, args.seed, args.detr_overrides)
            else:
                measured = run_yolo(system, data, run, args.minutes, args.seed)
            metrics = score(data, measured.pop("results"))
            row = {
                "task": task,
                "system": system,
                "minutes": args.minutes,
                **measured,
                "AP": metrics["AP"],
                "AP50": metrics["AP50"],
            }
            rows[system] = row
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{task:<8} {system:<8} AP {row['AP']:.3f}  AP50 {row['AP50']:.3f}  steps {row['steps']:>5}  "
                f"{row['images_per_second']:6.1f} img/s  ({row['settings']}; {row['wall_seconds']:.0f} s wall)",
                flush=True,
            )
        peers = [r["AP"] for s, r in rows.items() if s != "detr"]
        if "detr" in rows and peers:
            print(f"{task:<8} ours / best peer AP: {rows['detr']['AP'] / max(max(peers), 1e-9):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
