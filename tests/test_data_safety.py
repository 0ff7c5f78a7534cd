"""Bad input and data safety: nothing a user feeds in corrupts a model, loses a file or passes silently."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import detr
from detr.cli import main
from detr.data import CocoDetection, DatasetError
from detr.data.synthetic import SynthConfig, make_dataset
from detr.engine import TrainConfig, Trainer
from detr.fileio import atomic_write, atomic_write_text
from detr.processing.preprocess import pil_to_rgb

from .conftest import TINY_MODEL, tiny_train_config


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("d"),
        train=8,
        val=4,
        seed=3,
        config=SynthConfig(image_size=32, max_objects=2, classes=("circle", "square", "triangle")),
    )


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = detr.detr_r18(num_classes=3, num_queries=5, class_names=["circle", "square", "triangle"], **TINY_MODEL)
    return model.eval().save_pretrained(tmp_path_factory.mktemp("m") / "model")


def config(data: Path, out: Path, **kwargs) -> TrainConfig:
    return tiny_train_config(data, out, **{"max_steps": 1, "val_split": "", **kwargs})


# 1 ---------------------------------------------------------------- run folders
def test_a_run_folder_is_never_written_over(shapes, tmp_path, capsys):
    first = tmp_path / "runs" / "x"
    Trainer(config(shapes, first)).fit()
    before = (first / "checkpoint.pth").read_bytes()
    summary = Trainer(config(shapes, first)).fit()
    assert summary["output_dir"] == str(tmp_path / "runs" / "x-2")
    assert "holds an earlier run, left as it is: this run writes to" in capsys.readouterr().out
    assert (first / "checkpoint.pth").read_bytes() == before and (tmp_path / "runs" / "x-2" / "final").is_dir()
    assert Trainer(config(shapes, first)).out.name == "x-3"
    # asked for: written into, with a log of its own
    Trainer(config(shapes, first, exist_ok=True)).fit()
    records = [json.loads(line) for line in (first / "log.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records if r["type"] != "train"] == []


# 2 ---------------------------------------------------------------- permissions
def test_saved_files_get_the_permissions_the_umask_gives(tmp_path, saved_model):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        os.chmod(tmp_path / "a.txt", 0o600)  # a file's own permissions survive its next atomic write
        atomic_write_text(tmp_path / "a.txt", "y")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o600
        model = detr.DETR.from_pretrained(saved_model)
        model.save_pretrained(tmp_path / "m")
        for name in ("model.safetensors", "config.json"):
            assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == 0o644, name
    finally:
        os.umask(old)


def test_a_full_disk_keeps_the_previous_file(tmp_path):
    path = atomic_write_text(tmp_path / "checkpoint.pth", "good")

    def full(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="no space left on the device while writing .*checkpoint.pth; the previous"):
        atomic_write(path, full)
    assert path.read_text() == "good" and list(tmp_path.iterdir()) == [path]


# 3 ---------------------------------------------------------------- strict shapes
def test_a_checkpoint_whose_shapes_do_not_fit_is_refused(tmp_path, saved_model, capsys):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((saved_model / "config.json").read_text())
    tensors = load_file(str(saved_model / "model.safetensors"))
    tensors["class_head.weight"] = torch.zeros(4, 33)  # 4 classes + "no object" right, but 33 features, not 32
    save_file(tensors, str(bad / "model.safetensors"))
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    assert main(["predict", str(image), "--weights", str(bad), "--out", str(tmp_path / "p"), "--size", "32"]) == 2
    assert "wrong shapes (1): class_head.weight (checkpoint (4, 33), model (4, 32))" in capsys.readouterr().err
    # fine-tuning may give a class head other rows, never other features
    with pytest.raises(detr.CheckpointError, match="wrong shapes"):
        detr.detr_r18(num_classes=7, num_queries=5, weights=bad, **TINY_MODEL)


# 4, 5 ------------------------------------------------------------- predict on folders
def test_predict_keeps_going_past_a_bad_image_and_keeps_one_output_per_input(tmp_path, saved_model, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (40, 30), "red").save(tmp_path / folder / "img.jpg")
    good = (tmp_path / "a" / "img.jpg").read_bytes()
    (tmp_path / "a" / "broken.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    Image.new("RGB", (40, 30), "blue").save(tmp_path / "a" / "img.png")  # same stem, other suffix
    out = tmp_path / "pred"
    args = ["--weights", str(saved_model), "--size", "32", "--threshold", "0", "--k", "2"]
    assert main(["predict", str(tmp_path / "a"), str(tmp_path / "b" / "img.jpg"), "--out", str(out), *args]) == 0
    report = json.loads((out / "detections.json").read_text())
    assert sorted(Path(p).name for p in report) == ["img.jpg", "img.jpg", "img.png"]
    assert sorted(p.name for p in out.glob("*.png")) == [
        "a__img.jpg_detections.png",
        "a__img.png_detections.png",
        "b__img_detections.png",
    ]
    skipped = json.loads((out / "skipped.json").read_text())
    assert (
        list(skipped) == [str(tmp_path / "a" / "broken.jpg")]
        and "cannot read image" in skipped[str(tmp_path / "a" / "broken.jpg")]
    )
    captured = capsys.readouterr()
    assert "skipped 1 unreadable images" in captured.out and "broken.jpg" in captured.err
    # the earlier predictions stay; a second run writes beside them
    assert main(["predict", str(tmp_path / "b"), "--out", str(out), *args]) == 0
    assert (out.parent / "pred-2" / "detections.json").is_file() and len(
        json.loads((out / "detections.json").read_text())
    ) == 3
    # --strict, or nothing readable: a failure exit
    assert main(["predict", str(tmp_path / "a"), "--out", str(tmp_path / "s"), "--strict", *args]) == 1
    assert main(["predict", str(tmp_path / "a" / "broken.jpg"), "--out", str(tmp_path / "n"), *args]) == 1


# 6 ---------------------------------------------------------------- image modes
def test_16_bit_and_other_image_modes_keep_their_content():
    ramp = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    wide = Image.fromarray(ramp)
    assert wide.mode == "I;16"
    rgb = np.asarray(pil_to_rgb(wide))
    assert rgb.shape == (32, 64, 3) and rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    assert np.abs(rgb[..., 0].astype(float) - ramp / 257).max() <= 0.5  # scaled, not clipped
    assert (np.asarray(wide.convert("RGB")) == 255).mean() > 0.95  # what PIL alone gives: clipped to white
    floats = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32))
    assert np.asarray(pil_to_rgb(floats))[0, 0, 0] == 128
    with pytest.raises(ValueError, match=r"float image \(PIL mode F\) must hold values in \[0, 1\]"):
        pil_to_rgb(Image.fromarray(np.full((4, 4), 7.0, dtype=np.float32)))
    palette = Image.new("P", (8, 8), 3)
    palette.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90])
    assert np.asarray(pil_to_rgb(palette))[0, 0].tolist() == [70, 80, 90]
    for mode in ("CMYK", "LA", "RGBA", "1", "L"):
        assert pil_to_rgb(Image.new(mode, (8, 6))).mode == "RGB"


def test_exif_orientation_is_applied_by_predict(tmp_path, saved_model):
    image = Image.new("RGB", (40, 20), "green")
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert (
        main(["predict", str(tmp_path / "phone.jpg"), "--weights", str(saved_model), "--out", str(tmp_path / "p")]) == 0
    )
    with Image.open(tmp_path / "p" / "phone_detections.png") as drawn:
        # portrait, as the phone showed it (scaled up for legibility, maybe a legend strip below)
        assert drawn.width % 20 == 0 and drawn.height >= 2 * drawn.width


# 7, 8 ------------------------------------------------------------- datasets
def test_an_empty_training_split_is_refused(shapes, tmp_path):
    path = shapes / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    empty = tmp_path / "empty"
    (empty / "annotations").mkdir(parents=True)
    (empty / "train").mkdir()
    (empty / "annotations" / "instances_train.json").write_text(json.dumps(dict(data, images=[], annotations=[])))
    with pytest.raises(ValueError, match=r"the 'train' split has no images: .*instances_train.json lists none"):
        Trainer(config(empty, tmp_path / "run"))


def test_a_duplicate_image_id_is_refused(shapes, tmp_path):
    data = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    data["images"][1]["id"] = data["images"][0]["id"]
    root = tmp_path / "dup"
    (root / "annotations").mkdir(parents=True)
    (root / "train").symlink_to(shapes / "train")
    (root / "annotations" / "instances_train.json").write_text(json.dumps(data))
    with pytest.raises(
        DatasetError, match=rf"image id\(s\) \[{data['images'][0]['id']}\] appear more than once in 'images'"
    ):
        CocoDetection(root, "train")


# 9 ---------------------------------------------------------------- categories by identity
def test_categories_are_matched_by_identity_not_position(shapes, tmp_path, saved_model, capsys):
    """The same three names under permuted ids: predictions carry each name's own id."""
    model = detr.DETR.from_pretrained(saved_model)
    with torch.no_grad():
        model.class_head.bias.zero_()
        model.class_head.bias[1] = 10.0  # "square" wins every query
    model.save_pretrained(tmp_path / "square")
    data = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    square = next(c["id"] for c in data["categories"] if c["name"] == "square")
    permuted = {c["id"]: 100 + (c["id"] * 7) % 5 for c in data["categories"]}
    data["categories"] = [dict(c, id=permuted[c["id"]]) for c in data["categories"]]
    for ann in data["annotations"]:
        ann["category_id"] = permuted[ann["category_id"]]
    root = tmp_path / "permuted"
    (root / "annotations").mkdir(parents=True)
    (root / "val").symlink_to(shapes / "val")
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    out = tmp_path / "e.json"
    args = ["--weights", str(tmp_path / "square"), "--size", "32", "--workers", "0", "--out", str(out)]
    assert main(["eval", "--data", str(root), *args]) == 0
    predictions = json.loads(out.read_text())["predictions"]
    assert {p["category_id"] for p in predictions} == {permuted[square]}
    assert "by name" in capsys.readouterr().out
    # names the model does not know: refused, naming them
    data["categories"][0]["name"] = "hexagon"
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    assert main(["eval", "--data", str(root), *args]) == 2
    assert "categories the model does not know, by id or by name: 'hexagon'" in capsys.readouterr().err


# 10 --------------------------------------------------------------- non-finite input
def test_non_finite_input_is_refused_before_it_reaches_the_model(shapes, tmp_path, monkeypatch):
    trainer = Trainer(config(shapes, tmp_path / "run", model_kwargs=dict(TINY_MODEL, backbone_norm="bn")))
    load = trainer.train_set.load

    def poisoned(index):
        image, target = load(index)
        return image, target

    monkeypatch.setattr(trainer.train_set, "load", poisoned)
    monkeypatch.setattr(trainer.train_set, "transforms", _with_nan(trainer.train_set.transforms))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"epoch 0, step 1, images \[.*\.jpg.*\]: x holds NaN or inf values in image"):
        trainer.fit()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics untouched
    with pytest.raises(ValueError, match="x holds NaN or inf"):
        trainer.model.eval()(torch.full((1, 3, 32, 32), float("inf")))


def _with_nan(transforms):
    def apply(image, target):
        image, target = transforms(image, target)
        image = image.clone()
        image[0, 0, 0] = float("nan")
        return image, target

    return apply
