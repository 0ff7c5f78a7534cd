"""Large images, small objects (issue #37): our model on the whole image, our model through tiles, and
Ultralytics YOLOv8n through SAHI's slices, each trained from nothing for the same minutes on the same data.

    pip install -e ".[bench]"       # ultralytics and sahi: benchmark extras, never imported by detr
    .venv/bin/python bench/tiles.py [--minutes 9] [--tile 320] [--train-images 60] [--val-images 10] [--out runs/tiles]
    .venv/bin/python bench/tiles.py --minutes 0.5 --train-images 4 --val-images 2 --out /tmp/tiles  # smoke run

The task is generated (anyone regenerates it from ``--data-seed``): ``--width`` x ``--height`` images (1600 x
1200) holding 50-300 shapes of 8-32 px, four classes, on textured backgrounds (gradients, noise, strokes;
:mod:`detr.data.synthetic`). What each system does:

- ours: the ``scratch`` recipe trained on tile crops (``tile_crop = --tile``: crops of the unresized images
  around objects and anywhere, :mod:`detr.data.tile_crop`) at ``--tile`` px, ``--queries`` queries, the
  ResNet cut after layer2 with one block a stage and no encoder layer (``MODEL``: stride 8, for objects of
  8-32 px; chosen for time per image alone, see ``MODEL``); then
  (a) every validation image whole, read at the model's size (short side ``--tile``), and (b) through tiles
  (``predict(tile=--tile, tile_overlap=--overlap)``, :mod:`detr.processing.tiling`), both on the inference
  path (``optimize_for_inference``).
- YOLOv8n + SAHI, as SAHI's users run it: the training images sliced by ``sahi.slicing.slice_coco`` into
  ``--tile`` px slices with the same overlap (slices holding under 10% of an object drop it, SAHI's
  default), YOLOv8n from its yaml trained on them for the same minutes (``time=``, ``imgsz=--tile``; as a user
  types it, ``yolov8n``, and in the time-to-accuracy race's tuned short-run setting, ``yolov8n:tuned``), then
  ``sahi.predict.get_sliced_prediction`` on every validation image (confidence 0.001 as for AP, at which
  SAHI merges by NMS on IoU 0.5 instead of its default GREEDYNMM on IOS, its own rule).

``--full-image`` adds the whole image as one more window to both tiled systems (ours ``tile_full_image``,
SAHI ``perform_standard_pred``). Every system is scored by the same pycocotools call with ``--max-detections``
(1000) detections an image counted (COCO's 100 would cap recall on images of 300 objects), and timed per
validation image (prediction only, the image already read, after one untimed warm-up image, ``--threads`` torch
threads, checked inside every training loop and prediction loop). On CPUs with native bf16 (AVX512-BF16) ours is
also timed with ``optimize_for_inference(torch.bfloat16)`` (backbone in bf16), a row of its own. Results go to
OUT/results.jsonl, a line a row as it comes, and are printed with the machine; runs with ``--seed`` 0, 1, 2
give the spread, ``--summarize OUT/results.jsonl`` their mean and spread.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_accuracy import YOLO_BATCH, ThreadProbe, machine, made_from, yolo_train_args  # the race's own parts

from detr.data.synthetic import SHAPES, SynthConfig, make_dataset
from detr.device import computes_bf16_natively

# the ResNet-18 cut after layer2 (stride 8, for objects of 8-32 px; the recipe alone would take stride 16 at 320 px)
# with one block a stage, and no encoder layer (the deformable decoder and the dense head read the projected
# features): chosen for time per image alone, on random weights (one 1600 x 1200 image through 30 tiles of
# 320 px, 2 threads, 2026-12-06): two blocks 1.7-1.9 s, one block 1.3 s, one block without the encoder's
# attention over 1600 tokens a tile 0.75 s (YOLOv8n through SAHI: 0.7 s)
MODEL = {"backbone_layers": 2, "backbone_blocks": 1, "num_encoder_layers": 0}


def task_config(width: int, height: int) -> SynthConfig:
    """The generated task: 50-300 shapes of 8-32 px (the shorter side; aspect up to 1.4) on ``width`` x ``height``."""
    return SynthConfig(
        image_size=width, image_height=height, min_objects=50, max_objects=300, min_size=8 / width,
        max_size=32 / width, max_aspect=1.4, max_overlap=0.1, classes=SHAPES[:4],
    )  # fmt: skip


def task_data(out: Path, args: argparse.Namespace) -> Path:
    """The dataset under OUT/data, generated once and reused while its definition (task.json) is the same."""
    definition = {
        "config": repr(task_config(args.width, args.height)),
        "train": args.train_images,
        "val": args.val_images,
        "seed": args.data_seed,
    }
    data = out / "data"
    if made_from(data, definition, "another task's data"):
        return data
    print(f"generating {args.train_images} + {args.val_images} images of {args.width} x {args.height} px", flush=True)
    make_dataset(data, args.train_images, args.val_images, args.data_seed, task_config(args.width, args.height))
    (data / "task.json").write_text(json.dumps(definition, indent=1))  # last: its presence marks a whole folder
    return data


def validation(data: Path) -> tuple[dict[str, Any], list[tuple[int, Path]]]:
    ground_truth = json.loads((data / "annotations" / "instances_val.json").read_text())
    return ground_truth, [(int(i["id"]), data / "val" / i["file_name"]) for i in ground_truth["images"]]


def train_ours(data: Path, out: Path, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from detr.engine.config import TrainConfig
    from detr.engine.train import Trainer
    from detr.models.detr import DETR

    config = TrainConfig.from_recipe(
        "scratch", data=str(data), output_dir=str(out), exist_ok=True, epochs=100_000, max_minutes=args.minutes,
        eval_every=100_000, progress=False, log_every=10, seed=args.seed, tile_crop=args.tile,
        train_scales=[args.tile], eval_size=args.tile, max_size=2 * args.tile, crop=False, num_queries=args.queries,
        **({"model_kwargs": MODEL} | args.detr_overrides),
    )  # fmt: skip
    probe = ThreadProbe()  # reads the thread count inside the training loop, at every logged step
    trainer = Trainer(config, loggers=[probe])
    trainer.evaluate = lambda: None  # evaluation outside the clock, as in bench/time_to_accuracy.py
    summary = trainer.fit()
    model = DETR.from_pretrained(out / "final").eval()
    trained = {"steps": summary["steps"], "train_seconds": summary["seconds"], "batch": config.batch_size}
    return model, trained | {"threads_in_training": sorted(probe.seen)}


def predict_ours(
    model: Any, images: list[tuple[int, Path]], tiled: bool, args: argparse.Namespace, dtype: Any = None
) -> tuple:
    """COCO results and seconds per image of ``model`` (whole images, or through tiles)."""
    import torch
    from PIL import Image

    from detr.processing.interop import coco_results

    fast = model.optimize_for_inference(dtype or torch.float32)

    def predict(image: Any) -> list[dict[str, Any]]:
        window = {"tile": args.tile, "tile_overlap": args.overlap, "tile_full_image": args.full_image} if tiled else {}
        (dets,) = fast.predict(image, k=model.num_queries, **window)
        return dets

    predict(Image.open(images[0][1]).convert("RGB"))  # untimed warm-up, as YOLO's
    results, seconds, threads = [], 0.0, set()
    for image_id, path in images:
        image = Image.open(path).convert("RGB")
        start = time.perf_counter()
        dets = predict(image)
        seconds += time.perf_counter() - start
        threads.add(torch.get_num_threads())
        results += coco_results(dets, image_id, model.category_ids)
    return results, seconds / len(images), sorted(threads)


def slice_split(data: Path, split: str, out: Path, args: argparse.Namespace) -> None:
    """``split`` of ``data`` cut by SAHI into ``--tile`` px slices, as OUT/annotations/instances_<split>.json and
    OUT/<split>/ (boxes only)."""
    from sahi.slicing import slice_coco

    sliced, _ = slice_coco(
        coco_annotation_file_path=str(data / "annotations" / f"instances_{split}.json"),
        image_dir=str(data / split),
        output_coco_annotation_file_name="sliced",
        output_dir=str(out / split),
        slice_height=args.tile,
        slice_width=args.tile,
        overlap_height_ratio=args.overlap,
        overlap_width_ratio=args.overlap,
        verbose=False,
    )
    for annotation in sliced["annotations"]:
        annotation.pop("segmentation", None)  # polygons of the boxes: nothing a box detector trains on
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(sliced))
    for leftover in (out / split).glob("sliced*.json"):
        leftover.unlink()


def sliced_yolo_data(data: Path, folder: Path, args: argparse.Namespace) -> Path:
    """SAHI's ``--tile`` px slices of ``data`` in YOLO's layout, under ``folder``/sliced_yolo: made once, and
    reused only while the data (its task.json), the tile and the overlap are the ones they were cut from."""
    from detr.data.convert import convert

    cut_from = {"task": json.loads((data / "task.json").read_text()), "tile": args.tile, "overlap": args.overlap}
    sliced, yolo = folder / "sliced", folder / "sliced_yolo"
    if made_from(yolo, cut_from, "slices of other data, another --tile or another --overlap", "slices.json"):
        return yolo
    if sliced.exists():  # slices without their YOLO copy: an interrupted slicing
        raise SystemExit(
            f"{folder} holds slices of other data, another --tile or another --overlap (or an interrupted slicing): "
            "remove it or give another --out"
        )
    for split in ("train", "val"):
        slice_split(data, split, sliced, args)
    convert(sliced, yolo, to="yolo")
    (yolo / "slices.json").write_text(json.dumps(cut_from, indent=1))  # last: its presence marks whole slices
    return yolo


def train_yolo(data: Path, out: Path, setting: str, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """YOLOv8n from its yaml on SAHI's slices of the training images (under OUT/yolov8n/, made once) for
    ``--minutes``: Ultralytics' defaults for a time budget (``setting`` "default") or the race's short-run
    setting ("tuned": AdamW lr 1e-3, every batch an update, a one-epoch warm-up; bench/time_to_accuracy.py)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    import torch
    from ultralytics import YOLO

    yolo = sliced_yolo_data(data, out.parent / "yolov8n", args)
    model = YOLO("yolov8n.yaml")
    threads, updates = [], []

    def on_start(trainer: Any) -> None:
        torch.set_num_threads(args.threads)  # its select_device set cpu_count - 1
        step = trainer.optimizer_step
        trainer.optimizer_step = lambda: (step(), updates.append(1))[0]  # one call per update (nbs accumulates)

    model.add_callback("on_train_start", on_start)
    model.add_callback("on_train_batch_end", lambda trainer: threads.append(torch.get_num_threads()))
    model.train(
        **yolo_train_args(setting),
        data=str(yolo / "data.yaml"), time=args.minutes / 60, imgsz=args.tile, batch=YOLO_BATCH, device="cpu",
        pretrained=False, amp=False, val=False, plots=False, seed=args.seed, project=str(out.resolve()),
        name="train", exist_ok=True, verbose=False,
    )  # fmt: skip
    torch.set_num_threads(args.threads)
    # its own record: a row per epoch, "time" the training seconds so far
    with open(Path(model.trainer.save_dir) / "results.csv") as f:
        epochs = list(csv.DictReader(f))
    seconds = float(epochs[-1]["time"]) if epochs else 0.0
    trained = {"steps": len(updates), "batches": len(threads), "train_seconds": seconds, "batch": YOLO_BATCH}
    return Path(model.trainer.last), trained | {"threads_in_training": sorted(set(threads))}


