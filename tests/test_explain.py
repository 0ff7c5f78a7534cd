"""Attention maps as data and as pictures (the comparison with transformers is in test_hf_parity.py)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import detr
from detr.cli import main
from detr.explain import attention_maps

from .conftest import TINY_MODEL, padded_pair


def test_attention_maps_of_a_model_with_training_options_and_the_default_path_untouched():
    torch.manual_seed(0)
    model = detr.detr_r18(
        num_classes=3, num_queries=5, box_refinement=True, dense_aux_loss=True, two_stage=True,
        denoising_groups=2, backbone_layers=3, **TINY_MODEL,
    ).eval()  # fmt: skip
    x, mask = padded_pair(seed=1, sizes=((64, 96), (64, 64)))
    with torch.no_grad():
        before = model(x, mask)[-1]
    maps = attention_maps(model, x, mask)
    assert maps["decoder"].shape == (1, 2, 4, 5, 4, 6) and maps["encoder"].shape == (1, 2, 4, 24, 24)
    torch.testing.assert_close(maps["logits"], before[0], atol=1e-5, rtol=0)  # the same pass
    valid = ~maps["feature_mask"].flatten(1)
    torch.testing.assert_close(maps["encoder"].sum(-1), torch.ones(1, 2, 4, 24))
    assert (maps["encoder"][:, 1, :, :, ~valid[1]] == 0).all()
    # recording is switched off again: the fused path, and no weights kept
    assert all(
        not m.record_weights and m.weights is None for m in model.transformer.modules() if hasattr(m, "record_weights")
    )
    with torch.no_grad():
        assert torch.equal(model(x, mask)[-1][0], before[0])


def test_attention_maps_need_the_librarys_attention_layers():
    from .test_parts import users_model

    with pytest.raises(ValueError, match="attention maps need the library's attention layers"):
        attention_maps(users_model(), torch.randn(1, 3, 32, 32))


def test_detr_explain_writes_a_picture_per_image(tmp_path, capsys):
    torch.manual_seed(0)
    model = detr.detr_r18(num_classes=3, num_queries=5, class_names=["a", "b", "c"], **TINY_MODEL)
    model.preprocessing = model.preprocessing.with_sizes(64, 96)
    model.save_pretrained(tmp_path / "m")
    for name, colour in (("one", "red"), ("two", "blue")):
        Image.new("RGB", (48, 32), colour).save(tmp_path / f"{name}.jpg")
    args = ["explain", str(tmp_path / "one.jpg"), str(tmp_path / "two.jpg"), "--weights", str(tmp_path / "m")]
    assert main([*args, "--out", str(tmp_path / "x"), "--threshold", "0", "--points", "2"]) == 0
    report = json.loads((tmp_path / "x" / "explained.json").read_text())
    assert len(report) == 2 and all(len(entry["detections"]) == 5 for entry in report.values())
    with Image.open(tmp_path / "x" / "one_explain.png") as picture:
        # 1 picture of the detections + 5 decoder maps + 2 encoder points = 8 tiles, 4 a row, each the
        # 48 x 32 image scaled x5 (about 256 px) under its 16 px title
        assert picture.size == (4 * 240, 2 * (160 + 16))
    assert "5 detections" in capsys.readouterr().out
