"""Drawing detections (and ground truth) onto images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990"]


def draw_detections(
    image: Image.Image,
    detections: Sequence[dict[str, Any]],
    ground_truth: Sequence[dict[str, Any]] = (),
    width: int = 2,
) -> Image.Image:
    """``image`` with boxes drawn: detections ({"box": xyxy pixels, "score", "class_id", "class_name"?})
    coloured by class and labelled "name score", ground truth ({"box", "class_name"?}) in white."""
    canvas = TF.pil_to_tensor(image.convert("RGB"))  # (3, H, W) uint8
    if ground_truth:
        boxes = torch.tensor([g["box"] for g in ground_truth], dtype=torch.float32).reshape(-1, 4)
        canvas = draw_bounding_boxes(canvas, boxes, colors="white", width=1)
    if detections:
        boxes = torch.tensor([d["box"] for d in detections], dtype=torch.float32).reshape(-1, 4)
        labels = [f"{d.get('class_name', d['class_id'])} {d['score']:.2f}" for d in detections]
        colors = [PALETTE[d["class_id"] % len(PALETTE)] for d in detections]
        canvas = draw_bounding_boxes(canvas, boxes, labels=labels, colors=colors, width=width)
    return TF.to_pil_image(canvas)


def image_grid(images: Sequence[Image.Image], columns: int) -> Image.Image:
    """Images of equal size tiled row by row."""
    w, h = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (w * columns, h * rows), "white")
    for i, img in enumerate(images):
        grid.paste(img, ((i % columns) * w, (i // columns) * h))
    return grid
