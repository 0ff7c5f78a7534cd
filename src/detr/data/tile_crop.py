"""Tile crops: training on large images at the scale tiled prediction reads them.

Tiled prediction (``predict(..., tile=SIZE)``, ``detr predict --tile SIZE``) cuts a large image into SIZE x
SIZE windows of its own pixels. A model trained on the whole images resized to its input size sees their
small objects shrunk; trained on SIZE x SIZE crops of the unresized images it sees them at the scale it
will predict them. A training option, off by default (``TrainConfig.tile_crop``, ``detr train
--tile-crop SIZE``); train at ``--train-scales SIZE --eval-size SIZE`` so that a crop is not resized again.

A crop is, with chance ``objects``, placed around one of the image's objects drawn at random (so that
sparse images still give objects; the object lies wholly inside), else anywhere. Of up to ``tries``
placements drawn, the first that cuts no object is taken (objects stay whole wherever the image allows),
else the one that cuts the fewest; an object it cuts keeps its visible part, as a tile's border cuts it
at prediction. Objects outside the crop are dropped.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .mosaic import LoadableDataset
from .transforms import crop_target


class TileCrop(Dataset):
    """``dataset`` whose samples are ``size`` x ``size`` crops of its images, unresized (module docstring).

    dataset: raw (image, target) pairs from ``dataset.load(index)`` (``image`` a (3, H, W) uint8
      ``tv_tensors.Image``; ``target`` with ``boxes`` (N, 4) XYXY pixel ``BoundingBoxes``, ``labels`` (N,),
      optionally ``masks`` (N, H, W)); ``dataset.transforms`` (the training augmentation) is applied after the
      crop. An image smaller than ``size`` along a side is kept whole along it.
    objects: chance that a crop is placed around an object drawn at random, in [0, 1].
    tries: placements drawn in search of one that cuts no object.

    Like :class:`detr.data.mosaic.Mosaic` it offers ``load`` (the cropped raw sample), so a mosaic can be
    made of tile crops; random draws come from torch's generator (seeded per sample in training).
    """

    def __init__(self, dataset: LoadableDataset, size: int, objects: float = 0.5, tries: int = 10) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 32:
            raise ValueError(f"tile crop size must be a size in pixels of at least 32, got {size!r}")
        if not 0.0 <= objects <= 1.0:
            raise ValueError(f"objects must be a probability in [0, 1], got {objects!r}")
        if tries < 1:
            raise ValueError(f"tries must be >= 1, got {tries}")
        self.dataset, self.size, self.objects, self.tries = dataset, size, float(objects), tries

    @property
    def transforms(self) -> Any:
        return self.dataset.transforms

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image, target = self.dataset.load(index)
        return self.crop(image, target)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image, target = self.load(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def crop(self, image: tv_tensors.Image, target: dict[str, Any]) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """One raw sample -> its crop: the window's pixels, its boxes shifted (cut ones clipped), the rest dropped."""
        height, width = TF.get_size(image)
        h, w = min(self.size, height), min(self.size, width)
        boxes = target["boxes"].as_subclass(torch.Tensor).float()  # (N, 4) xyxy pixels
        # the range of top-left corners: anywhere, or around a drawn object (wholly inside where it fits)
        x_range, y_range = (0, width - w), (0, height - h)
        if len(boxes) and float(torch.rand(())) < self.objects:
            x0, y0, x1, y1 = boxes[int(torch.randint(len(boxes), ()))].tolist()
            x_range = _around(x0, x1, w, width)
            y_range = _around(y0, y1, h, height)
        best, fewest = None, None
        for _ in range(self.tries):
            left = int(torch.randint(x_range[0], x_range[1] + 1, ()))
            top = int(torch.randint(y_range[0], y_range[1] + 1, ()))
            cut = int(_cut(boxes, left, top, left + w, top + h).sum())
            if fewest is None or cut < fewest:
                best, fewest = (left, top), cut
            if cut == 0:
                break
        left, top = best
        image, target = TF.crop(image, top, left, h, w), crop_target(target, top, left, h, w)
        kept = (target["boxes"][:, 2:] > target["boxes"][:, :2]).all(1)  # an area left inside the crop
        target["boxes"] = tv_tensors.wrap(target["boxes"][kept], like=target["boxes"])
        target["labels"] = target["labels"][kept]
        if "masks" in target:
            target["masks"] = tv_tensors.Mask(target["masks"][kept])
        return image, target


def _around(low: float, high: float, window: int, size: int) -> tuple[int, int]:
    """The window starts along one side that hold [low, high] whole, within [0, size - window]; an object
    larger than the window: the starts that keep the window inside it."""
    first, last = math.ceil(high - window), math.floor(low)
    if first > last:  # larger than the window: the window lies within the object
        first, last = math.floor(low), math.ceil(high - window)
    first, last = max(0, min(first, size - window)), max(0, min(last, size - window))
    return min(first, last), max(first, last)


def _cut(boxes: torch.Tensor, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    """(N,) bool: boxes that the window [x0, x1) x [y0, y1) holds part of, but not all."""
    inside = (boxes[:, 0] >= x0) & (boxes[:, 1] >= y0) & (boxes[:, 2] <= x1) & (boxes[:, 3] <= y1)
    touches = (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)
    return touches & ~inside


__all__ = ["TileCrop"]
