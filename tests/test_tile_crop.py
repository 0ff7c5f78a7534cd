"""Tile crops (detr.data.tile_crop): SIZE x SIZE crops of unresized training images that keep objects whole."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from detr.data.tile_crop import TileCrop
from detr.engine import TrainConfig

COLOURS = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (250, 250, 10), (10, 250, 250), (250, 10, 250)]


class Rectangles:
    """One (height, width) grey image holding a filled rectangle of COLOURS[k] per box k (label k), with masks."""

    transforms = None

    def __init__(self, height: int, width: int, boxes: list[tuple[int, int, int, int]]) -> None:
        self.height, self.width, self.boxes = height, width, boxes

    def __len__(self) -> int:
        return 1

    def load(self, index: int):
        image = torch.full((3, self.height, self.width), 128, dtype=torch.uint8)
        masks = torch.zeros(len(self.boxes), self.height, self.width, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(self.boxes):
            image[:, y0:y1, x0:x1] = torch.tensor(COLOURS[k], dtype=torch.uint8).view(3, 1, 1)
            masks[k, y0:y1, x0:x1] = True
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(self.boxes, dtype=torch.float32), format="XYXY", canvas_size=(self.height, self.width)
            ),
            "labels": torch.arange(len(self.boxes)),
            "image_id": 7,
            "orig_size": torch.tensor([self.height, self.width]),
            "masks": tv_tensors.Mask(masks),
        }
        return tv_tensors.Image(image), target


def _pixel_box(image: torch.Tensor, colour) -> list[float]:
    """The xyxy box of the pixels of ``colour`` in a (3, H, W) image."""
    ys, xs = (image == torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)).all(0).nonzero(as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


# objects far enough apart that a 64 px window holding one whole cannot reach another
SPARSE = [(20, 30, 40, 44), (150, 20, 178, 36), (40, 150, 52, 170), (200, 140, 224, 168)]


@pytest.mark.parametrize("seed", range(8))
def test_a_crop_around_an_object_holds_it_whole_unresized_with_its_box_and_mask(seed):
    data = Rectangles(200, 260, SPARSE)
    torch.manual_seed(seed)
    image, target = TileCrop(data, 64, objects=1.0).load(0)
    assert tuple(image.shape) == (3, 64, 64)  # a crop of the image's pixels, not a resize
    assert len(target["boxes"]) >= 1 and isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert tuple(target["boxes"].canvas_size) == (64, 64)
    for box, label, mask in zip(target["boxes"].tolist(), target["labels"].tolist(), target["masks"]):
        x0, y0, x1, y1 = SPARSE[label]
        assert box[2] - box[0] == x1 - x0 and box[3] - box[1] == y1 - y0  # whole
        assert box == _pixel_box(image, COLOURS[label])  # and where its pixels are
        assert mask.sum() == (x1 - x0) * (y1 - y0)


def test_a_placement_that_cuts_no_object_is_taken_when_one_is_drawn():
    # one object at x 60..70 of a 128 x 64 image: a 64 px window cuts it from x0 0..5 and 61..64
    data = Rectangles(64, 128, [(60, 10, 70, 30)])
    cut_once = False
    for seed in range(30):
        torch.manual_seed(seed)
        _, target = TileCrop(data, 64, objects=0.0, tries=1).load(0)
        cut_once |= bool(len(target["boxes"])) and target["boxes"][0, 2] - target["boxes"][0, 0] < 10
        torch.manual_seed(seed)
        _, target = TileCrop(data, 64, objects=0.0, tries=30).load(0)
        assert not len(target["boxes"]) or target["boxes"][0, 2] - target["boxes"][0, 0] == 10
    assert cut_once  # one try alone does cut it: the search is what keeps it whole


def test_objects_a_crop_must_cut_keep_their_visible_part_and_the_rest_are_dropped():
    # a 200 px wide object cannot fit a 64 px window: the window lies within it, the box is the window's width
    data = Rectangles(100, 300, [(50, 20, 250, 60), (280, 80, 295, 95)])
    torch.manual_seed(0)
    image, target = TileCrop(data, 64, objects=1.0).load(0)
    for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
        assert box == _pixel_box(image, COLOURS[label])
    assert 0 in target["labels"].tolist() and len(target["masks"]) == len(target["labels"])


def test_tile_crop_settings_are_checked():
    data = Rectangles(64, 64, [(0, 0, 10, 10)])
    with pytest.raises(ValueError, match="at least 32"):
        TileCrop(data, 16)
    with pytest.raises(ValueError, match="probability"):
        TileCrop(data, 64, objects=2.0)
    with pytest.raises(ValueError, match="tile_crop must be 0"):
        TrainConfig(data="x", tile_crop=8)
    assert TrainConfig(data="x", tile_crop=640).tile_crop == 640


def test_training_with_tile_crop_reads_crops_of_the_unresized_images(tmp_path):
    from detr.data.synthetic import SynthConfig, make_dataset
    from detr.engine.train import Trainer, train

    from .conftest import tiny_train_config

    config = SynthConfig(image_size=160, image_height=120, min_objects=8, max_objects=12, min_size=0.05, max_size=0.1)
    make_dataset(tmp_path / "data", train=4, val=2, seed=1, config=config)
    run = tiny_train_config(tmp_path / "data", tmp_path / "run", size=48, tile_crop=48, max_steps=2, eval_every=100)
    trainer = Trainer(run)
    assert isinstance(trainer.seeded.dataset, TileCrop)
    image, _ = trainer.seeded[0]
    assert tuple(image.shape[1:]) == (48, 48)  # a 48 px crop of the 160 x 120 image, not the image resized
    assert train(run)["steps"] == 2
