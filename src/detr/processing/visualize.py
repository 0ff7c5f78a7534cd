"""Drawing detections (and ground truth) onto images, legible at any image size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990"]


def colour_of(class_id: int) -> str:
    """One colour per class (the palette repeats after 10 classes)."""
    return PALETTE[class_id % len(PALETTE)]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def _place(
    box: list[float], size: tuple[int, int], placed: list[tuple[int, int, int, int]], w: int, h: int
) -> tuple[int, int]:
    """Top-left corner of a w x h label for ``box``: above its top-left corner, else inside it, kept
    inside the image and moved down past the labels already placed."""
    width, height = size
    x = int(min(max(box[0], 0), max(width - w, 0)))
    y = int(box[1] - h if box[1] - h >= 0 else max(box[1], 0))
    for _ in range(len(placed) + 1):
        clash = [p for p in placed if x < p[2] and p[0] < x + w and y < p[3] and p[1] < y + h]
        if not clash:
            break
        y = max(p[3] for p in clash)
    return x, int(min(y, max(height - h, 0)))


def draw_detections(
    image: Image.Image,
    detections: Sequence[dict[str, Any]],
    ground_truth: Sequence[dict[str, Any]] = (),
    width: int = 2,
    min_side: int = 0,
    legend: bool = False,
) -> Image.Image:
    """``image`` with boxes drawn: detections ({"box": xyxy pixels, "score", "class_id", "class_name"?,
    "mask"?: (H, W) bool, tinted in the class colour})
    in one colour per class, labelled "name score" inside the image and off each other; ground truth
    ({"box", "class_name"?}) in white. An image whose longer side is under ``min_side`` is scaled up
    first (boxes with it), so that a 64 px image stays legible; ``legend`` adds a strip naming the
    classes shown in their colours."""
    image = image.convert("RGB")
    scale = max(1, round(min_side / max(image.size))) if min_side else 1
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        detections = [dict(d, box=[v * scale for v in d["box"]]) for d in detections]
        ground_truth = [dict(g, box=[v * scale for v in g["box"]]) for g in ground_truth]
    canvas = TF.pil_to_tensor(image)  # (3, H, W) uint8
    masks = [d["mask"] for d in detections if d.get("mask") is not None]
    if masks and len(masks) == len(detections):  # a mask model's detections: their pixels tinted
        stacked = torch.stack([torch.as_tensor(m, dtype=torch.bool) for m in masks])  # (N, H, W)
        if scale > 1:
            stacked = stacked.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
        colours = [colour_of(d["class_id"]) for d in detections]
        canvas = draw_segmentation_masks(canvas, stacked, alpha=0.45, colors=colours)
    if ground_truth:
        boxes = torch.tensor([g["box"] for g in ground_truth], dtype=torch.float32).reshape(-1, 4)
        canvas = draw_bounding_boxes(canvas, boxes, colors="white", width=1)
    if detections:
        boxes = torch.tensor([d["box"] for d in detections], dtype=torch.float32).reshape(-1, 4)
        colours = [colour_of(d["class_id"]) for d in detections]
        canvas = draw_bounding_boxes(canvas, boxes, colors=colours, width=width)
    drawn = TF.to_pil_image(canvas)
    pen = ImageDraw.Draw(drawn)
    font = _font(max(10, min(drawn.size) // 24))
    placed: list[tuple[int, int, int, int]] = []
    for det in detections:
        text = f"{det.get('class_name', det['class_id'])} {det['score']:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        w, h = right - left + 4, bottom - top + 4
        x, y = _place(det["box"], drawn.size, placed, w, h)
        pen.rectangle([x, y, x + w, y + h], fill=colour_of(det["class_id"]))
        pen.text((x + 2 - left, y + 2 - top), text, fill="white", font=font)
        placed.append((x, y, x + w, y + h))
    if legend and detections:
        return _with_legend(drawn, {d["class_id"]: str(d.get("class_name", d["class_id"])) for d in detections}, font)
    return drawn


def _with_legend(image: Image.Image, classes: dict[int, str], font: ImageFont.ImageFont) -> Image.Image:
    """``image`` above a white strip naming ``classes`` (id -> name) in their colours."""
    pen = ImageDraw.Draw(image)
    entries = sorted(classes.items())
    heights = [pen.textbbox((0, 0), name, font=font) for _, name in entries]
    line = max(b[3] - b[1] for b in heights) + 8
    out = Image.new("RGB", (image.width, image.height + line), "white")
    out.paste(image, (0, 0))
    pen = ImageDraw.Draw(out)
    x = 4
    for (class_id, name), bbox in zip(entries, heights):
        pen.rectangle([x, image.height + 4, x + line - 8, image.height + line - 4], fill=colour_of(class_id))
        pen.text((x + line - 4 - bbox[0], image.height + 4 - bbox[1]), name, fill="black", font=font)
        x += line + bbox[2] - bbox[0] + 12
    return out


def titled(image: Image.Image, title: str) -> Image.Image:
    """``image`` below a white strip holding ``title`` (one line, cut with "..." where it is wider than the image)."""
    font = _font(max(10, min(14, image.width // 22)))
    pen = ImageDraw.Draw(image)
    text = title
    while len(text) > 4 and pen.textlength(text, font=font) > image.width - 6:
        text = text[: len(text) - 4] + "..."
    left, top, right, bottom = pen.textbbox((0, 0), "Ag" + text, font=font)
    strip = bottom - top + 6
    out = Image.new("RGB", (image.width, image.height + strip), "white")
    out.paste(image.convert("RGB"), (0, strip))
    ImageDraw.Draw(out).text((3 - left, 3 - top), text, fill="black", font=font)
    return out


def image_grid(images: Sequence[Image.Image], columns: int) -> Image.Image:
    """Images of equal size tiled row by row."""
    w, h = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (w * columns, h * rows), "white")
    for i, img in enumerate(images):
        grid.paste(img, ((i % columns) * w, (i // columns) * h))
    return grid
