"""DETR(DETRConfig(...)) with parts the user writes: the API document's contract, saving and loading."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import detr
from detr import DETR, DETRConfig
from detr.options import AnchorRefinement, DenoisingQueries, DenseHead, QueryGroups, TwoStageAnchors

from .conftest import padded_pair, random_targets


class TinyBackbone(nn.Module):
    """Two strided convolutions: (B, 3, H, W) -> (B, 24, H/4, W/4) (rounded up)."""

    num_channels = 24

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, self.num_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class ReferenceStyleTransformer(nn.Module):
    """Written the way facebookresearch/detr's transformer is called, sequence-first inside:
    forward(src (B, d, h, w), mask (B, h, w) or None, query_embed (Q, d), pos_embed (B, d, h, w))
    -> hs (L, B, Q, d), memory (B, d, h, w). Built on torch.nn's layers, not on the library's."""

    def __init__(self, d_model: int = 32, nhead: int = 4, num_decoder_layers: int = 2) -> None:
        super().__init__()
        self.d_model = d_model
        self.encoder = nn.TransformerEncoderLayer(d_model, nhead, 64, dropout=0.0)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(d_model, nhead, 64, dropout=0.0) for _ in range(num_decoder_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, src, mask, query_embed, pos_embed):
        batch, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)  # (HW, B, d)
        pos = pos_embed.flatten(2).permute(2, 0, 1)  # (HW, B, d)
        query_pos = query_embed.unsqueeze(1).repeat(1, batch, 1)  # (Q, B, d)
        padding = None if mask is None else mask.flatten(1)  # (B, HW)
        memory = self.encoder(src + pos, src_key_padding_mask=padding)  # (HW, B, d)
        tgt, outputs = torch.zeros_like(query_pos), []
        for layer in self.layers:
            tgt = layer(tgt + query_pos, memory + pos, memory_key_padding_mask=padding)
            outputs.append(self.norm(tgt))
        hs = torch.stack(outputs).transpose(1, 2)  # (L, Q, B, d) -> (L, B, Q, d)
        return hs, memory.permute(1, 2, 0).reshape(batch, c, h, w)


def users_model(aux_loss: bool = True) -> DETR:
    torch.manual_seed(0)
    config = DETRConfig(TinyBackbone(), ReferenceStyleTransformer(), num_classes=3, num_queries=6, aux_loss=aux_loss)
    return DETR(config, class_names=["cat", "dog", "fox"])


def test_a_users_backbone_and_reference_style_transformer_train_and_predict():
    model = users_model().train()
    x, mask = padded_pair(seed=1, sizes=((64, 96), (48, 64)))
    targets = random_targets(2, 3, counts=(2, 1))
    outputs = model(x, mask)
    assert len(outputs) == 2 and outputs[-1][0].shape == (2, 6, 4) and outputs[-1][1].shape == (2, 6, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    terms = model.get_loss_dict(x, targets, mask)
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0"} <= set(terms) and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    optimizer.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []  # every part learns: backbone, transformer, queries, heads
    images = [Image.new("RGB", (90, 60), "red"), torch.rand(3, 40, 50)]
    detections = model.eval().predict(images, k=3)
    assert [len(d) for d in detections] == [3, 3]
    for dets, (w, h) in zip(detections, [(90, 60), (50, 40)]):
        for det in dets:
            x0, y0, x1, y1 = det["box"]
            assert det["class_name"] in {"cat", "dog", "fox"}
            assert -1e-3 <= x0 <= x1 <= w + 1e-3 and -1e-3 <= y0 <= y1 <= h + 1e-3


def test_options_say_what_they_need_from_a_users_transformer():
    config = DETRConfig(TinyBackbone(), ReferenceStyleTransformer(), num_classes=3, num_queries=6)
    for option in (DenoisingQueries(groups=2), AnchorRefinement(), DenseHead(), QueryGroups(2)):
        with pytest.raises(
            ValueError, match=rf"{type(option).__name__} needs a transformer with encode\(src, mask, pos\)"
        ):
            DETR(config, options=[option])
    config = DETRConfig(detr.ResNetBackbone("resnet18"), detr.Transformer(d_model=32, nhead=4), num_classes=3)
    with pytest.raises(ValueError, match="set box_refinement=True and dense_aux_loss=True"):
        DETR(config, options=[TwoStageAnchors(), DenseHead()])
    with pytest.raises(ValueError, match="already has a 'denoising' option"):
        DETR(config, options=[DenoisingQueries(groups=2), DenoisingQueries(groups=3)])


def test_a_model_of_users_parts_saves_and_loads_back_with_its_config(tmp_path):
    model = users_model().eval()
    model.save_pretrained(tmp_path / "mine")
    description = json.loads((tmp_path / "mine" / "config.json").read_text())
    assert description["parts"]["backbone"] == {"type": f"{__name__}.TinyBackbone", "own": True}
    with pytest.raises(ValueError, match="backbone is a part of your own .*TinyBackbone.*config=DETRConfig"):
        DETR.from_pretrained(tmp_path / "mine")
    fresh = DETRConfig(TinyBackbone(), ReferenceStyleTransformer(), num_classes=3, num_queries=6)  # other weights
    loaded = DETR.from_pretrained(tmp_path / "mine", config=fresh).eval()
    assert loaded.class_names == ["cat", "dog", "fox"]
    x, mask = padded_pair(seed=2, sizes=((64, 64), (32, 64)))
    with torch.no_grad():
        for (a_logits, a_boxes), (b_logits, b_boxes) in zip(model(x, mask), loaded(x, mask)):
            assert torch.equal(a_logits, b_logits) and torch.equal(a_boxes, b_boxes)
    # a config whose parts do not fit the saved weights is refused, naming the keys
    wrong = DETRConfig(TinyBackbone(), ReferenceStyleTransformer(d_model=16), num_classes=3, num_queries=6)
    with pytest.raises(detr.CheckpointError, match="wrong shapes"):
        DETR.from_pretrained(tmp_path / "mine", config=wrong)


@pytest.mark.parametrize("position", ["sine", "learned"])
def test_a_model_of_library_parts_round_trips_with_its_options(tmp_path, position):
    torch.manual_seed(0)
    transformer = detr.Transformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=64)
    config = DETRConfig(
        detr.ResNetBackbone("resnet18", norm="bn", freeze_stem=False, num_layers=3),
        transformer,
        num_classes=4,
        num_queries=5,
        aux_loss=False,
        matcher=detr.HungarianMatcher(2.0, 5.0, 2.0),
        eos_coef=0.2,
    )
    options = [AnchorRefinement(), DenoisingQueries(groups=2, box_noise=0.8), DenseHead(), TwoStageAnchors()]
    model = DETR(
        config,
        position_encoding=detr.models.position_encoding.build_position_encoding(position, 32),
        class_names=list("abcd"),
        options=options,
    )
    model.train()
    model.get_loss(torch.randn(2, 3, 64, 64), random_targets(2, 4))  # batch-norm statistics of their own
    model.eval().save_pretrained(tmp_path / "m")
    loaded = DETR.from_pretrained(tmp_path / "m").eval()
    assert [o.name for o in loaded.options] == ["refinement", "denoising", "dense_head", "two_stage"]
    assert loaded.options[1].spec() == {"groups": 2, "box_noise": 0.8, "label_noise": 0.2}
    assert (loaded.config.eos_coef, loaded.criterion.matcher.cost_class, loaded.class_names) == (0.2, 2.0, list("abcd"))
    assert type(loaded.position_encoding) is type(model.position_encoding)
    assert loaded.backbone.spec() == model.backbone.spec() and loaded.transformer.spec() == transformer.spec()
    x, mask = padded_pair(seed=3, sizes=((64, 96), (64, 64)))
    with torch.no_grad():
        a, b = model(x, mask), loaded(x, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_mask_model_built_from_parts_saves_and_loads_as_a_detector_does(tmp_path):
    """DETRSegmentation over a DETR of library parts the user put together: saved, then loaded back."""
    torch.manual_seed(0)
    config = DETRConfig(
        detr.ResNetBackbone("resnet18", pretrained=False), detr.Transformer(d_model=32, nhead=4, num_encoder_layers=1,
        num_decoder_layers=2, dim_feedforward=64), num_classes=3, num_queries=5, aux_loss=False,
    )  # fmt: skip
    model = detr.DETRSegmentation(DETR(config, class_names=["cat", "dog", "fox"])).eval()
    model.save_pretrained(tmp_path / "mine")
    torch.manual_seed(1)  # the loaded model's fresh weights differ: only loading can make the outputs equal
    loaded = detr.DETRSegmentation.from_pretrained(tmp_path / "mine").eval()
    assert loaded.task == "masks" and loaded.class_names == ["cat", "dog", "fox"]
    x, mask = padded_pair(seed=3, sizes=((64, 64), (48, 64)))
    with torch.no_grad():
        ours, theirs = model(x, mask), loaded(x, mask)
    assert len(ours) == len(theirs) > 0
    for layer_ours, layer_theirs in zip(ours, theirs, strict=True):  # (logits, boxes, masks) per decoder layer
        assert all(torch.equal(a, b) for a, b in zip(layer_ours, layer_theirs, strict=True))
    assert type(detr.load(tmp_path / "mine")) is detr.DETRSegmentation  # the one loader, as for a detector
