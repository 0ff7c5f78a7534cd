"""Mosaic augmentation: four training images in one, each scaled down, so that a step sees more objects.

After YOLOv4's mosaic (Bochkovskiy et al. 2020), which DEIM (Huang et al. 2025) brings to DETR as
"dense one-to-one matching": one-to-one matching gives every object one positive query, so images with
few objects give a step few positives; four images in the frame of one give up to four times as many,
at the cost of one image (the model sees the same number of pixels). A training option, off by default
(``TrainConfig.mosaic``): the reference recipe has no mosaic.

A mosaic sample keeps the size of the sample it was drawn for. A centre is drawn in the middle half of
that frame, which it splits into four quadrants; each of four images (the sample's own and three drawn
at random) is scaled to fit the frame, times a factor drawn from ``scale``, and the part of it nearest
the centre fills its quadrant (the rest stays at the ImageNet mean colour, which normalizes to zero).
Boxes are cut with their image; the ones cut to nothing are dropped later by the training transforms'
``SanitizeBoundingBoxes``, as a random crop's are.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from ..processing.preprocess import IMAGENET_MEAN
from .transforms import crop_target, resize_target

# the padding colour: the normalization's mean, so that empty parts of the frame read as zeros to the model
FILL = [round(255 * m) for m in IMAGENET_MEAN]


class LoadableDataset(Protocol):
    """What :class:`Mosaic` reads: raw samples by index (as :class:`detr.data.coco.CocoDetection`)."""

    transforms: Any

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]: ...


class Mosaic(Dataset):
    """``dataset`` whose samples are, with probability ``probability``, mosaics of four of its images.

    dataset: raw (image, target) pairs from ``dataset.load(index)`` (``image`` a (3, H, W) uint8
      ``tv_tensors.Image``; ``target`` with ``boxes`` (N, 4) XYXY pixel ``BoundingBoxes``, ``labels`` (N,),
      ``image_id``, ``orig_size`` and optionally ``masks`` (N, H, W)); ``dataset.transforms`` (the
      training augmentation) is applied after the mosaic, to mosaics and plain samples alike.
    probability: chance that a sample is a mosaic, in [0, 1].
    scale: (low, high) range of the factor each image is scaled by after fitting the frame, in (0, 1].

    Random draws come from torch's generator, so :class:`detr.engine.train.SeededDataset` makes them a
    function of (seed, epoch, index). A mosaic keeps its first image's ``image_id``.
    """

    def __init__(self, dataset: LoadableDataset, probability: float, scale: tuple[float, float] = (0.5, 1.0)) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"mosaic probability must be in [0, 1], got {probability!r}")
        low, high = scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"mosaic scale must be (low, high) with 0 < low <= high <= 1, got {scale!r}")
        self.dataset, self.probability, self.scale = dataset, probability, (float(low), float(high))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image, target = self.dataset.load(index)
        # no draw when mosaics are off: the random stream, so the plain augmentation, stays as without the wrapper
        if self.probability > 0 and float(torch.rand(())) < self.probability:
            others = torch.randint(len(self.dataset), (3,)).tolist()
            image, target = self.combine([(image, target)] + [self.dataset.load(i) for i in others])
        if self.dataset.transforms is not None:
            image, target = self.dataset.transforms(image, target)
        return image, target

    def combine(
        self, samples: list[tuple[tv_tensors.Image, dict[str, Any]]]
    ) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """Four raw samples -> one, in the frame of the first (see the module's docstring)."""
        height, width = TF.get_size(samples[0][0])
        low, high = self.scale
        factor = low + (high - low) * float(torch.rand(()))
        cy = int(height * (0.25 + 0.5 * float(torch.rand(()))))  # the centre, in the middle half of the frame
        cx = int(width * (0.25 + 0.5 * float(torch.rand(()))))
        canvas = torch.tensor(FILL, dtype=torch.uint8).view(3, 1, 1).repeat(1, height, width)  # (3, H, W)
        boxes, labels, masks = [], [], []
        for quadrant, (image, target) in enumerate(samples):
            above, left_of = quadrant < 2, quadrant % 2 == 0  # top-left, top-right, bottom-left, bottom-right
            h_in, w_in = TF.get_size(image)
            fit = min(height / h_in, width / w_in) * factor
            size = [max(1, round(h_in * fit)), max(1, round(w_in * fit))]
            image, target = TF.resize(image, size, antialias=True), resize_target(target, size)
            # the part of the image nearest the centre that fits the quadrant
            h = min(size[0], cy if above else height - cy)
            w = min(size[1], cx if left_of else width - cx)
            if h == 0 or w == 0:
                continue
            top, left = (size[0] - h if above else 0), (size[1] - w if left_of else 0)
            image, target = TF.crop(image, top, left, h, w), crop_target(target, top, left, h, w)
            y, x = (cy - h if above else cy), (cx - w if left_of else cx)  # where it goes in the frame
            canvas[:, y : y + h, x : x + w] = image
            padding = [x, y, width - x - w, height - y - h]  # left, top, right, bottom
            boxes.append(TF.pad(target["boxes"], padding).as_subclass(torch.Tensor))  # (n, 4) in the frame
            labels.append(target["labels"])
            if "masks" in target:
                masks.append(TF.pad(target["masks"], padding, fill=0).as_subclass(torch.Tensor))  # (n, H, W)
        first = samples[0][1]
        out = {
            "boxes": tv_tensors.BoundingBoxes(torch.cat(boxes), format="XYXY", canvas_size=(height, width)),
            "labels": torch.cat(labels),
            "image_id": first["image_id"],
            "orig_size": torch.tensor([height, width]),
        }
        if "masks" in first:
            out["masks"] = tv_tensors.Mask(torch.cat(masks))
        return tv_tensors.Image(canvas), out


__all__ = ["Mosaic"]
