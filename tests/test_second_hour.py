"""The second hour: what a user does after the first run (stop, resume, export with the gate, explain, hand
results to other tools) does what they expect, and says so."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import detr
from detr.cli import main
from detr.data.synthetic import SynthConfig, make_dataset

from .conftest import TINY_MODEL

TINY = json.dumps(TINY_MODEL)


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data), "--output-dir", str(out), "--model", "detr_r18", "--no-pretrained-backbone",
        "--num-queries", "5", "--model-kwargs", TINY, "--train-scales", "32", "--max-size", "48",
        "--no-crop", "--eval-size", "32", "--batch-size", "4", "--workers", "0", "--max-steps", "2", "--no-progress",
        "--log-every", "1", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("d"), train=8, val=4, seed=3, config=SynthConfig(image_size=32, max_objects=2)
    )


@pytest.fixture(scope="module")
def model() -> detr.DETR:
    torch.manual_seed(0)
    return detr.detr_r18(num_classes=3, num_queries=6, class_names=["a", "b", "c"], **TINY_MODEL).eval()


# ------------------------------------------------------------------ the Python API takes what users pass
def test_predict_takes_file_paths_and_lists_mixing_paths_and_images(model, tmp_path):
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(2)]
    paths = [tmp_path / f"{i}.png" for i in range(2)]
    for p, a in zip(paths, pixels):
        Image.fromarray(a).save(p)
    by_image = model.predict([Image.fromarray(a) for a in pixels], k=4)
    assert model.predict(str(paths[0]), k=4) == by_image[:1]  # was: TypeError unsupported image type str
    assert model.predict(paths[0], k=4) == by_image[:1]
    assert model.predict([str(paths[0]), Image.fromarray(pixels[1])], k=4) == by_image
    with pytest.raises(FileNotFoundError, match="image file not found: .*missing.jpg"):
        model.predict(str(tmp_path / "missing.jpg"))


def test_predict_on_a_read_only_numpy_image_gives_no_torch_warning(model):
    image = np.asarray(Image.fromarray(np.full((32, 48, 3), 90, np.uint8)))  # read-only, as from a PIL image
    assert not image.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "The given NumPy array is not writable" was a UserWarning
        found = model.predict(image, k=2)
    assert found == model.predict(image.copy(), k=2)


def test_to_supervision_takes_predicts_output_for_one_or_many_images(model):
    pytest.importorskip("supervision")
    images = [np.full((32, 48, 3), 90, np.uint8), np.full((40, 40, 3), 200, np.uint8)]
    one = model.predict([images[0]], k=3)
    converted = detr.to_supervision(one)  # was: TypeError list indices must be integers or slices, not str
    assert isinstance(converted, list) and len(converted) == 1
    np.testing.assert_allclose(converted[0].xyxy, [d["box"] for d in one[0]], rtol=1e-6)
    assert converted[0].data["class_name"].tolist() == [d["class_name"] for d in one[0]]
    many = detr.to_supervision(model.predict(images, k=3))
    assert [len(d) for d in many] == [3, 3]
    assert len(detr.to_supervision(one[0])) == 3  # one image's list: one Detections, as before
    with pytest.raises(TypeError, match="one image's detections"):
        detr.to_supervision([[{"box": [0, 0, 1, 1], "score": 1.0, "class_id": 0}], "x"])
