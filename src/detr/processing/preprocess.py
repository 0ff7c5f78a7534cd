"""Images in any common form -> a resized, normalized, padded batch with its padding mask."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
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


# PIL modes of 16- and 32-bit integer grey levels (medical, thermal, scientific cameras)
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def pil_to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, its content kept.

    16-bit grey images (``I;16``, and ``I`` with values in 0..65535) are scaled from their full range
    (a plain ``convert("RGB")`` would clip them to white); 32-bit float images (``F``) must hold values
    in [0, 1]; palette, grey, alpha and CMYK images go through PIL (alpha dropped). Raises
    ``ValueError`` saying what to convert when the values cannot be read as an image.
    """
    if image.mode in _WIDE_INT_MODES or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            if values.size and (not np.isfinite(values).all() or values.min() < 0 or values.max() > 1):
                raise ValueError(
                    "a 32-bit float image (PIL mode F) must hold values in [0, 1]; scale it first, or save it as "
                    "an 8- or 16-bit image"
                )
            scale = 255.0
        else:
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise ValueError(
                    f"a 32-bit integer image (PIL mode {image.mode}) with values outside 0..65535 "
                    f"({values.min():.0f}..{values.max():.0f}); scale it to 16 or 8 bits first"
                )
            scale = 255.0 / 65535.0
        grey = np.clip(np.round(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # what PIL asks for palette images with a transparent colour
    return image.convert("RGB")


def load_image(path: str | os.PathLike, exif: bool = False) -> Image.Image:
    """An image file -> an 8-bit RGB PIL image (any mode converted, see :func:`pil_to_rgb`), or an error naming
    the file (``FileNotFoundError``, else ``ValueError``).

    ``exif``: turn the image as its EXIF orientation says (photos from phones and cameras); datasets keep the
    stored orientation, which their annotations refer to.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_rgb(ImageOps.exif_transpose(img) if exif else img)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err} (corrupt or not an image?)") from err
    except ValueError as err:
        raise ValueError(f"cannot use image {path}: {err}") from err


def as_image(image: Any) -> Image.Image | Tensor:
    """Check and normalise one input image: an RGB PIL image, or a (3, H, W) uint8 / float-in-[0, 1] tensor.

    Accepts image file paths (str or Path, turned as their EXIF orientation says, as ``detr predict`` does),
    PIL images (any mode, see :func:`pil_to_rgb`), (H, W, 3|4) or (H, W) numpy arrays and (3, H, W) tensors.
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, exif=True)
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"a numpy image must have shape (H, W, 3) or (H, W), got {image.shape}")
        pixels = np.ascontiguousarray(image[:, :, :3])
        if not pixels.flags.writeable:  # np.asarray(PIL image) is read-only, which torch warns about
            pixels = pixels.copy()
        image = torch.from_numpy(pixels).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    if not isinstance(image, Tensor):
        raise TypeError(
            f"unsupported image type {type(image).__name__}: pass image file paths, PIL images, numpy arrays or tensors"
        )
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

    def __len__(self) -> int:
        return self.pixel_values.shape[0]

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        """One batch of the images of ``batches``, which must share their padded size (H, W)."""
        shapes = {tuple(b.pixel_values.shape[2:]) for b in batches}
        if len(shapes) != 1:
            raise ValueError(f"batches of different padded sizes cannot be joined: {sorted(shapes)}")
        return Batch(
            *(
                torch.cat(parts)
                for parts in zip(*((b.pixel_values, b.mask, b.image_sizes, b.resized_sizes) for b in batches))
            )
        )


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (saved with a model, so that it reads its images as it was trained to)."""
        return {
            "short_side": self.short_side,
            "max_size": self.max_size,
            "size_divisor": self.size_divisor,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ImagePreprocessor:
        values = dict(values)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def with_sizes(self, short_side: int | None = None, max_size: int | None = None) -> ImagePreprocessor:
        """A copy with the sizes given (not None) replaced: command-line flags over a model's settings."""
        return dataclasses.replace(
            self,
            short_side=self.short_side if short_side is None else short_side,
            max_size=self.max_size if max_size is None else max_size,
        )

    def __call__(self, images: Any) -> Batch:
        """One image or a list of images (file paths, PIL, numpy, tensor; any sizes) -> :class:`Batch`."""
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)) or (isinstance(images, Tensor) and images.dim() == 3):
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


def prediction_inputs(
    x: Any, mask: Tensor | None, image_sizes: Tensor | None, preprocessor: ImagePreprocessor
) -> tuple[Tensor, Tensor, Tensor]:
    """What ``predict`` was given -> ``(pixel_values (B, 3, H, W), mask (B, H, W) bool, sizes (B, 2))``.

    ``x`` is a preprocessed float batch (with its ``mask``), a :class:`Batch`, or raw images, which
    ``preprocessor`` reads. ``sizes`` (height, width) are those boxes are scaled to: ``image_sizes``
    when given, else the original images' (raw images, a Batch), else the unpadded region of ``x``.
    """
    from .checks import check_images
    from .postprocess import valid_sizes

    if isinstance(x, Tensor) and x.dim() == 4 and x.is_floating_point():
        mask = check_images(x, mask)
        sizes = valid_sizes(mask) if image_sizes is None else torch.as_tensor(image_sizes)
        return x, mask, sizes
    if mask is not None:
        raise ValueError("mask is only used with a preprocessed (B, 3, H, W) batch; raw images get their own")
    batch = x if isinstance(x, Batch) else preprocessor(x)
    sizes = batch.image_sizes if image_sizes is None else torch.as_tensor(image_sizes)
    return batch.pixel_values, batch.mask, sizes
