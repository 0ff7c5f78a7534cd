"""``detr convert`` and ``detr check-data``: datasets from any read format to COCO or YOLO, and what a dataset holds.

Conversion keeps the image ids, the class names and the boxes (YOLO's normalized numbers are
written with 6 decimals: well within a pixel). Images are hard-linked where the file system allows,
copied otherwise; the output folder must not hold anything yet.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..fileio import atomic_write, atomic_write_text
from .coco import CocoDetection, find_split

SPLITS = ("train", "val", "test")


def available_splits(source: str | Path, val_fraction: float = 0.1) -> dict[str, CocoDetection]:
    """The splits of ``source`` (any format) that exist, loaded and checked; a dataset without a validation split
    validates on ``val_fraction`` of its images, by a hash of their file names (as ``detr train`` splits it)."""
    found = {}
    for split in SPLITS:
        try:
            where = find_split(source, split, val_fraction=val_fraction)
        except FileNotFoundError:
            continue
        if where.format == "coco" and any(where.annotation_file == d.annotation_file for d in found.values()):
            continue  # one COCO annotation file given as the dataset: a single split
        found[split] = CocoDetection(where)
    if not found:
        find_split(source, "train")  # raises the error that lists the known layouts
    return found


def _place(image: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(image, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(image, target)


def convert(
    source: str | Path, out: str | Path, to: str = "coco", val_fraction: float = 0.1
) -> dict[str, dict[str, int]]:
    """Write the dataset at ``source`` into ``out`` as COCO (one folder per split, with its
    ``_annotations.coco.json``) or YOLO (``data.yaml``, ``images/<split>``, ``labels/<split>``); a dataset without
    a validation split is split as :func:`available_splits` does. Returns the images and boxes written per split."""
    if to not in ("coco", "yolo"):
        raise ValueError(f"--to must be coco or yolo, got {to!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; convert into a new folder (nothing there is overwritten)")
    splits = available_splits(source, val_fraction)
    categories = next(iter(splits.values())).categories
    for name, dataset in splits.items():
        if dataset.categories != categories:
            raise ValueError(f"the {name!r} split declares other categories than the others; they must share one list")
    summary = {}
    for name, dataset in splits.items():
        raw = dataset.annotations.raw
        if to == "coco":
            for info in dataset.images:
                _place(dataset.image_dir / info["file_name"], out / name / info["file_name"])
            kept = {k: raw[k] for k in ("images", "annotations", "categories")}
            atomic_write_text(out / name / "_annotations.coco.json", json.dumps(kept))
        else:
            _write_yolo_split(dataset, out, name, [cid for cid, _ in categories])
        summary[name] = {"images": len(dataset), "boxes": len(raw["annotations"])}
    if to == "yolo":
        names = {i: n for i, (_, n) in enumerate(categories)}
        # no "path:" key: Ultralytics resolves a relative one against the working directory, not this file's
        # folder; without it, it (and detr) read the splits relative to the folder of data.yaml
        lines = [*(f"{s}: images/{s}" for s in splits), "names:", *(f"  {i}: {n}" for i, n in names.items())]
        atomic_write_text(out / "data.yaml", "\n".join(lines) + "\n")
    return summary


def _write_yolo_split(dataset: CocoDetection, out: Path, split: str, category_ids: list[int]) -> None:
    index = {cid: i for i, cid in enumerate(category_ids)}
    boxes: dict[int, list[str]] = {info["id"]: [] for info in dataset.images}
    sizes = {info["id"]: (info["width"], info["height"]) for info in dataset.images}
    for ann in dataset.annotations.raw["annotations"]:
        if ann.get("iscrowd"):
            continue  # YOLO has no crowd boxes
        width, height = sizes[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        x0, y0 = max(x, 0.0), max(y, 0.0)  # YOLO's numbers stay in [0, 1]: the box clipped to its image
        x1, y1 = min(x + w, float(width)), min(y + h, float(height))
        if x1 <= x0 or y1 <= y0:
            continue  # nothing of it inside the image
        x, y, w, h = x0, y0, x1 - x0, y1 - y0
        cx, cy = (x + w / 2) / width, (y + h / 2) / height
        boxes[ann["image_id"]].append(f"{index[ann['category_id']]} {cx:.6f} {cy:.6f} {w / width:.6f} {h / height:.6f}")
    for info in dataset.images:
        relative = Path(info["file_name"])
        _place(dataset.image_dir / relative, out / "images" / split / relative)
        label = (out / "labels" / split / relative).with_suffix(".txt")
        atomic_write_text(label, "".join(line + "\n" for line in boxes[info["id"]]))


def dataset_report(source: str | Path, val_fraction: float = 0.1) -> dict[str, Any]:
    """Per split: images, boxes, boxes per class, images without boxes, boxes dropped as degenerate,
    crowd boxes, annotations of undeclared categories, every box's size relative to its image, where a split made
    here comes from (``val_fraction``: see :func:`available_splits`), and the problems its reader found (each
    naming its file and element)."""
    report: dict[str, Any] = {}
    for name, dataset in available_splits(source, val_fraction).items():
        notes = dataset.annotations
        per_class = {n: 0 for n in dataset.class_names}
        sizes = []
        for info in dataset.images:
            for (x0, y0, x1, y1), cls in notes.boxes[info["id"]]:
                per_class[dataset.class_names[cls]] += 1
                sizes.append(((x1 - x0) * (y1 - y0)) ** 0.5 / (info["width"] * info["height"]) ** 0.5)
        report[name] = {
            "format": dataset.format,
            "source": str(dataset.annotation_file),
            "images": len(dataset),
            "boxes": sum(per_class.values()),
            "classes": len(dataset.class_names),
            "empty_images": sum(1 for info in dataset.images if not notes.boxes[info["id"]]),
            "degenerate_boxes_dropped": notes.dropped_degenerate,
            "crowd_boxes_ignored": notes.ignored_crowd,
            "undeclared_category_annotations_skipped": notes.skipped_undeclared,
            "boxes_per_class": per_class,
            "split_note": dataset.split_note,
            "problems": dataset.problems,
            "relative_box_sizes": sizes,
        }
    return report


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """A PNG: boxes per class (bars, one colour per split) and the distribution of box sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(report.values()))["boxes_per_class"])
    fig, (bars, sizes) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100, gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / len(report)
    for k, (split, entry) in enumerate(report.items()):
        counts = [entry["boxes_per_class"][n] for n in names]
        bars.bar([i + k * width for i in range(len(names))], counts, width=width, label=split)
        if entry["relative_box_sizes"]:
            sizes.hist(entry["relative_box_sizes"], bins=30, range=(0, 1), alpha=0.6, label=split)
    bars.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
    bars.set_xticklabels(names, rotation=90 if len(names) > 8 else 0, fontsize=7 if len(names) > 20 else 9)
    bars.set_ylabel("boxes")
    bars.set_title("boxes per class")
    bars.legend()
    sizes.set_xlabel("box side / image side (square roots of the areas)")
    sizes.set_ylabel("boxes")
    sizes.set_title("box sizes")
    sizes.legend()
    fig.tight_layout()
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out
