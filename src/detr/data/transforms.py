"""DETR's training and evaluation transforms on ``torchvision.transforms.v2`` and ``tv_tensors``.

Training (the reference recipe): random horizontal flip, then either a random resize of the
short side to one of ``scales`` (long side <= ``max_size``), or a resize to one of
``crop_resize_scales``, a random crop of ``crop_size`` and a random resize as before.
Evaluation: resize to ``eval_size`` / ``max_size``. Both end by converting to float,
normalizing with the ImageNet statistics, dropping boxes the crop made degenerate, and
turning boxes into normalized cxcywh (relative to the image the model sees, before padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from ..processing.preprocess import IMAGENET_MEAN, IMAGENET_STD, pad_batch, resized_size


class RandomResize(nn.Module):
    """Resize the short side to one of ``sizes`` (drawn at random), the long side capped at ``max_size``,
    with the reference code's rounding: the rule ``detr predict`` and :class:`ImagePreprocessor` use too."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        super().__init__()
        self.sizes, self.max_size = list(sizes), max_size

    def forward(self, image: Any, target: Any) -> tuple[Any, Any]:
        # a draw only when there is a choice: evaluation (one size) must not move the global random stream,
        # or how often a run evaluates would change how it trains
        short = self.sizes[int(torch.randint(len(self.sizes), ()))] if len(self.sizes) > 1 else self.sizes[0]
        size = list(resized_size(*TF.get_size(image), short, self.max_size))
        return TF.resize(image, size, antialias=True), resize_target(target, size)


def resize_target(target: dict[str, Any], size: list[int]) -> dict[str, Any]:
    """``target``'s boxes and masks resized with their image to ``size`` (height, width)."""
    target = dict(target, boxes=TF.resize(target["boxes"], size))
    if "masks" in target:  # tv_tensors.Mask: nearest, so they stay binary
        target["masks"] = TF.resize(target["masks"], size)
    return target


class RandomSizeCrop(nn.Module):
    """Crop a random window whose sides are drawn uniformly in [min_size, min(max_size, image side)]."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def forward(self, image: Any, target: Any) -> tuple[Any, Any]:
        height, width = TF.get_size(image)
        h = int(torch.randint(min(self.min_size, height), min(height, self.max_size) + 1, ()).item())
        w = int(torch.randint(min(self.min_size, width), min(width, self.max_size) + 1, ()).item())
        top = int(torch.randint(0, height - h + 1, ()).item())
        left = int(torch.randint(0, width - w + 1, ()).item())
        return TF.crop(image, top, left, h, w), crop_target(target, top, left, h, w)


def crop_target(target: dict[str, Any], top: int, left: int, h: int, w: int) -> dict[str, Any]:
    """``target``'s boxes (clamped to the window) and masks cropped to the window (top, left, h, w)."""
    target = dict(target)
    target["boxes"] = TF.clamp_bounding_boxes(TF.crop(target["boxes"], top, left, h, w))
    if "masks" in target:
        target["masks"] = TF.crop(target["masks"], top, left, h, w)
    return target


class ToDETRTarget(nn.Module):
    """Boxes (xyxy pixels) -> ``box`` normalized cxcywh; labels -> ``class_id``; keeps ids, sizes and
    masks (``masks`` (N, H, W) bool, when the dataset gives them)."""

    def forward(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        height, width = TF.get_size(image)
        boxes = TF.convert_bounding_box_format(target["boxes"], new_format="CXCYWH").as_subclass(torch.Tensor)
        scale = torch.tensor([width, height, width, height], dtype=boxes.dtype)
        out = {
            "class_id": target["labels"],
            "box": (boxes / scale).clamp(0.0, 1.0),
            "image_id": target["image_id"],
            "orig_size": target["orig_size"],
            "size": torch.tensor([height, width]),
        }
        if "masks" in target:
            out["masks"] = target["masks"].as_subclass(torch.Tensor).bool()  # (N, H, W) in the image's pixels
        return image.as_subclass(torch.Tensor), out


def _finish(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> list[nn.Module]:
    return [
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(list(mean), list(std)),
        T.SanitizeBoundingBoxes(min_size=1.0),  # boxes a crop cut to nothing
        ToDETRTarget(),
    ]


def train_transforms(
    scales: Sequence[int],
    max_size: int,
    crop_resize_scales: Sequence[int] | None,
    crop_size: tuple[int, int],
) -> T.Compose:
    """The reference training augmentation (``crop_resize_scales=None`` leaves out the crop branch); the
    reference's sizes are :class:`detr.engine.config.TrainConfig`'s defaults."""
    resize = RandomResize(scales, max_size)
    branches: list[nn.Module] = [resize]
    if crop_resize_scales:
        branches.append(
            T.Compose([RandomResize(crop_resize_scales), RandomSizeCrop(*crop_size), RandomResize(scales, max_size)])
        )
    return T.Compose([T.RandomHorizontalFlip(), T.RandomChoice(branches) if len(branches) > 1 else resize, *_finish()])


def eval_transforms(
    size: int = 800,
    max_size: int = 1333,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Deterministic resize of the short side to ``size`` (long side <= ``max_size``), as ``predict``
    resizes, and normalisation by ``mean`` and ``std`` (a model's ``preprocessing`` has them)."""
    return T.Compose([RandomResize([size], max_size), *_finish(mean, std)])


def collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]], size_divisor: int = 32
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """(image, target) pairs -> (B, 3, H, W) padded images, (B, H, W) mask (True on padding), targets."""
    images = [img for img, _ in batch]
    pixel_values, mask = pad_batch(images, size_divisor)
    return pixel_values, mask, [t for _, t in batch]


__all__ = [
    "RandomResize",
    "RandomSizeCrop",
    "ToDETRTarget",
    "collate",
    "crop_target",
    "eval_transforms",
    "resize_target",
    "train_transforms",
]
