"""Images in any common form -> a resized, normalized, padded batch with its padding mask."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_size(height: int, width: int, short_side: int, max_size: int | None) -> tuple[int, int]:
    """(height, width) after scaling the short side to ``short_side``, long side capped at ``max_size``.

    The rounding is that of the DETR reference transforms.
    """
    if max_size is not None:
        lo, hi = float(min(height, width)), float(max(height, width))
        if hi / lo * short_side > max_size:
            short_side = int(round(max_size * lo / hi))
    if (width <= height and width == short_side) or (height <= width and height == short_side):
        return height, width
    if width < height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def as_image(image: Any) -> Image.Image | Tensor:
    """Check and normalise one input image: an RGB PIL image, or a (3, H, W) uint8 / float-in-[0, 1] tensor.

    Accepts PIL images (any mode), (H, W, 3|4) or (H, W) numpy arrays and (3, H, W) tensors.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"a numpy image must have shape (H, W, 3) or (H, W), got {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image[:, :, :3])).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    if not isinstance(image, Tensor):
        raise TypeError(f"unsupported image type {type(image).__name__}: pass PIL images, numpy arrays or tensors")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"an image tensor must have shape (3, H, W), got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image
    if not image.is_floating_point():
        raise TypeError(f"image tensors must be uint8 (0..255) or float (0..1), got {image.dtype}")
    if image.numel() and (image.min() < 0 or image.max() > 1):
        raise ValueError(
            "float images must hold values in [0, 1] (not yet normalized); pass uint8 for 0..255 data or divide by 255"
        )
    return image


def to_image_tensor(image: Any) -> Tensor:
    """Any accepted image (see :func:`as_image`) -> (3, H, W) float32 in [0, 1]."""
    return TF.to_dtype(TF.to_image(as_image(image)), torch.float32, scale=True)


@dataclass
class Batch:
    """A padded batch ready for ``DETR.forward``.

    pixel_values: (B, 3, H, W) float32, normalized, padded at bottom/right.
    mask: (B, H, W) bool, True on padding.
    image_sizes: (B, 2) int64 (height, width) of the original images.
    resized_sizes: (B, 2) int64 (height, width) of the images inside the batch.
    """

    pixel_values: Tensor
    mask: Tensor
    image_sizes: Tensor
    resized_sizes: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.pixel_values, self.mask, self.image_sizes, self.resized_sizes)))


def pad_batch(images: Sequence[Tensor], size_divisor: int = 32) -> tuple[Tensor, Tensor]:
    """(3, H_i, W_i) tensors -> (B, 3, H, W) zero-padded batch and (B, H, W) mask, H, W multiples of size_divisor."""
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    if size_divisor > 1:
        height = math.ceil(height / size_divisor) * size_divisor
        width = math.ceil(width / size_divisor) * size_divisor
    batch = images[0].new_zeros((len(images), 3, height, width))
    mask = torch.ones((len(images), height, width), dtype=torch.bool, device=images[0].device)
    for i, img in enumerate(images):
        batch[i, :, : img.shape[1], : img.shape[2]] = img
        mask[i, : img.shape[1], : img.shape[2]] = False
    return batch, mask


@dataclass
class ImagePreprocessor:
    """Resize (short side ``short_side``, long side <= ``max_size``), normalize, pad to ``size_divisor``.

    Defaults are DETR's evaluation transform, except that the reference pads only to the
    largest image of the batch: ``size_divisor=1`` reproduces that exactly (padding changes
    the features near the bottom and right borders slightly). Set ``short_side=None`` to
    keep sizes.
    """

    short_side: int | None = 800
    max_size: int | None = 1333
    size_divisor: int = 32
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, images: Any) -> Batch:
        """One image or a list of images (PIL, numpy, tensor; any sizes) -> :class:`Batch`."""
        if isinstance(images, (Image.Image, np.ndarray)) or (isinstance(images, Tensor) and images.dim() == 3):
            images = [images]
        if isinstance(images, Tensor) and images.dim() == 4:
            images = list(images)
        if not isinstance(images, Sequence) or len(images) == 0:
            raise ValueError("pass one image or a non-empty list of images")
        tensors, original, resized = [], [], []
        for img in images:
            img = as_image(img)
            h, w = TF.get_size(img)
            if h == 0 or w == 0:
                raise ValueError(f"image of size {h}x{w} has no pixels")
            original.append((h, w))
            if self.short_side is not None:
                nh, nw = resized_size(h, w, self.short_side, self.max_size)
                if (nh, nw) != (h, w):
                    # resized before conversion to float, in 8 bits for PIL and uint8 inputs, as the reference
                    img = TF.resize(img, [nh, nw], antialias=True)
            img = TF.to_dtype(TF.to_image(img), torch.float32, scale=True)  # (3, h, w) in [0, 1]
            resized.append(tuple(img.shape[1:]))
            tensors.append(TF.normalize(img, list(self.mean), list(self.std)))
        pixel_values, mask = pad_batch(tensors, self.size_divisor)
        return Batch(pixel_values, mask, torch.tensor(original), torch.tensor(resized))


def preprocess_images(images: Any, **kwargs: Any) -> Batch:
    """Shortcut for ``ImagePreprocessor(**kwargs)(images)``."""
    return ImagePreprocessor(**kwargs)(images)