def predict_sahi(weights: Path, images: list[tuple[int, Path]], category_ids: list[int], args: argparse.Namespace):
    """COCO results and seconds per image of YOLO through SAHI's sliced prediction."""
    import torch
    from sahi import AutoDetectionModel
    from sahi.predict import get_sliced_prediction

    model = AutoDetectionModel.from_pretrained(
        model_type="ultralytics", model_path=str(weights), confidence_threshold=0.001, device="cpu",
        image_size=args.tile,
    )  # fmt: skip
    from PIL import Image

    def sliced(image: Any) -> Any:
        return get_sliced_prediction(
            image, model, slice_height=args.tile, slice_width=args.tile, overlap_height_ratio=args.overlap,
            overlap_width_ratio=args.overlap, perform_standard_pred=args.full_image, verbose=0,
        )  # fmt: skip

    # untimed warm-up (as ours): its first call sets up Ultralytics' predictor, whose select_device sets
    # cpu_count - 1 torch threads; then the threads every system predicts with
    sliced(Image.open(images[0][1]).convert("RGB"))
    torch.set_num_threads(args.threads)
    results, seconds, threads = [], 0.0, set()
    for image_id, path in images:
        image = Image.open(path).convert("RGB")
        start = time.perf_counter()
        found = sliced(image)
        seconds += time.perf_counter() - start
        threads.add(torch.get_num_threads())
        for prediction in found.object_prediction_list:
            x0, y0, x1, y1 = prediction.bbox.to_xyxy()
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category_ids[prediction.category.id],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(prediction.score.value),
                }
            )
    return results, seconds / len(images), sorted(threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/tiles", help="folder for the data, the runs and results")
    parser.add_argument("--minutes", type=float, default=9.0, help="training minutes of each detector")
    parser.add_argument("--tile", type=int, default=320, help="tile (and slice, and training crop) side in pixels")
    parser.add_argument("--overlap", type=float, default=0.2, help="fraction of a tile its neighbours share")
    parser.add_argument("--full-image", action="store_true", help="the whole image as one more window (both)")
    parser.add_argument("--queries", type=int, default=100, help="our model's queries (detections per tile)")
    parser.add_argument("--train-images", type=int, default=60, help="large training images generated")
    parser.add_argument("--val-images", type=int, default=10, help="large validation images generated")
    parser.add_argument("--width", type=int, default=1600, help="image width in pixels")
    parser.add_argument("--height", type=int, default=1200, help="image height in pixels")
    parser.add_argument(
        "--data-seed",
        type=int,
        default=137,
        help="seed of the generated images (137: the claim's; 37 was development's)",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, training and prediction")
    parser.add_argument("--max-detections", type=int, default=1000, help="detections an image counted by the scoring")
    parser.add_argument(
        "--systems",
        nargs="+",
        default=["detr", "yolov8n", "yolov8n:tuned"],
        choices=("detr", "yolov8n", "yolov8n:tuned"),
    )
    parser.add_argument("--detr-overrides", type=json.loads, default={}, help="JSON: TrainConfig values over ours")
    parser.add_argument("--summarize", metavar="RESULTS_JSONL", help="print the summary of recorded rows and stop")
    args = parser.parse_args(argv)
    if args.summarize:
        rows = [json.loads(line) for line in Path(args.summarize).read_text().splitlines() if line.strip()]
        print("\n".join(summarize(rows)))
        return 0

    import torch

    from detr.engine.evaluate import coco_evaluate

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = task_data(out, args)
    ground_truth, images = validation(data)
    objects = len(ground_truth["annotations"]) / max(1, len(images))
    category_ids = sorted(int(c["id"]) for c in ground_truth["categories"])
    rows = []

    def record(system: str, results: list[dict[str, Any]], per_image: float, threads: list[int], trained: dict) -> None:
        metrics = coco_evaluate(ground_truth, results, max_detections=args.max_detections)
        row = {"system": system, **{k: metrics[k] for k in ("AP", "AP50", "APs", "APm", "AR100")}}
        row |= {"seconds_per_image": per_image, "threads_in_prediction": threads, **trained}
        row |= {"minutes": args.minutes, "tile": args.tile, "seed": args.seed, "data_seed": args.data_seed}
        row |= {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "command": " ".join(sys.argv)}
        rows.append(row)
        with open(out / "results.jsonl", "a") as f:  # one line a row, as it comes: runs add up, none is lost
            f.write(json.dumps(row) + "\n")
        print(
            f"{system:<28} AP {row['AP']:.3f}  AP50 {row['AP50']:.3f}  APs {_fmt(row['APs'])}  APm {_fmt(row['APm'])}"
            f"  AR@{args.max_detections} {row['AR100']:.3f}  {per_image:.2f} s/image  "
            f"({trained['steps']} steps of {trained['batch']} in {trained['train_seconds']:.0f} s; threads: training "
            f"{trained['threads_in_training']}, prediction {threads})",
            flush=True,
        )

    if "detr" in args.systems:
        model, trained = train_ours(data, out / "detr", args)
        record("ours, whole image", *predict_ours(model, images, tiled=False, args=args), trained)
        record(f"ours, tiles of {args.tile}", *predict_ours(model, images, tiled=True, args=args), trained)
        if computes_bf16_natively(torch.device("cpu")):  # a bf16 backbone where the CPU computes bf16 (else slower)
            tiled_bf16 = predict_ours(model, images, tiled=True, args=args, dtype=torch.bfloat16)
            record(f"ours, tiles of {args.tile}, bf16", *tiled_bf16, trained)
    for system in [s for s in args.systems if s.startswith("yolov8n")]:
        setting = system.partition(":")[2] or "default"
        weights, trained = train_yolo(data, out / system.replace(":", "-"), setting, args)
        record(f"YOLOv8n + SAHI, {args.tile}, {setting}", *predict_sahi(weights, images, category_ids, args), trained)
    print(f"{machine()}, {objects:.0f} objects a validation image; rows added to {out / 'results.jsonl'}")
    return 0


def summarize(rows: list[dict[str, Any]]) -> list[str]:
    """Mean and spread (min-max) of AP and seconds per image per system and training minutes, over the runs
    recorded (runs of other minutes, such as a shorter trial in the same OUT, are a line of their own)."""
    lines = []
    for system, minutes in dict.fromkeys((r["system"], r["minutes"]) for r in rows):
        mine = [r for r in rows if (r["system"], r["minutes"]) == (system, minutes)]
        ap, sec = [r["AP"] for r in mine], [r["seconds_per_image"] for r in mine]
        lines.append(
            f"{system:<28} AP mean {sum(ap) / len(ap):.3f}  spread {min(ap):.3f}-{max(ap):.3f}  "
            f"s/image mean {sum(sec) / len(sec):.2f}  spread {min(sec):.2f}-{max(sec):.2f}  "
            f"({len(mine)} runs of {minutes:g} minutes)"
        )
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
