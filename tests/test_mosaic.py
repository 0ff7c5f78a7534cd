"""Mosaic augmentation (detr.data.mosaic): boxes, labels and masks follow their pixels into the frame."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from detr.data.mosaic import FILL, Mosaic
from detr.engine import TrainConfig

# background and object colour of each source image (its object's label is its index)
BACKGROUNDS = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
OBJECTS = [(10, 250, 250), (250, 10, 250), (250, 250, 10), (90, 90, 250)]


class Rectangles:
    """Image k: a (60, 80) frame of BACKGROUNDS[k] with one filled rectangle of OBJECTS[k], label k, and its mask."""

    transforms = None

    def __init__(self, boxes: list[tuple[int, int, int, int]]) -> None:
        self.boxes = boxes  # xyxy pixels, one per image

    def __len__(self) -> int:
        return len(self.boxes)

    def load(self, index: int):
        image = torch.tensor(BACKGROUNDS[index], dtype=torch.uint8).view(3, 1, 1).repeat(1, 60, 80)
        x0, y0, x1, y1 = self.boxes[index]
        image[:, y0:y1, x0:x1] = torch.tensor(OBJECTS[index], dtype=torch.uint8).view(3, 1, 1)
        mask = torch.zeros(1, 60, 80, dtype=torch.bool)
        mask[:, y0:y1, x0:x1] = True
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor([self.boxes[index]], dtype=torch.float32), format="XYXY", canvas_size=(60, 80)
            ),
            "labels": torch.tensor([index]),
            "image_id": 100 + index,
            "orig_size": torch.tensor([60, 80]),
            "masks": tv_tensors.Mask(mask),
        }
        return tv_tensors.Image(image), target


def colour_at(image: torch.Tensor, colour) -> torch.Tensor:
    """(H, W) bool: pixels within 30 of ``colour`` in every channel (resizing blends the edges)."""
    return ((image.int() - torch.tensor(colour).view(3, 1, 1)).abs() <= 30).all(0)


@pytest.mark.parametrize("seed", range(6))
def test_boxes_labels_and_masks_follow_their_pixels(seed):
    data = Rectangles([(10, 8, 50, 40), (30, 20, 78, 58), (0, 0, 24, 30), (40, 10, 70, 50)])
    torch.manual_seed(seed)
    # the first image's sample, and three drawn at random (the data has four, so repeats are possible)
    image, target = Mosaic(data, probability=1.0)[0]
    assert image.shape == (3, 60, 80) and image.dtype == torch.uint8
    boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
    assert target["image_id"] == 100 and target["orig_size"].tolist() == [60, 80]
    assert boxes.canvas_size == (60, 80) and len(boxes) == len(labels) == len(masks) >= 1

    for box, label, mask in zip(boxes, labels.tolist(), masks):
        x0, y0, x1, y1 = box.tolist()
        assert 0 <= x0 <= x1 <= 80 and 0 <= y0 <= y1 <= 60
        if (x1 - x0) < 3 or (y1 - y0) < 3:
            continue  # a sliver a quadrant's edge left: SanitizeBoundingBoxes judges it later
        inside = colour_at(image, OBJECTS[label])[round(y0) + 1 : round(y1) - 1, round(x0) + 1 : round(x1) - 1]
        assert inside.float().mean() > 0.95, f"box {box.tolist()} of label {label} is not on its object's pixels"
        # masks_to_boxes gives the last pixel's index: + 1 for the box's right and bottom edges
        mask_box = masks_to_boxes(mask[None]).squeeze(0).float() + torch.tensor([0.0, 0.0, 1.0, 1.0])
        assert torch.allclose(mask_box, box, atol=1.5)
    # every object pixel in the frame lies in a box of its label: none was moved without its box
    for label in set(labels.tolist()):
        pixels = colour_at(image, OBJECTS[label])
        covered = torch.zeros_like(pixels)
        for box in boxes[labels == label].round().int().tolist():
            covered[max(0, box[1] - 1) : box[3] + 1, max(0, box[0] - 1) : box[2] + 1] = True
        assert not (pixels & ~covered).any()


def test_four_images_fill_their_quadrants():
    data = Rectangles([(0, 0, 1, 1)] * 4)  # backgrounds only, near enough
    torch.manual_seed(0)
    mosaic = Mosaic(data, probability=1.0, scale=(1.0, 1.0))
    found = set()
    for _ in range(8):  # the three other images are drawn at random
        image, _ = mosaic[0]
        # at full scale every quadrant is filled: no padding colour is left
        assert not colour_at(image, FILL).any()
        found |= {k for k, colour in enumerate(BACKGROUNDS) if colour_at(image, colour).any()}
    assert found == {0, 1, 2, 3}


def test_scaled_down_images_leave_padding_and_shrink_their_boxes():
    data = Rectangles([(0, 0, 80, 60)] * 4)  # each object fills its image: its box is the image
    torch.manual_seed(0)
    image, target = Mosaic(data, probability=1.0, scale=(0.5, 0.5)).combine([data.load(k) for k in range(4)])
    assert colour_at(image, FILL).any()
    widths = target["boxes"][:, 2] - target["boxes"][:, 0]
    heights = target["boxes"][:, 3] - target["boxes"][:, 1]
    assert target["labels"].tolist() == [0, 1, 2, 3]
    assert (widths <= 40.5).all() and (heights <= 30.5).all()  # half of 80 x 60, cut by the quadrant or not


def test_probability_zero_leaves_the_samples_and_random_stream_alone():
    class Augmented(Rectangles):
        def transforms(self, image, target):
            return image, dict(target, draw=torch.rand(()))  # what a random augmentation draws

    data = Augmented([(10, 8, 50, 40)] * 4)
    torch.manual_seed(5)
    plain = data.transforms(*data.load(2))
    torch.manual_seed(5)
    wrapped = Mosaic(data, probability=0.0)[2]
    assert torch.equal(plain[0], wrapped[0]) and torch.equal(plain[1]["draw"], wrapped[1]["draw"])


def test_bad_values_are_refused():
    data = Rectangles([(10, 8, 50, 40)])
    with pytest.raises(ValueError, match=r"probability must be in \[0, 1\]"):
        Mosaic(data, probability=1.5)
    with pytest.raises(ValueError, match="0 < low <= high <= 1"):
        Mosaic(data, probability=0.5, scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="mosaic must be a probability"):
        TrainConfig(mosaic=-0.1)
