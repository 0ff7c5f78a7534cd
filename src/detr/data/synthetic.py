"""A seeded synthetic detection dataset in COCO format: coloured shapes on cluttered backgrounds.

Each image holds 1..``max_objects`` shapes of ``SHAPES`` classes, of varied size, colour
and aspect, possibly overlapping (at most ``max_overlap`` IoU between two objects), on a
background of colour gradients, noise and distractor strokes. The same seed gives the same
files. Written in the COCO layout: ``annotations/instances_{train,val}.json`` beside
``train/`` and ``val/`` image folders.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..fileio import atomic_write_text
from ..processing.interop import mask_to_rle
from ..processing.mask_postprocess import panoptic_png

SHAPES = ("circle", "square", "triangle", "cross", "ring")
# five more, for tasks with many classes (``SynthConfig(classes=ALL_SHAPES)``)
MORE_SHAPES = ("diamond", "hexagon", "star", "half_disc", "frame")
ALL_SHAPES = SHAPES + MORE_SHAPES


@dataclass
class SynthConfig:
    image_size: int = 128  # image width in pixels (and height, unless image_height says otherwise)
    min_objects: int = 1
    max_objects: int = 4
    min_size: float = 0.15  # object side as a fraction of the image's width
    max_size: float = 0.5
    max_aspect: float = 1.6  # width / height drawn in [1/max_aspect, max_aspect]
    max_overlap: float = 0.3  # largest IoU allowed between two objects
    classes: tuple[str, ...] = SHAPES
    masks: bool = False  # also write each object's visible pixels (COCO RLE "segmentation"), exact: they are drawn
    # panoptic: the background in two textured regions, these "stuff" classes (above, below a random row),
    # and COCO panoptic annotations (PNG + JSON) besides the instance ones
    stuff: tuple[str, ...] = ()
    # last, so that positional calls written before it keep their meaning
    image_height: int = 0  # 0: square images; else this many pixels high (large images: 1600 x 1200)


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _background(rng: random.Random, width: int, height: int | None = None) -> Image.Image:
    """Two-colour gradient + noise + blurred random strokes: clutter the model must learn to ignore
    (``height``: ``width`` when None)."""
    height = height or width
    c0 = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    c1 = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width
    t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3.0
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(5, 25), (height, width, 3))
    image = Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 10)):
        pts = [(rng.uniform(0, width), rng.uniform(0, height)) for _ in range(rng.randint(2, 4))]
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        draw.line(pts, fill=colour, width=rng.randint(1, 3))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.0)))


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: list[float], colour: tuple[int, int, int], rng: random.Random
) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        if rng.random() < 0.5:
            draw.polygon([(x0 + w / 2, y0), (x1, y1), (x0, y1)], fill=colour)
        else:
            draw.polygon([(x0, y0), (x1, y0), (x0 + w / 2, y1)], fill=colour)
    elif shape == "cross":
        tw, th = w / 3, h / 3
        draw.rectangle([x0 + tw, y0, x1 - tw, y1], fill=colour)
        draw.rectangle([x0, y0 + th, x1, y1 - th], fill=colour)
    elif shape == "ring":
        thick = max(2.0, min(w, h) * 0.22)
        draw.ellipse(box, outline=colour, width=int(round(thick)))
    elif shape == "diamond":
        draw.polygon([(x0 + w / 2, y0), (x1, y0 + h / 2), (x0 + w / 2, y1), (x0, y0 + h / 2)], fill=colour)
    elif shape == "hexagon":  # flat top and bottom, corners on the box's sides
        draw.polygon(
            [
                (x0 + w / 4, y0),
                (x1 - w / 4, y0),
                (x1, y0 + h / 2),
                (x1 - w / 4, y1),
                (x0 + w / 4, y1),
                (x0, y0 + h / 2),
            ],
            fill=colour,
        )
    elif shape == "star":  # five points, stretched so that they touch the box's four sides
        unit = [
            ((1.0 if k % 2 == 0 else 0.45) * math.cos(a), (1.0 if k % 2 == 0 else 0.45) * math.sin(a))
            for k, a in ((k, -math.pi / 2 + k * math.pi / 5) for k in range(10))
        ]
        (ux0, uy0), (ux1, uy1) = [min(c) for c in zip(*unit)], [max(c) for c in zip(*unit)]
        draw.polygon(
            [(x0 + (u - ux0) / (ux1 - ux0) * w, y0 + (v - uy0) / (uy1 - uy0) * h) for u, v in unit], fill=colour
        )
    elif shape == "half_disc":  # the flat side down or up: the disc's centre on the box's edge
        if rng.random() < 0.5:
            draw.pieslice([x0, y0, x1, y1 + h], 180, 360, fill=colour)
        else:
            draw.pieslice([x0, y0 - h, x1, y1], 0, 180, fill=colour)
    elif shape == "frame":
        thick = max(2.0, min(w, h) * 0.2)
        draw.rectangle(box, outline=colour, width=int(round(thick)))
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _contrasting_colour(rng: random.Random, background: Image.Image, box: list[float]) -> tuple[int, int, int]:
    region = np.asarray(background.crop(tuple(int(v) for v in box)), dtype=np.float32)
    mean = region.reshape(-1, 3).mean(0) if region.size else np.full(3, 128.0)
    for _ in range(20):
        colour = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
        if np.abs(colour - mean).sum() > 180:
            break
    return tuple(int(c) for c in colour)  # type: ignore[return-value]


def make_image(rng: random.Random, config: SynthConfig) -> tuple[Image.Image, list[tuple[list[float], int]]]:
    """One image and its objects as (xyxy pixel box, class index)."""
    image, objects, _ = make_image_with_masks(rng, config, masks=False)
    return image, objects


def make_image_with_masks(
    rng: random.Random, config: SynthConfig, lower: tuple[int, Image.Image] | None = None, masks: bool = True
) -> tuple[Image.Image, list[tuple[list[float], int]], list[np.ndarray]]:
    """:func:`make_image` and each object's visible pixels, (H, W) bool: the shape as drawn, less what
    later shapes cover. The random stream is the one :func:`make_image` draws, so images do not change.
    ``lower``: (row, background) pasted over the background from that row down (panoptic stuff).
    ``masks=False``: no masks (an empty list), which large images with hundreds of objects cannot afford."""
    size, height = config.image_size, config.image_height or config.image_size
    image = _background(rng, size, height)
    if lower is not None:
        row, below = lower
        image.paste(below.crop((0, row, size, height)), (0, row))
    draw = ImageDraw.Draw(image)
    objects: list[tuple[list[float], int]] = []
    visible: list[np.ndarray] = []
    wanted = rng.randint(config.min_objects, config.max_objects)
    for _ in range(wanted * 20):
        if len(objects) == wanted:
            break
        side = rng.uniform(config.min_size, config.max_size) * size
        aspect = math.exp(rng.uniform(-math.log(config.max_aspect), math.log(config.max_aspect)))
        w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
        w, h = min(w, size - 2.0), min(h, height - 2.0)
        x0, y0 = rng.uniform(0, size - w), rng.uniform(0, height - h)
        box = [round(x0), round(y0), round(x0 + w), round(y0 + h)]
        if box[2] - box[0] < 4 or box[3] - box[1] < 4:
            continue
        if any(_iou(box, other) > config.max_overlap for other, _ in objects):
            continue
        cls = rng.randrange(len(config.classes))
        colour = _contrasting_colour(rng, image, box)
        shape_draws = random.Random()
        shape_draws.setstate(rng.getstate())  # the mask is drawn with the random draws the shape gets
        _draw_shape(draw, config.classes[cls], box, colour, rng)
        if masks:
            silhouette = Image.new("L", (size, height), 0)
            _draw_shape(ImageDraw.Draw(silhouette), config.classes[cls], box, 255, shape_draws)  # type: ignore[arg-type]
            drawn = np.asarray(silhouette) > 0
            visible = [m & ~drawn for m in visible] + [drawn]  # a later shape hides what it covers
        # PIL fills up to and including x1/y1: the object covers [x0, x1 + 1) in pixels
        objects.append(([float(box[0]), float(box[1]), float(box[2] + 1), float(box[3] + 1)], cls))
    return image, objects, visible


def make_panoptic_image(
    rng: random.Random, config: SynthConfig
) -> tuple[Image.Image, list[tuple[list[float], int]], list[np.ndarray], list[tuple[int, np.ndarray]]]:
    """:func:`make_image_with_masks` on a background of two stuff regions (``config.stuff[0]`` above a
    random row, ``config.stuff[1]`` below, each its own texture); also returns the stuff segments,
    (stuff index, (H, W) bool: its region less the objects' visible pixels), the non-empty ones."""
    if config.image_height and config.image_height != config.image_size:
        raise ValueError("panoptic images are square: leave image_height at 0")
    if len(config.stuff) != 2:
        raise ValueError(f"panoptic images have two stuff regions: give two stuff classes, got {config.stuff}")
    size = config.image_size
    row = rng.randint(int(0.3 * size), int(0.7 * size))
    image, objects, masks = make_image_with_masks(rng, config, lower=(row, _background(rng, size)))
    things = np.any(masks, axis=0) if masks else np.zeros((size, size), dtype=bool)
    above = np.zeros((size, size), dtype=bool)
    above[:row] = True
    stuff = [(k, region & ~things) for k, region in enumerate((above, ~above))]
    return image, objects, masks, [(k, m) for k, m in stuff if m.any()]


def _segment_bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def write_split(out: Path, split: str, count: int, seed: int, config: SynthConfig) -> Path:
    """Write ``count`` images of ``split`` and their COCO annotation file; returns the file's path."""
    rng = random.Random(f"{seed}-{split}")
    image_dir = out / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, panoptic = [], [], []
    panoptic_dir = out / "annotations" / f"panoptic_{split}"
    for i in range(count):
        if config.stuff:
            image, objects, masks, stuff = make_panoptic_image(rng, config)
        else:
            image, objects, masks = make_image_with_masks(rng, config, masks=config.masks)
        name = f"{split}_{i:05d}.jpg"
        image.save(image_dir / name, quality=92)  # JPEG: 10x faster to write than PNG for noisy images
        images.append({"id": i + 1, "file_name": name, "width": image.width, "height": image.height})
        if config.stuff:  # segment ids 1..n: objects (visible), then stuff; 0 is unlabeled (none here)
            things = [(cls + 1, m) for (_, cls), m in zip(objects, masks, strict=True) if m.any()]
            stuff_segments = [(len(config.classes) + k + 1, m) for k, m in stuff]
            ids = np.zeros(masks[0].shape if masks else (config.image_size,) * 2, dtype=np.uint32)
            segments_info = []
            for segment_id, (category, mask) in enumerate([*things, *stuff_segments], start=1):
                ids[mask] = segment_id
                segments_info.append(
                    {
                        "id": segment_id,
                        "category_id": category,
                        "area": int(mask.sum()),
                        "bbox": _segment_bbox(mask),
                        "iscrowd": 0,
                    }
                )
            png = name.rsplit(".", 1)[0] + ".png"
            panoptic_dir.mkdir(parents=True, exist_ok=True)
            panoptic_png(ids).save(panoptic_dir / png)  # COCO: id = R + 256 G + 256^2 B
            panoptic.append({"image_id": i + 1, "file_name": png, "segments_info": segments_info})
        for (box, cls), visible in zip(objects, masks if config.masks else [None] * len(objects), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotation = {
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": cls + 1,
                "bbox": [box[0], box[1], w, h],
                "area": w * h,
                "iscrowd": 0,
            }
            if config.masks:  # COCO's compressed RLE; the area is then the mask's, as COCO counts it
                annotation["segmentation"] = mask_to_rle(visible)
                annotation["area"] = float(visible.sum())
            annotations.append(annotation)
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(config.classes)]
    data = {
        "info": {"description": f"detr synthetic shapes, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    path = out / "annotations" / f"instances_{split}.json"
    atomic_write_text(path, json.dumps(data))
    if config.stuff:
        stuff_categories = [
            {"id": len(config.classes) + k + 1, "name": name, "supercategory": "background", "isthing": 0}
            for k, name in enumerate(config.stuff)
        ]
        things = [dict(c, isthing=1) for c in categories]
        panoptic_data = {"images": images, "annotations": panoptic, "categories": things + stuff_categories}
        atomic_write_text(out / "annotations" / f"panoptic_{split}.json", json.dumps(panoptic_data))
    return path


def make_dataset(
    out: str | Path, train: int = 1000, val: int = 200, seed: int = 0, config: SynthConfig | None = None
) -> Path:
    """Generate a train and a val split under ``out`` (COCO layout); returns ``out``."""
    out = Path(out)
    config = config or SynthConfig()
    write_split(out, "train", train, seed, config)
    write_split(out, "val", val, seed, config)
    return out
