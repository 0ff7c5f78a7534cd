"""Every bad input gets an error that says what is wrong and how to fix it."""

from __future__ import annotations

import os
import pickle
import time

import pytest
import torch

import detr
from detr import DETRConfig, ResNetBackbone, Transformer
from detr.hub.checkpoints import CheckpointError

from .test_model import small_detr


@pytest.fixture(scope="module")
def model():
    return small_detr(num_classes=5)


def target(class_id, box):
    return {"class_id": torch.tensor(class_id, dtype=torch.int64), "box": torch.tensor(box, dtype=torch.float32)}


# ------------------------------------------------------------------ config
class NoChannels(torch.nn.Module):
    pass


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backbone": NoChannels()}, "num_channels"),
        ({"backbone": "resnet50"}, "backbone must be an nn.Module"),
        ({"transformer": torch.nn.Linear(2, 2)}, "d_model"),
        ({"num_classes": 0}, "num_classes must be an int >= 1"),
        ({"num_classes": 2.5}, "num_classes must be an int >= 1"),
        ({"num_queries": 0}, "num_queries must be an int >= 1"),
        ({"bbox_loss_coef": -1.0}, "bbox_loss_coef must be a number >= 0"),
        ({"eos_coef": float("nan")}, "eos_coef must be a number >= 0"),
        ({"giou_loss_coef": "2"}, "giou_loss_coef must be a number >= 0"),
        ({"aux_loss": 1}, "aux_loss must be a bool"),
        ({"matcher": 3}, "matcher must be callable"),
    ],
)
def test_config_validation(kwargs, message):
    base = {"backbone": ResNetBackbone("resnet18"), "transformer": Transformer(d_model=32, nhead=4), "num_classes": 3}
    base.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        DETRConfig(**base)


def test_backbone_with_zero_channels_is_rejected():
    backbone = ResNetBackbone("resnet18")
    backbone.num_channels = 0
    with pytest.raises(ValueError, match="positive int attribute num_channels"):
        DETRConfig(backbone, Transformer(d_model=32, nhead=4), 3)


def test_other_construction_errors():
    with pytest.raises(ValueError, match="unknown backbone 'resnet20'"):
        ResNetBackbone("resnet20")
    with pytest.raises(ValueError, match="divisible by nhead"):
        Transformer(d_model=30, nhead=4)
    with pytest.raises(ValueError, match="'sine' or 'learned'"):
        detr.detr_r50(position_embedding="cosine")
    with pytest.raises(ValueError, match="class_names has 2 names but num_classes is 3"):
        detr.detr_r50(num_classes=3, class_names=["a", "b"])
    with pytest.raises(TypeError, match="DETR takes a DETRConfig"):
        detr.DETR({"num_classes": 3})


# ------------------------------------------------------------------ images
@pytest.mark.parametrize(
    "x, mask, message",
    [
        (torch.randn(3, 64, 64), None, r"shape \(B, 3, H, W\).*unsqueeze"),
        (torch.randn(1, 1, 64, 64), None, r"shape \(B, 3, H, W\)"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), None, "float tensor"),
        ([[0.0]], None, "torch.Tensor"),
        (torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64), "bool tensor"),
        (torch.randn(1, 3, 64, 64), torch.zeros(1, 32, 64, dtype=torch.bool), r"mask must have shape"),
        (torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool), r"every pixel of image\(s\) \[0, 1\]"),
    ],
)
def test_bad_images(model, x, mask, message):
    with pytest.raises((ValueError, TypeError), match=message):
        model(x, mask)


# ------------------------------------------------------------------ targets
GOOD = target([1], [[0.5, 0.5, 0.2, 0.2]])


