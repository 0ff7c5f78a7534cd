"""``detr check-data``: what a dataset holds, per split (:func:`detr.data.convert.dataset_report`), and a PNG
of its classes and box sizes."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.config import DATASET_HELP  # the standard library only: start-up stays light
from .flags import add_val_fraction_flag

HELP = "what a dataset holds, per split; writes a PNG of classes and box sizes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help=f"the dataset: {DATASET_HELP}")
    p.add_argument(
        "--out",
        "--plot",
        dest="plot",
        help="PNG to write (default: NAME_check.png in the current folder, NAME the "
        "dataset's folder or file name; -2 ... if taken)",
    )
    add_val_fraction_flag(p)


def run(args: argparse.Namespace) -> int:
    from ..data.convert import dataset_report, plot_report
    from ..fileio import free_folder

    report = dataset_report(args.data, args.val_fraction)
    columns = ("images", "boxes", "classes", "empty_images", "degenerate_boxes_dropped", "crowd_boxes_ignored")
    headers = [c.replace("_", " ") for c in columns]
    print(f"{'split':<7}" + "".join(f"  {h}" for h in headers))
    for split, entry in report.items():
        cells = "".join(f"  {entry[c]:>{len(h)}}" for c, h in zip(columns, headers))
        print(f"{split:<7}{cells}  ({entry['format']}: {entry['source']})")
        skipped = entry["undeclared_category_annotations_skipped"]
        if skipped:
            print(f"         {skipped} annotations of undeclared categories skipped")
        if entry["split_note"]:
            print(f"         {entry['split_note']}")
    first = next(iter(report.values()))
    print(f"classes: {', '.join(first['boxes_per_class'])}")
    problems = list(dict.fromkeys(p for entry in report.values() for p in entry["problems"]))
    print(f"{len(problems)} problems" + (":" if problems else ""))
    for problem in problems:
        print(f"  {problem}")
    if args.plot:
        png = plot_report(report, args.plot)
    else:  # in the current folder (never into the dataset), under a name no earlier file has
        stem = Path(f"{Path(args.data).resolve().stem or 'dataset'}_check")
        png = plot_report(report, free_folder(stem, lambda p: p.with_suffix(".png").exists()).with_suffix(".png"))
    print(f"wrote {png} (boxes per class, box sizes)")
    return 0
