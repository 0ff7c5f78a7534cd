"""``detr explain``: pictures of what a model looks at (:mod:`detr.explain`), one per image, and explained.json."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from .flags import PYTORCH_HELP, add_image_flags
from .inputs import image_paths

HELP = "pictures of what a model looks at: attention of each detection and of points"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_flags(p, out="explained", what="pictures", weights=PYTORCH_HELP)
    p.add_argument("--layer", type=int, default=-1, help="decoder and encoder layer whose attention is shown")
    p.add_argument("--head", type=int, help="attention head shown (default: the mean over heads)")
    p.add_argument("--points", type=int, default=4, help="encoder self-attention of this many detection centres")


def run(args: argparse.Namespace) -> int:
    from ..data.coco import read_image
    from ..device import resolve_device
    from ..engine.outputs import output_names
    from ..explain import explain_image, image_attention
    from ..fileio import atomic_write, atomic_write_text, free_folder, holds_any
    from ..loader import load_model

    model = load_model(args.weights, args.model).to(resolve_device(args.device)).eval()
    paths = image_paths(args.images)
    out = Path(args.out) if args.exist_ok else free_folder(args.out, lambda p: holds_any(p, ("explained.json",)))
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for path, name in zip(paths, output_names(paths), strict=True):
        image = read_image(path, exif=True)
        found = image_attention(model, image, args.threshold)
        picture, dets = explain_image(model, image, args.threshold, args.layer, args.head, args.points, found=found)
        target = out / f"{name}_explain.png"
        atomic_write(target, lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
        summary[str(path)] = {"picture": str(target), "detections": dets, "best_score": found.best_score}
        if dets:
            print(f"{path}: {len(dets)} detections -> {target}")
        else:  # the picture alone would be the bare photo
            print(
                f"{path}: no detection scored >= {args.threshold:g} (the best: {found.best_score:.2f}); "
                f"try --threshold {max(0.01, math.floor(found.best_score * 100) / 100):g} -> {target}"
            )
    atomic_write_text(out / "explained.json", json.dumps(summary, indent=1))
    return 0