@pytest.mark.parametrize(
    "targets, message",
    [
        (GOOD, "one dict per image"),
        ([GOOD, GOOD], "targets has 2 entries but the batch has 1"),
        ([{"labels": torch.tensor([1]), "boxes": torch.rand(1, 4)}], "keys 'class_id' and 'box'"),
        ([{"class_id": [1], "box": [[0.5, 0.5, 0.1, 0.1]]}], "must be torch tensors"),
        ([{"class_id": torch.tensor([1.0]), "box": torch.rand(1, 4)}], "int64 class indices.*long"),
        ([{"class_id": torch.tensor([1], dtype=torch.int32), "box": torch.rand(1, 4)}], "int64"),
        ([{"class_id": torch.tensor([1]), "box": torch.tensor([[1, 1, 1, 1]])}], "float tensor"),
        ([target([1, 2], [[0.5, 0.5, 0.2, 0.2]])], r"shape \(N, 4\) with N = len\(class_id\) = 2"),
        ([target([[1]], [[0.5, 0.5, 0.2, 0.2]])], r"shape \(N,\)"),
        ([target([5], [[0.5, 0.5, 0.2, 0.2]])], r"values \[5\] outside \[0, 4\].*num_classes=5"),
        ([target([-1], [[0.5, 0.5, 0.2, 0.2]])], r"outside \[0, 4\]"),
        ([target([1], [[320.0, 240.0, 50.0, 40.0]])], "outside \\[0, 1\\].*normalized"),
        ([target([1], [[0.5, 0.5, 0.0, 0.2]])], "zero width or height"),
        ([target([1], [[0.1, 0.2, 0.6, 0.7]])], r"\(x0, y0, x1, y1\)\?.*box_convert"),
        ([target([1], [[float("nan"), 0.5, 0.2, 0.2]])], "NaN or inf"),
        (
            [{"class_id": torch.tensor([1], device="meta"), "box": torch.rand(1, 4, device="meta")}],
            r"targets\[0\]\['class_id'\] is on meta but the images are on cpu; move the targets",
        ),
    ],
)
def test_bad_targets(model, targets, message):
    with pytest.raises((ValueError, TypeError), match=message):
        model.get_loss(torch.randn(1, 3, 64, 64), targets)


def test_boxes_touching_the_border_are_fine(model):
    loss = model.get_loss(torch.randn(1, 3, 64, 64), [target([0, 4], [[0.1, 0.5, 0.2, 1.0], [0.5, 0.5, 1.0, 1.0]])])
    assert torch.isfinite(loss)


def test_non_finite_outputs_give_a_clear_matching_error():
    logits = torch.full((1, 4, 3), float("nan"))
    with pytest.raises(FloatingPointError, match="not finite"):
        detr.HungarianMatcher()((logits, torch.rand(1, 4, 4)), [GOOD])


def test_matcher_cost_validation():
    with pytest.raises(ValueError, match="cost_giou must be >= 0"):
        detr.HungarianMatcher(cost_giou=-1)
    with pytest.raises(ValueError, match="at least one matching cost"):
        detr.HungarianMatcher(0, 0, 0)


# ------------------------------------------------------------------ checkpoints
def test_missing_checkpoint_file(tmp_path):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*nope.pth"):
        detr.detr_r50(weights=tmp_path / "nope.pth")
    assert time.monotonic() - start < 10


def test_corrupt_checkpoint_file(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"a": torch.zeros(3)}}, good)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint.*truncated or corrupt"):
        detr.read_state_dict(bad)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        detr.read_state_dict(bad_st)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_pickle_carrying_code_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": _Payload()}}, f)
    with pytest.raises(CheckpointError, match="refused to load .*could run code"):
        detr.read_state_dict(path)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_checkpoint_of_another_model(tmp_path):
    r50 = detr.detr_r50(num_classes=91)
    path = tmp_path / "r50.pth"
    torch.save({"model": r50.state_dict()}, path)
    with pytest.raises(CheckpointError) as info:
        detr.detr_r101(weights=path)
    message = str(info.value)
    assert "'detr' layout" in message and "missing keys" in message and "backbone.body.layer3.1" in message
    model = detr.detr_r50(num_classes=5)
    with pytest.raises(
        CheckpointError, match=r"wrong shapes \(2\): class_head.bias \(checkpoint \(92,\), model \(6,\)\)"
    ):
        detr.load_weights(model, path, reinit_heads=False)


def test_unrecognised_layout_and_non_state_dict():
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        detr.load_weights(small_detr(), {"encoder.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        detr.load_weights(small_detr(), {"model": {"a": 3}})


def test_dc5_needs_a_bottleneck_resnet():
    with pytest.raises(ValueError, match="DC5.*resnet50, resnet101.*resnet18"):
        ResNetBackbone("resnet18", dilation=True)


def test_reference_training_checkpoint_with_args_loads(tmp_path):
    import argparse

    model = small_detr()
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {"model": model.state_dict(), "args": argparse.Namespace(lr=1e-4, backbone="resnet18"), "epoch": 3}, path
    )
    assert detr.load_weights(small_detr(), path) == "detr"
