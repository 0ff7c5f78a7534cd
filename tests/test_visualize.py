"""Pictures of detections stay legible: labels inside the image, off each other, small images scaled up."""

import numpy as np
import torch
from PIL import Image, ImageColor

from detr.processing.visualize import _place, colour_of, draw_detections


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_labels_of_boxes_at_the_same_corner_do_not_cover_each_other():
    placed = []
    for _ in range(4):
        x, y = _place([10.0, 30.0, 60.0, 80.0], (100, 100), placed, 40, 12)
        placed.append((x, y, x + 40, y + 12))
    assert all(not _overlap(a, b) for i, a in enumerate(placed) for b in placed[i + 1 :])


def test_a_label_of_a_box_at_the_image_edge_stays_inside_the_image():
    x, y = _place([90.0, 0.0, 100.0, 10.0], (100, 100), [], 40, 12)
    assert 0 <= x <= 60 and 0 <= y <= 88


def test_small_images_are_scaled_up_with_their_boxes_and_the_legend_names_the_classes():
    image = Image.new("RGB", (64, 48), "black")
    det = {"box": [8.0, 8.0, 24.0, 24.0], "score": 0.9, "class_id": 1, "class_name": "cat"}
    drawn = draw_detections(image, [det], min_side=256, legend=True)
    assert drawn.width == 256 and drawn.height > 192  # 4x, plus the legend strip
    pixels = np.asarray(drawn)
    colour = tuple(int(colour_of(1)[i : i + 2], 16) for i in (1, 3, 5))
    # the box's right edge lands at 4 * 24 = 96 on the scaled picture, in the class colour
    assert tuple(pixels[64, 95]) == colour or tuple(pixels[64, 96]) == colour
    legend = pixels[192:]
    assert (legend == np.array(colour)).all(axis=-1).any()  # the swatch
    plain = draw_detections(image, [det])
    assert plain.size == (64, 48)


def test_masks_are_tinted_in_their_class_colour_and_nothing_else_is():
    from detr.processing.visualize import colour_of

    image = Image.new("RGB", (40, 30), (0, 0, 0))
    mask = torch.zeros(30, 40, dtype=torch.bool)
    mask[10:20, 5:15] = True
    drawn = draw_detections(image, [{"box": [2, 2, 38, 28], "score": 0.9, "class_id": 3, "mask": mask}], width=1)
    pixels = np.asarray(drawn)
    inside, outside = pixels[15, 10], pixels[24, 30]
    expected = np.round(0.45 * np.array(ImageColor.getrgb(colour_of(3)))).astype(int)  # alpha 0.45 over black
    assert np.abs(inside.astype(int) - expected).max() <= 1 and outside.tolist() == [0, 0, 0]
